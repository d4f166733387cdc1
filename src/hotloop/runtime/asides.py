"""Model requests a policy sends beside a run's turns, without the loop waiting for them.

A policy that needs a model's answer for later (``Compact`` summarises the older part of a
long conversation) sends it through :meth:`~hotloop.runtime.policies.TurnState.request_aside`:
the request goes out at once through the run's own client, as a task of the run, while the
turn's tools and the next turns go on. It is a plain call: its response continues no chain
of the run and is never added to its history. Each one is recorded as a
:class:`~hotloop.runtime.events.StepRecord` in :attr:`RunResult.asides
<hotloop.runtime.events.RunResult.asides>` (its ``turn`` is the turn that sent it, its
``purpose`` says what for), so that traces show it (a ``model.aside`` span) and its tokens count
in the run's ``usage``. An aside may have a timeout; those still running when the run ends
are cancelled. One that ended without a response, or whose response failed, says why in its
record's ``error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine

from hotloop.errors import HotloopError
from hotloop.protocol.assembler import ResponseStream
from hotloop.runtime.events import StepRecord
from hotloop.transport import Transport
from hotloop.transport.base import ModelRequest, RequestTimings
from hotloop.wire.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    OutputItemAdded,
    OutputTextDelta,
    OutputTextDone,
    ResponseInProgress,
)
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["Asides"]

_log = logging.getLogger("hotloop.runtime")
#: Why an aside still running when its run ended has no response.
_RUN_ENDED = "cancelled: the run ended first"

#: Events an aside has no use for: its text arrives whole in ``output_item.done``.
_SKIP = frozenset(
    {
        FunctionCallArgumentsDelta.type,
        ResponseInProgress.type,
        OutputTextDelta.type,
        OutputTextDone.type,
        ContentPartAdded.type,
        ContentPartDone.type,
    }
)


class Asides:
    """One run's requests beside its turns: started, recorded, cancelled with the run."""

    def __init__(self, client: Transport, origin: int) -> None:
        self.client = client
        self.origin = origin
        self.records: list[StepRecord] = []
        self.tasks: list[asyncio.Task[ResponseObject]] = []

    def start(
        self, turn: int, request: ModelRequest, purpose: str, timeout: float | None = None
    ) -> asyncio.Task[ResponseObject]:
        """Send ``request`` now, in a task of its own; the task's result is the response.

        ``timeout`` (s): with no complete response by then, the task raises ``TimeoutError``.
        """
        if request.timings is None:
            request = dataclasses.replace(request, timings=RequestTimings())
        record = StepRecord(
            turn=turn, request_sent_ns=self._now(), purpose=purpose, request_model=request.model
        )
        self.records.append(record)
        task = asyncio.create_task(
            self._ended(self._send(request, record), record, timeout),
            name=f"hotloop-aside-{purpose}",
        )
        task.add_done_callback(_read_failure)
        self.tasks.append(task)
        return task

    def _now(self) -> int:
        return time.perf_counter_ns() - self.origin

    async def _ended(
        self,
        sending: Coroutine[None, None, ResponseObject],
        record: StepRecord,
        within: float | None,
    ) -> ResponseObject:
        """``sending``, given ``within`` seconds (None: no limit); when it ends without a
        response, the record says when and why."""
        deadline = asyncio.timeout(within)
        try:
            async with deadline:
                return await sending
        except BaseException as exc:
            if record.error == _RUN_ENDED:
                raise  # stamped when the run ended
            record.response_done_ns = self._now()
            if deadline.expired():
                record.error = f"no response within {within:g} s"
                raise TimeoutError(record.error) from None
            if isinstance(exc, asyncio.CancelledError):
                record.error = _RUN_ENDED
            else:
                record.error = str(exc) or type(exc).__name__
            raise

    async def _send(self, request: ModelRequest, record: StepRecord) -> ResponseObject:
        stream = ResponseStream()
        origin = self.origin

        def on_event(event: Event) -> None:
            if record.first_event_ns is None:
                record.first_event_ns = time.perf_counter_ns() - origin
            if record.first_token_ns is None and type(event) is OutputItemAdded:
                record.first_token_ns = time.perf_counter_ns() - origin
            stream.receive(event)

        await self.client.stream_to(request, on_event, skip=_SKIP)
        timings = request.timings
        if timings is not None:
            record.request_encoded_ns = _relative(timings.encoded_ns, origin)
            record.request_written_ns = _relative(timings.sent_ns, origin)
            record.request_bytes = timings.body_bytes
            record.incremental = timings.incremental
        response = stream.final_response
        if response is None:
            raise HotloopError("the aside's stream ended without a response")
        record.response_done_ns = self._now()
        record.response_id = response.id
        record.response_model = response.model or None
        record.usage = response.usage
        if response.status == "failed":
            # A response, but no answer: the record says why, as for an aside that raised.
            failure = response.error or {}
            record.error = f"the model failed: {failure.get('message', 'no message')}"
        return response

    def usage(self) -> Usage:
        """The tokens of the asides that finished."""
        total = Usage()
        for record in self.records:
            usage = record.usage
            if usage is not None:
                total = Usage(
                    input_tokens=total.input_tokens + usage.input_tokens,
                    cached_tokens=total.cached_tokens + usage.cached_tokens,
                    output_tokens=total.output_tokens + usage.output_tokens,
                    reasoning_tokens=total.reasoning_tokens + usage.reasoning_tokens,
                )
        return total

    def close(self, at: int | None = None) -> None:
        """The run is over (``at``, on the run's clock; None: now): cancel the asides still
        running. Their records say so now: the run's result must not change after it was
        returned (the tasks end a loop step later)."""
        now = self._now() if at is None else at
        for task, record in zip(self.tasks, self.records, strict=True):
            if not task.done():
                if record.response_done_ns is None:
                    record.response_done_ns = now
                    record.error = _RUN_ENDED
                task.cancel()


def _read_failure(task: asyncio.Task[ResponseObject]) -> None:
    """Log an aside's failure (reading it, so asyncio does not warn that nobody did)."""
    if not task.cancelled():
        failure = task.exception()
        if failure is not None:
            _log.info("a request aside of the run failed: %s", failure)


def _relative(value: int | None, origin: int) -> int | None:
    return None if value is None else value - origin
