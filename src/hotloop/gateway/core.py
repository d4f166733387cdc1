"""The gateway's execution core: one function from a resolved request to Responses events.

Every transport (HTTP JSON, SSE, WebSocket mode, Chat Completions) drives the same
:class:`ResponseRun` and only frames its events differently. The backend writes the turn to a
:class:`~hotloop.protocol.builder.ResponseBuilder` (the canonical event order: created,
in_progress, each item added/deltas/done, one terminal event); the run puts the full
``output`` and ``usage`` in the terminal response, and commits the response — to the
connection cache and, for ``store: true``, to the store — *before* it yields the terminal
event.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hotloop.backends.base import Backend, BackendSession
from hotloop.errors import APIError
from hotloop.gateway.config import GatewayConfig
from hotloop.gateway.metrics import GatewayMetrics
from hotloop.gateway.store import RequestLog, RequestRecord, Store, open_store
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest
from hotloop.protocol.server_session import CacheHit, ParentLookup, StoreLookup
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item, ItemReference
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["Commit", "Gateway", "Prepared", "ResponseRun", "new_id"]

#: Called with the finished response and its conversation (input and output) before the
#: terminal event is sent; the transport caches it and the gateway stores it if asked.
Commit = Callable[[ResponseObject, Conversation], Awaitable[None]]

logger = logging.getLogger("hotloop.gateway")


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
    #: Whose response this is: the store saves it for this tenant only.
    tenant: str = ""


@dataclass(slots=True)
class _Timings:
    pre_ns: int = 0
    post_ns: int = 0
    generation_start: int = 0
    first_output: int = 0
    last_output: int = 0


class Gateway:
    """Owns a backend, the store, the request log and the metrics; serves every transport.

    ``store`` holds ``store: true`` responses and the request log; without one, SQLite in
    ``config.store_path`` when set, else a bounded in-memory store. The gateway opens it in
    :meth:`start` and closes it in :meth:`close`.
    """

    def __init__(
        self, backend: Backend, config: GatewayConfig | None = None, *, store: Store | None = None
    ) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.metrics = GatewayMetrics()
        self.store: Store = store if store is not None else open_store(self.config.store_path)
        self.log = RequestLog(
            self.store,
            flush_interval=self.config.usage_flush_interval,
            max_queue=self.config.usage_queue_size,
        )
        self._models = frozenset(backend.models())
        self._started = False
        self.http_session: BackendSession | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        """Start the backend, open the store; a second call does nothing."""
        if self._started:
            return
        # An upstream backend may learn its models only now (GET /models of the upstream).
        await self.backend.start()
        self._models = frozenset(self.backend.models())
        await self.store.open()
        self.log.start()
        # The session HTTP requests share: they have no connection of their own to hold one
        # (an upstream socket is then shared, lane by lane, by every HTTP request).
        self.http_session = self.backend.open_session()
        self._started = True

    async def close(self) -> None:
        await self.log.close()
        await self.store.close()
        if self.http_session is not None:
            await self.http_session.aclose()
            self.http_session = None
        await self.backend.aclose()

    def models(self) -> Sequence[str]:
        return sorted(self._models)

    # -- the per-turn input path: only new items ------------------------------------------

    def check_model(self, model: str) -> None:
        """404 unless the backend serves ``model``: one it lists, or one of a family it
        accepts beyond its list (``accepts_model``, see :class:`~hotloop.backends.base.Backend`)."""
        if model not in self._models and not self._accepts(model):
            raise APIError(
                f"The model '{model}' does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )

    def _accepts(self, model: str) -> bool:
        accepts = getattr(self.backend, "accepts_model", None)
        return bool(accepts(model)) if callable(accepts) else False

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

    def tenant(self, authorization: str) -> str:
        """The tenant of an authorized request, from its ``Authorization`` header (``""``
        without API keys)."""
        if self.config.api_keys is None:
            return ""
        scheme, _, token = authorization.partition(" ")
        return self.config.tenant(token.strip() if scheme.lower() == "bearer" else None)

    async def resolve_stored(self, response_id: str, tenant: str = "") -> Conversation:
        """The persisted conversation of ``response_id`` for ``tenant``, or
        ``previous_response_not_found`` (also when another tenant stored it)."""
        stored = await self.store.load(response_id, tenant=tenant)
        if stored is None:
            self.metrics.cache_lookups.labels("miss").inc()
            raise previous_not_found(response_id)
        self.metrics.cache_lookups.labels("store").inc()
        return stored.conversation

    async def resolve_parent(
        self, lookup: ParentLookup, tenant: str = ""
    ) -> tuple[Conversation, bool]:
        """The parent conversation ``lookup`` names, and whether the store holds it.

        ``lookup`` comes from :func:`~hotloop.protocol.server_session.lookup_parent` (a
        connection's cache first, for WebSocket mode); only a miss there reaches the store,
        which answers only for ``tenant``'s own responses.
        """
        if isinstance(lookup, CacheHit):
            self.metrics.cache_lookups.labels("hit").inc()
            return lookup.entry.conversation, lookup.entry.stored
        if isinstance(lookup, StoreLookup):
            return await self.resolve_stored(lookup.response_id, tenant), True
        return Conversation.start(), True

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
        tenant: str = "",
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
            tenant=tenant,
        )

    def run(
        self,
        prepared: Prepared,
        commit: Commit | None = None,
        session: BackendSession | None = None,
    ) -> ResponseRun:
        """The run of one prepared request in ``session``: a WebSocket connection's backend
        session, by default the one HTTP requests share (before :meth:`start`, the run opens a
        session of its own and closes it at the end)."""
        return ResponseRun(self, prepared, commit, session or self.http_session)

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
        await self.store.save(
            response.id,
            parent_id,
            segment,
            codec.dumps(response.to_dict()),
            tenant=prepared.tenant,
        )


def previous_not_found(response_id: str) -> APIError:
    return APIError(
        f"Previous response with id '{response_id}' not found.",
        status=400,
        code="previous_response_not_found",
        param="previous_response_id",
    )


class ResponseRun:
    """One response being generated; iterate :meth:`events` to drive it.

    The backend writes the turn to a :class:`~hotloop.protocol.builder.ResponseBuilder`;
    the run adds what only the gateway knows (timings, commit before the terminal event) and
    turns any failure into ``response.failed``.
    """

    def __init__(
        self,
        gateway: Gateway,
        prepared: Prepared,
        commit: Commit | None,
        session: BackendSession | None,
    ) -> None:
        self.gateway = gateway
        self.prepared = prepared
        self._commit = commit
        self._session = session
        request = prepared.request
        self.builder = ResponseBuilder(
            ResponseObject(
                id=new_id("resp"),
                created_at=int(time.time()),
                model=request.model,
                status="in_progress",
                previous_response_id=request.previous_response_id,
                settings=request.settings,
            )
        )
        self.timings = _Timings()
        #: Why the response failed, with the HTTP status a JSON reply carries (None: it did
        #: not fail).
        self.error: APIError | None = None

    @property
    def response(self) -> ResponseObject:
        """The response as last sent: in progress, then completed, incomplete or failed."""
        return self.builder.response

    @property
    def response_id(self) -> str:
        return self.builder.response.id

    async def events(self) -> AsyncGenerator[Event, None]:
        """The canonical event sequence of this response, terminal event last."""
        gateway = self.gateway
        metrics = gateway.metrics
        prepared = self.prepared
        request = prepared.request
        builder = self.builder
        started = time.monotonic()
        # The gateway's own time before generation: receive, decode, validate the new input,
        # resolve the parent, extend the snapshot. Events sent after this are transport work.
        self.timings.pre_ns = time.perf_counter_ns() - prepared.received_ns
        metrics.active_responses.inc()
        try:
            for event in builder.start():
                yield event
            timings = self.timings
            timings.generation_start = time.perf_counter_ns()
            if request.generate:
                try:
                    # Closed here, not when collected: a run closed between two events (a
                    # cancelled response, a client gone) stops its generation at once.
                    async with contextlib.aclosing(self._generate()) as generation:
                        async for events in generation:
                            for event in events:
                                yield event
                except Exception as exc:
                    for event in self._fail(exc):
                        yield event
                    return
            if builder.usage is None:
                builder.set_usage(Usage(input_tokens=prepared.context.tokens))
            post_started = time.perf_counter_ns()
            # The terminal event goes out only after the commit: a client that continues the
            # moment it sees it must find the response in the cache (and the store).
            *closing, terminal = builder.finish()
            final = builder.response
            conversation = prepared.context.extend(final.output)
            try:
                if request.store:
                    await gateway.persist(final, prepared)
                if self._commit is not None:
                    await self._commit(final, conversation)
            except Exception as exc:
                # The store refused the write (a locked database, a full disk): the response
                # fails instead of claiming a completion nobody can continue.
                for event in (*closing, *self._fail(exc, instead_of=terminal)):
                    yield event
                return
            timings.post_ns = time.perf_counter_ns() - post_started
            metrics.processing.labels(prepared.transport).observe(
                (timings.pre_ns + timings.post_ns) / 1e9
            )
            for event in closing:
                yield event
            report: dict[str, Any] = dict(self._timing_report())
            if builder.warnings:
                # What the backend warned about travels beside the timings: the client's
                # runtime reports it (a log line, a run event) without guessing from output.
                report["warnings"] = list(builder.warnings)
            terminal = builder.annotate(terminal, {"hotloop": report})
            metrics.responses.labels(prepared.transport, final.status).inc()
            self._log(started)
            yield terminal
        finally:
            metrics.active_responses.dec()

    async def _generate(self) -> AsyncGenerator[Sequence[Event], None]:
        prepared = self.prepared
        request = prepared.request
        generation = GenerationRequest(
            request=request,
            context=prepared.context,
            processed_tokens=prepared.context.tokens - prepared.parent.tokens,
        )
        own_session = self._session is None
        session = self.gateway.backend.open_session() if own_session else self._session
        assert session is not None
        timings = self.timings
        stream = session.generate(generation, self.builder)
        try:
            async for events in stream:
                now = time.perf_counter_ns()
                if not timings.first_output:
                    timings.first_output = now
                timings.last_output = now
                yield events
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            if own_session:
                with contextlib.suppress(Exception):
                    await session.aclose()

    def _timing_report(self) -> dict[str, int]:
        """The gateway's own timings of this response, sent in the terminal response.

        Clients (the runtime's traces) use them to split network time from server time:
        ``queue_ns`` waiting for the lane, ``gateway_pre_ns`` from receipt to generation
        start (decode, validation of the new input, resolution; includes the queue),
        ``first_output_ns`` from generation start to the first output event (the backend's
        service time, time to first token, prefill), ``decode_ns`` from the first to the last
        output event, ``gateway_post_ns`` committing (cache, store).
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

    def cancel(self, message: str) -> Sequence[Event]:
        """The client cancelled the response while it was generating (close :meth:`events`
        first): it ends as ``failed`` with ``response_cancelled``, and nothing is committed."""
        events = self.builder.fail("response_cancelled", message)
        self.gateway.metrics.responses.labels(self.prepared.transport, "cancelled").inc()
        self._log(None)
        return events

    def _fail(self, exc: BaseException, *, instead_of: Event | None = None) -> Sequence[Event]:
        if isinstance(exc, APIError):
            error = exc
        else:
            # Never the exception's text: it is ours, not the client's to read.
            error = APIError(
                "The model failed to generate a response.",
                status=500,
                type="server_error",
                code="server_error",
            )
            logger.error("response %s failed", self.response_id, exc_info=exc)
        self.error = error
        events = self.builder.fail(
            error.code or "server_error", error.message, instead_of=instead_of
        )
        self.gateway.metrics.responses.labels(self.prepared.transport, "failed").inc()
        self._log(None)
        return events

    def _log(self, started: float | None) -> None:
        response = self.builder.response
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
                duration_ms=(time.monotonic() - started) * 1000 if started is not None else 0.0,
            )
        )
