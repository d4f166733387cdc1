"""The gateway's execution core: one function from a resolved request to Responses events.

Every transport (HTTP JSON, SSE, WebSocket mode, Chat Completions) drives the same
:class:`ResponseRun` and only frames its events differently (``protocol.md`` §8.1). The run
emits the canonical sequence of §2.4, puts the full ``output`` and ``usage`` in the terminal
response (P4), and commits the response — to the connection cache and, for ``store: true``,
to the store — *before* it yields the terminal event (P9).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotloop.backends.base import Backend
from hotloop.errors import APIError
from hotloop.gateway.config import GatewayConfig
from hotloop.gateway.metrics import GatewayMetrics
from hotloop.gateway.requests import CreateRequest
from hotloop.gateway.store import RequestLog, RequestRecord, ResponseStore
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import (
    Delta,
    EndItem,
    Finish,
    GenerationRequest,
    StartCall,
    StartText,
)
from hotloop.wire import codec
from hotloop.wire.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
)
from hotloop.wire.items import ContentPart, FunctionCall, Item, ItemReference, Message
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["Commit", "Gateway", "Prepared", "ResponseRun", "new_id"]

#: Called with the finished response and its conversation (input and output) before the
#: terminal event is sent; the transport caches it and the gateway stores it if asked.
Commit = Callable[[ResponseObject, Conversation], Awaitable[None]]

_TEXT_PART_EXTRA: dict[str, list[object]] = {"annotations": []}


def new_id(prefix: str) -> str:
    """A unique id like OpenAI's: ``resp_…``, ``msg_…``, ``fc_…``, ``call_…``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class Prepared:
    """A create request whose context is resolved: ready to run."""

    request: CreateRequest
    parent: Conversation
    context: Conversation
    received_ns: int
    transport: str
    #: When a worker took the request (WebSocket lanes queue requests; HTTP does not).
    dequeued_ns: int = 0
    lane: str | None = None
    #: False when the parent lives only in a connection cache (``store: false``): storing
    #: this response must then write its whole context, not a segment chained to a parent
    #: the store never saw.
    parent_stored: bool = True


@dataclass(slots=True)
class _Timings:
    pre_ns: int = 0
    post_ns: int = 0
    generation_start: int = 0
    first_output: int = 0
    last_output: int = 0


@dataclass(slots=True)
class _OpenItem:
    output_index: int
    item_id: str
    call: FunctionCall | None
    chunks: list[str] = field(default_factory=list)


class Gateway:
    """Owns a backend, the store, the request log and the metrics; serves every transport."""

    def __init__(self, backend: Backend, config: GatewayConfig | None = None) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.metrics = GatewayMetrics()
        self.store = ResponseStore(self.config.store_path)
        self.log = RequestLog(
            self.store,
            flush_interval=self.config.usage_flush_interval,
            max_queue=self.config.usage_queue_size,
        )
        self._models = frozenset(backend.models())
        self.started_at = time.time()

    async def start(self) -> None:
        await self.store.open()
        self.log.start()

    async def close(self) -> None:
        await self.log.close()
        await self.store.close()
        await self.backend.aclose()

    def models(self) -> Sequence[str]:
        return sorted(self._models)

    # -- the per-turn input path: only new items ------------------------------------------

    def check_model(self, model: str) -> None:
        if model not in self._models:
            raise APIError(
                f"The model '{model}' does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )

    def check_input(self, items: Sequence[Item]) -> None:
        """The input pipeline: limits and guard hooks, on the request's new items only."""
        if len(items) > self.config.max_input_items:
            raise APIError(
                f"'input' has {len(items)} items; the limit is {self.config.max_input_items}.",
                code="too_many_input_items",
                param="input",
            )
        for index, item in enumerate(items):
            if isinstance(item, ItemReference):
                raise APIError(
                    "item_reference input items are not supported by this gateway; "
                    "send the item itself or continue with previous_response_id.",
                    code="unsupported_input_item",
                    param=f"input[{index}]",
                )
        for guard in self.config.input_guards:
            guard(items)

    async def resolve_stored(self, response_id: str) -> Conversation:
        """The persisted conversation of ``response_id``, or ``previous_response_not_found``."""
        stored = await self.store.load(response_id)
        if stored is None:
            self.metrics.cache_lookups.labels("miss").inc()
            raise previous_not_found(response_id)
        self.metrics.cache_lookups.labels("store").inc()
        return stored.conversation

    def prepare(
        self,
        request: CreateRequest,
        parent: Conversation,
        *,
        received_ns: int,
        transport: str,
        lane: str | None = None,
        parent_stored: bool = True,
        dequeued_ns: int | None = None,
    ) -> Prepared:
        """Check the new input and extend the parent snapshot with it."""
        self.check_model(request.model)
        self.check_input(request.input)
        context = parent.extend(request.input)
        return Prepared(
            request=request,
            parent=parent,
            context=context,
            received_ns=received_ns,
            transport=transport,
            lane=lane,
            parent_stored=parent_stored,
            dequeued_ns=dequeued_ns if dequeued_ns is not None else received_ns,
        )

    def run(self, prepared: Prepared, commit: Commit | None = None) -> ResponseRun:
        return ResponseRun(self, prepared, commit)

    async def persist(self, response: ResponseObject, prepared: Prepared) -> None:
        """Store ``response`` (``store: true``): its segment is the new input plus output.

        A parent that was never stored (``store: false``) cannot be chained to, so then the
        segment is the whole context: the stored row stands on its own (O(history), once).
        """
        if prepared.parent_stored:
            parent_id = prepared.request.previous_response_id
            segment = list(prepared.request.input) + list(response.output)
        else:
            parent_id = None
            segment = prepared.context.all_items() + list(response.output)
        await self.store.save(response.id, parent_id, segment, codec.dumps(response.to_dict()))


def previous_not_found(response_id: str) -> APIError:
    return APIError(
        f"Previous response with id '{response_id}' not found.",
        status=400,
        code="previous_response_not_found",
        param="previous_response_id",
    )


class ResponseRun:
    """One response being generated; iterate :meth:`events` to drive it."""

    def __init__(self, gateway: Gateway, prepared: Prepared, commit: Commit | None) -> None:
        self.gateway = gateway
        self.prepared = prepared
        self._commit = commit
        request = prepared.request
        self.response = ResponseObject(
            id=new_id("resp"),
            created_at=int(time.time()),
            model=request.model,
            status="in_progress",
            previous_response_id=request.previous_response_id,
            settings=request.settings,
        )
        self.timings = _Timings()
        self._sequence = 0

    @property
    def response_id(self) -> str:
        return self.response.id

    def _seq(self) -> int:
        value = self._sequence
        self._sequence += 1
        return value

    async def events(self) -> AsyncIterator[Event]:
        """The canonical event sequence of this response, terminal event last."""
        gateway = self.gateway
        metrics = gateway.metrics
        prepared = self.prepared
        request = prepared.request
        started = time.monotonic()
        # The gateway's own time before generation: receive, decode, validate the new input,
        # resolve the parent, extend the snapshot. Events sent after this are transport work.
        self.timings.pre_ns = time.perf_counter_ns() - prepared.received_ns
        metrics.active_responses.inc()
        try:
            yield ResponseCreated(response=self.response, sequence_number=self._seq())
            yield ResponseInProgress(response=self.response, sequence_number=self._seq())
            output: list[Item] = []
            usage = Usage(input_tokens=prepared.context.tokens)
            incomplete: str | None = None
            timings = self.timings
            timings.generation_start = time.perf_counter_ns()
            if request.generate:
                try:
                    async for event in self._generate(output):
                        if isinstance(event, Finish):
                            usage, incomplete = event.usage, event.incomplete_reason
                        else:
                            yield event
                except Exception as exc:
                    failed = self._failed(exc, output)
                    metrics.responses.labels(prepared.transport, "failed").inc()
                    yield ResponseFailed(response=failed, sequence_number=self._seq())
                    self._log(failed, started)
                    return
            post_started = time.perf_counter_ns()
            final = self.response.with_status(
                "incomplete" if incomplete else "completed",
                output=tuple(output),
                usage=usage,
                incomplete_details={"reason": incomplete} if incomplete else None,
            )
            conversation = prepared.context.extend(output)
            if request.store:
                await gateway.persist(final, prepared)
            if self._commit is not None:
                await self._commit(final, conversation)
            self.timings.post_ns = time.perf_counter_ns() - post_started
            own_ns = self.timings.pre_ns + self.timings.post_ns
            metrics.processing.labels(prepared.transport).observe(own_ns / 1e9)
            final = final.with_status(
                final.status,
                extra={"hotloop": self._timing_report()},
            )
            self.response = final
            metrics.responses.labels(prepared.transport, final.status).inc()
            if incomplete:
                yield ResponseIncomplete(response=final, sequence_number=self._seq())
            else:
                yield ResponseCompleted(response=final, sequence_number=self._seq())
            self._log(final, started)
        finally:
            metrics.active_responses.dec()

    def _timing_report(self) -> dict[str, int]:
        """The gateway's own timings of this response, sent in the terminal response.

        Clients (the runtime's traces) use them to split network time from server time:
        ``queue_ns`` waiting for the lane, ``gateway_pre_ns`` from receipt to generation
        start (decode, validation of the new input, resolution; includes the queue),
        ``first_output_ns`` from generation start to the first output delta (the backend's
        service time, time to first token, prefill), ``decode_ns`` from the first to the last
        delta, ``gateway_post_ns`` committing (cache, store).
        """
        timings = self.timings
        prepared = self.prepared
        first = timings.first_output or timings.generation_start
        last = timings.last_output or first
        return {
            "queue_ns": max(0, prepared.dequeued_ns - prepared.received_ns),
            "gateway_pre_ns": timings.pre_ns,
            "first_output_ns": first - timings.generation_start,
            "decode_ns": last - first,
            "gateway_post_ns": timings.post_ns,
        }

    def _failed(self, exc: BaseException, output: list[Item]) -> ResponseObject:
        if isinstance(exc, APIError):
            error: dict[str, Any] = {"code": exc.code or "server_error", "message": exc.message}
        else:
            error = {"code": "server_error", "message": f"The model failed: {exc!r}"}
        self.response = self.response.with_status("failed", output=tuple(output), error=error)
        return self.response

    def _log(self, response: ResponseObject, started: float) -> None:
        usage = response.usage or Usage()
        self.gateway.log.record(
            RequestRecord(
                response_id=response.id,
                transport=self.prepared.transport,
                model=response.model,
                status=response.status,
                input_tokens=usage.input_tokens,
                cached_tokens=usage.cached_tokens,
                output_tokens=usage.output_tokens,
                duration_ms=(time.monotonic() - started) * 1000,
            )
        )

    async def _generate(self, output: list[Item]) -> AsyncIterator[Event | Finish]:
        prepared = self.prepared
        request = prepared.request
        generation = GenerationRequest(
            model=request.model,
            context=prepared.context,
            processed_tokens=prepared.context.tokens - prepared.parent.tokens,
            instructions=request.instructions,
            tools=request.tools,
            tool_choice=request.tool_choice,
            forced_function=request.forced_function,
            parallel_tool_calls=request.parallel_tool_calls,
            max_output_tokens=request.max_output_tokens,
        )
        stream = self.gateway.backend.generate(generation)
        current: _OpenItem | None = None
        try:
            async for out in stream:
                if isinstance(out, Delta):
                    now = time.perf_counter_ns()
                    if not self.timings.first_output:
                        self.timings.first_output = now
                    self.timings.last_output = now
                    if current is None:
                        raise RuntimeError("backend sent a delta outside an item")
                    current.chunks.append(out.text)
                    if current.call is None:
                        yield OutputTextDelta(
                            item_id=current.item_id,
                            output_index=current.output_index,
                            content_index=0,
                            delta=out.text,
                            sequence_number=self._seq(),
                        )
                    else:
                        yield FunctionCallArgumentsDelta(
                            item_id=current.item_id,
                            output_index=current.output_index,
                            delta=out.text,
                            sequence_number=self._seq(),
                        )
                elif isinstance(out, StartText):
                    current = _OpenItem(len(output), new_id("msg"), None)
                    yield OutputItemAdded(
                        output_index=current.output_index,
                        item=Message(
                            role="assistant", content=(), id=current.item_id, status="in_progress"
                        ),
                        sequence_number=self._seq(),
                    )
                    yield ContentPartAdded(
                        item_id=current.item_id,
                        output_index=current.output_index,
                        content_index=0,
                        part=ContentPart("output_text", "", _TEXT_PART_EXTRA),
                        sequence_number=self._seq(),
                    )
                elif isinstance(out, StartCall):
                    call = FunctionCall(
                        call_id=new_id("call"),
                        name=out.name,
                        arguments="",
                        id=new_id("fc"),
                        status="in_progress",
                    )
                    current = _OpenItem(len(output), call.id or "", call)
                    yield OutputItemAdded(
                        output_index=current.output_index,
                        item=call,
                        sequence_number=self._seq(),
                    )
                elif isinstance(out, EndItem):
                    if current is None:
                        raise RuntimeError("backend ended an item it never started")
                    final = _final_item(current)
                    for event in self._finish_item(current, final):
                        yield event
                    output.append(final)
                    current = None
                elif isinstance(out, Finish):
                    yield out
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    def _finish_item(self, current: _OpenItem, final: Item) -> list[Event]:
        text = "".join(current.chunks)
        if current.call is None:
            part = ContentPart("output_text", text, _TEXT_PART_EXTRA)
            return [
                OutputTextDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=0,
                    text=text,
                    sequence_number=self._seq(),
                ),
                ContentPartDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=0,
                    part=part,
                    sequence_number=self._seq(),
                ),
                OutputItemDone(
                    output_index=current.output_index,
                    item=final,
                    sequence_number=self._seq(),
                ),
            ]
        return [
            FunctionCallArgumentsDone(
                item_id=current.item_id,
                output_index=current.output_index,
                arguments=text,
                name=current.call.name,
                sequence_number=self._seq(),
            ),
            OutputItemDone(
                output_index=current.output_index,
                item=final,
                sequence_number=self._seq(),
            ),
        ]


def _final_item(current: _OpenItem) -> Item:
    text = "".join(current.chunks)
    if current.call is None:
        return Message(
            role="assistant",
            content=(ContentPart("output_text", text, {"annotations": [], "logprobs": []}),),
            id=current.item_id,
            status="completed",
        )
    return FunctionCall(
        call_id=current.call.call_id,
        name=current.call.name,
        arguments=text,
        id=current.item_id,
        status="completed",
    )


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
