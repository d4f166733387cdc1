"""``Runner``: the agent loop — stream a model turn, run its tools, repeat.

Each turn streams through the sans-I/O :class:`~hotloop.protocol.assembler.ResponseStream`,
which reports every function call the moment its arguments are complete. With an eager agent
the call is validated and handed to the scheduler right then, while the model is still
streaming the rest of the turn; the :class:`~hotloop.runtime.scheduler.Admission` policy
decides when it may start. Results go back to the model in the model's call order.

Only calls that read, or are ``pure`` or ``idempotent``, start while the turn streams; any
other call is held until the response completes (``Agent.eager_writes`` dispatches them all
eagerly), so nothing that writes runs from a response that ends ``incomplete``, fails or is
cut. Each turn has deadlines (first event, stall between events, whole turn): a turn that
missed its first event is sent again, any other missed deadline raises :class:`TurnTimeout`.

Failures never crash the loop: a tool that raises, times out, gets invalid JSON or names an
unknown tool produces an error result for the model. A replay-safe transport failure sends the
turn again (the transport re-sends the full history when it must); calls that already started
in the failed attempt are matched by name and arguments and *reused*, never executed again.
Cancelling the run cancels its tools.

A run that fails anyway raises with its state attached (``exc.partial``, a
:class:`~hotloop.runtime.events.PartialRun`): passed back as ``previous=``, the run continues
from the turn that failed, and no tool call that had finished runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from hotloop.checks import number
from hotloop.errors import HotloopError
from hotloop.protocol.assembler import (
    FunctionCallReady,
    ItemDone,
    ResponseStream,
    StreamError,
    TextDelta,
)
from hotloop.protocol.client_session import retry_after
from hotloop.runtime.agent import Agent
from hotloop.runtime.asides import Asides
from hotloop.runtime.events import (
    ApprovalRequested,
    FinishedCall,
    MessageFinished,
    MessageStarted,
    ModelTurnFinished,
    ModelWarning,
    PartialRun,
    RunEvent,
    RunFinished,
    RunResult,
    SpeculationRecord,
    StepRecord,
    ToolCallFinished,
    ToolCallStarted,
    ToolRecord,
    TurnRetried,
)
from hotloop.runtime.events import TextDelta as TextDeltaEvent
from hotloop.runtime.executor import Call, Outcome, ToolExecutor, error_output
from hotloop.runtime.output import OutputValidationError, problems
from hotloop.runtime.policies import Policy, RouteTurns, Send, TurnState
from hotloop.runtime.scheduler import NOTHING, Admission, CallEffects
from hotloop.runtime.speculation import Speculate
from hotloop.runtime.tools import (
    RunContext,
    Tool,
    ToolArgumentsError,
    ToolThreads,
)
from hotloop.transport import Transport, TransportError, connect
from hotloop.transport.base import ModelRequest, OnEvent, RequestTimings
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
from hotloop.wire.items import (
    FunctionCall,
    FunctionCallOutput,
    Item,
    Message,
    item_from_dict,
    items_from_input,
)
from hotloop.wire.responses import ResponseObject, Usage

__all__ = [
    "REDUNDANT_EVENTS",
    "RESENT_FAILURES",
    "STREAMED_TEXT_EVENTS",
    "MaxTurnsExceeded",
    "ModelError",
    "Approver",
    "RunHook",
    "Runner",
    "TurnTimeout",
]

_log = logging.getLogger("hotloop.runtime")

Emit = Callable[[RunEvent], None]
#: Decides on a call that waits for approval: ``True`` approves, ``False`` denies, ``None``
#: leaves it to the request's own ``approve()`` / ``deny(reason)`` (now or later); may be async.
Approver = Callable[[ApprovalRequested], "bool | Awaitable[bool | None] | None"]
#: What a run takes as input: a user message, or items (typed, or OpenAI-style dicts).
RunInput = str | Sequence[Item | dict[str, Any]]
#: The calls one turn started, by (name, arguments), across its attempts: a later attempt (or
#: a continued run) takes their results instead of executing them again.
Ledger = dict[tuple[str, str], list["asyncio.Future[Outcome]"]]
#: Called once with the result when a run finishes (``hotloop.trace.Tracer`` is one): the
#: runtime knows nothing of spans or sinks, so tracing costs the loop one call per run.
RunHook = Callable[[RunResult], None]
_DONE = object()

#: Events whose content reaches the runner another way, so a transport may drop them unread
#: (``skip`` of :meth:`~hotloop.transport.Transport.stream_to`): argument deltas (the runner
#: reports no argument progress, and ``arguments.done`` carries the whole arguments),
#: ``in_progress`` (``created`` already named the response) and the text and content part
#: ``.done`` events (``output_item.done`` carries the finished message: every output item
#: is framed by ``output_item.added`` ... ``output_item.done``). Argument deltas are most of a
#: tool-calling stream.
REDUNDANT_EVENTS = frozenset(
    {
        FunctionCallArgumentsDelta.type,
        ResponseInProgress.type,
        OutputTextDone.type,
        ContentPartDone.type,
    }
)
#: Skipped as well when nothing streams text (:meth:`Runner.run`, as opposed to
#: :meth:`Runner.run_stream`): the text arrives whole in ``output_item.done``, and the first
#: token's time is that of the first ``output_item.added``.
STREAMED_TEXT_EVENTS = frozenset({OutputTextDelta.type, ContentPartAdded.type})
_NOT_STREAMING = REDUNDANT_EVENTS | STREAMED_TEXT_EVENTS


class ModelError(HotloopError):
    """The model's response failed, or the server ended the stream with an error.

    ``replay_safe`` is true when the runner may send the turn again (see
    :data:`RESENT_FAILURES`).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        replay_safe: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.replay_safe = replay_safe
        #: How long the server asked to wait before trying again (s), when it said.
        self.retry_after = retry_after


#: ``response.failed`` codes the runner sends the turn again for (up to ``max_attempts``), as
#: the transport does for the same failures out of band: a rate limit or a server error with
#: no output is a 429 or 5xx before the turn's first event; a stream the server cut is a
#: connection lost mid-turn (calls that started are reused, held ones never ran).
RESENT_FAILURES: dict[str, Literal["no_output", "any"]] = {
    "rate_limit_exceeded": "no_output",
    "upstream_rate_limited": "no_output",
    "server_error": "no_output",
    "stream_dropped": "any",
}


class MaxTurnsExceeded(HotloopError):
    """The run used ``max_turns`` model turns without a final answer."""

    def __init__(self, max_turns: int, items: Sequence[Item]) -> None:
        super().__init__(f"the run reached max_turns={max_turns} without a final answer")
        self.max_turns = max_turns
        self.items = tuple(items)


class TurnTimeout(TransportError):
    """A model turn missed a deadline; ``code`` says which.

    ``"first_event_timeout"`` (no event after the request went out, every attempt),
    ``"stall_timeout"`` (no event for ``stall_timeout`` after one arrived) or
    ``"turn_timeout"`` (the whole response took longer than ``turn_timeout``).
    ``replay_safe`` is true when nothing of the turn had been delivered.
    """

    def __init__(self, message: str, *, code: str, replay_safe: bool = False) -> None:
        super().__init__(message, code=code, replay_safe=replay_safe)


@dataclass(frozen=True, slots=True)
class _Deadlines:
    first_event: float | None
    stall: float | None
    turn: float | None


class _Watchdog:
    """The deadlines of one turn: cancels the streaming task when one passes.

    Each event only stores its arrival time (``last``); the timer re-arms itself lazily, so a
    turn costs a timer per deadline period, not per event.
    """

    __slots__ = (
        "deadlines",
        "fired",
        "handle",
        "heard_at",
        "last",
        "loop",
        "sent",
        "task",
        "turn_end",
    )

    def __init__(self, deadlines: _Deadlines) -> None:
        self.deadlines = deadlines
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        now = self.loop.time()
        self.turn_end = None if deadlines.turn is None else now + deadlines.turn
        self.sent = now
        #: When the attempt's last event reached the run, and when the last one arrived that a
        #: policy around the transport may hold back from it (set only when one wraps it).
        self.last: float | None = None
        self.heard_at: float | None = None
        self.fired: str | None = None
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """A new attempt of the turn goes out now."""
        self.sent = self.loop.time()
        self.last = self.heard_at = None
        self.fired = None
        self._arm()

    def heard(self) -> None:
        """An event of the attempt arrived (the run may not see it yet)."""
        self.heard_at = self.loop.time()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _next(self) -> tuple[float, str] | None:
        deadlines = self.deadlines
        best: tuple[float, str] | None = None
        last = self.last
        if self.heard_at is not None and (last is None or self.heard_at > last):
            last = self.heard_at
        if last is None:
            if deadlines.first_event is not None:
                best = (self.sent + deadlines.first_event, "first_event_timeout")
        elif deadlines.stall is not None:
            best = (last + deadlines.stall, "stall_timeout")
        if self.turn_end is not None and (best is None or self.turn_end <= best[0]):
            best = (self.turn_end, "turn_timeout")
        return best

    def _arm(self, deadline: tuple[float, str] | None = None) -> None:
        deadline = deadline or self._next()
        if deadline is None:
            self.handle = None
            return
        when = deadline[0]
        stall = self.deadlines.stall
        if self.last is None and stall is not None:
            # A first event may arrive any time: its stall deadline is sent + stall at the
            # earliest, so look again then.
            when = min(when, self.sent + stall)
        self.handle = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self.handle = None
        deadline = self._next()
        if deadline is None or self.task is None:
            return
        if self.loop.time() >= deadline[0]:
            self.fired = deadline[1]
            self.task.cancel()
        else:
            self._arm(deadline)


@dataclass(slots=True)
class _Run:
    """What stays fixed for one run: shared by its turns, their attempts and their calls."""

    agent: Agent
    client: Transport
    emit: Emit | None
    deadlines: _Deadlines | None
    deps: Any
    origin: int
    threads: ToolThreads | None
    approver: Approver | None = None
    #: Each policy's own memory for this run (``TurnState.memo``), by policy.
    memos: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: With policies: each model's own chain, its last response and the items after it, so
    #: that a turn switched back to a model continues that model's response.
    chains: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    #: The model the last successful attempt was sent to.
    last_model: str | None = None
    #: The model the current attempt went to instead, when a policy rerouted it in flight.
    rerouted_to: str | None = None
    #: Requests policies sent beside the turns (``TurnState.request_aside``), once one did.
    asides: Asides | None = None
    #: Every tool call of the run goes through it (cache, execution, invalidation).
    executor: ToolExecutor | None = None


class _TurnCalls:
    """One turn's calls: validation, admission, execution, results in call order."""

    def __init__(self, run: _Run, turn: int, ledger: Ledger, record: StepRecord) -> None:
        agent = run.agent
        self.run = run
        self.agent = agent
        self.threads = run.threads
        self.deps = run.deps
        self.eager_writes = agent.eager_writes
        self.turn = turn
        self.admission = Admission(agent.max_concurrency)
        self.ledger = ledger
        self.record = record
        self.emit = run.emit
        self.origin_ns = run.origin
        self.calls: list[FunctionCall] = []
        self.records: list[ToolRecord] = []
        self.futures: list[asyncio.Future[Outcome]] = []
        self._pending: list[tuple[Tool, dict[str, Any], frozenset[str]] | None] = []
        executor = run.executor
        assert executor is not None
        self.executor = executor
        self._claimed: dict[tuple[str, str], int] = {}
        self._reported: list[bool] = []
        self._stopped = False

    def _now(self) -> int:
        return time.perf_counter_ns() - self.origin_ns

    def submit(self, call: FunctionCall) -> None:
        """Take a call whose arguments are complete; start it as soon as it is admitted."""
        loop = asyncio.get_running_loop()
        now = self._now()
        self.calls.append(call)
        tool_record = ToolRecord(call.call_id, call.name, call.arguments, now)
        self.records.append(tool_record)
        self.record.tools.append(tool_record)
        key = (call.name, call.arguments)
        claimed = self._claimed.get(key, 0)
        self._claimed[key] = claimed + 1
        earlier = self.ledger.get(key, [])
        if claimed < len(earlier):
            # Started in an attempt of this turn that failed on the way: reuse, never re-run.
            # It keeps its effects, so a later conflicting call still waits for it to finish.
            tool_record.reused = True
            self._track(earlier[claimed])
            self._pending.append(None)
            effects = NOTHING
            tool = self.agent.tool(call.name)
            if tool is not None:
                with contextlib.suppress(ToolArgumentsError):
                    reads, writes = tool.resources(tool.parse(call.arguments))
                    effects = CallEffects(reads, writes, tool.effects.exclusive)
            self.admission.submit(effects)
            self._pump()
            return
        future: asyncio.Future[Outcome] = loop.create_future()
        self._track(future)
        tool = self.agent.tool(call.name)
        if tool is None:
            known = ", ".join(t.name for t in self.agent.tools) or "none"
            self._resolve(
                future,
                error_output("unknown_tool", f"no tool named {call.name!r}; available: {known}"),
                "unknown tool",
                now,
            )
            self._pending.append(None)
            self.admission.submit(NOTHING)
            return
        try:
            args = tool.parse(call.arguments)
            reads, writes = tool.resources(args)
        except ToolArgumentsError as exc:
            self._resolve(future, error_output("invalid_arguments", str(exc)), str(exc), now)
            self._pending.append(None)
            self.admission.submit(NOTHING)
            return
        self._pending.append((tool, args, writes))
        self.executor.admitted(tool, writes, tool_record)
        # A call that may write waits for its response to complete (release_held).
        held = not (self.eager_writes or tool.dispatch_early)
        self.admission.submit(CallEffects(reads, writes, tool.effects.exclusive), held=held)
        self._pump()

    def release_held(self) -> None:
        """The response completed: held calls may start."""
        if self.admission.held:
            self.admission.release()
            self._pump()

    def refuse_held(self, reason: str) -> None:
        """The response is not safe to act on: held calls get an error and never run."""
        held = self.admission.held
        if not held:
            return
        now = self._now()
        message = f"not run: {reason}"
        for index in sorted(held):
            self._pending[index] = None
            self._resolve(self.futures[index], error_output("not_executed", message), message, now)
        self.admission.release()
        self._pump()

    def stop(self) -> None:
        """This attempt failed: its running calls are reused by the next one, but no call
        starts from it any more (the next attempt submits them again), and those it admitted
        without starting are withdrawn (a held write no longer holds predictions back)."""
        self._stopped = True
        for index, pending in enumerate(self._pending):
            if pending is not None:
                self._pending[index] = None
                self.executor.withdrawn(self.records[index])

    def _track(self, future: asyncio.Future[Outcome]) -> None:
        """A call's result: reported (record, ``ToolCallFinished``) the moment it is known."""
        index = len(self.futures)
        self.futures.append(future)
        self._reported.append(False)
        future.add_done_callback(functools.partial(self._done, index))

    def _done(self, index: int, future: asyncio.Future[Outcome]) -> None:
        if not self._stopped and not future.cancelled() and future.exception() is None:
            self._report(index, future.result())

    def _report(self, index: int, outcome: Outcome) -> None:
        if self._reported[index]:
            return
        self._reported[index] = True
        call = self.calls[index]
        record = self.records[index]
        if record.started_ns is None:
            record.started_ns = outcome.started_ns
        if record.reused:
            record.cache, record.invalidated = outcome.cache, outcome.invalidated
        record.finished_ns = outcome.finished_ns
        record.error = outcome.error
        if self.emit is not None:
            self.emit(
                ToolCallFinished(
                    self.turn,
                    call.call_id,
                    call.name,
                    outcome.output,
                    outcome.error,
                    outcome.finished_ns - outcome.started_ns,
                )
            )

    def _resolve(self, future: asyncio.Future[Outcome], output: str, error: str, now: int) -> None:
        future.set_result(Outcome(output, error, now, now))

    def _pump(self) -> None:
        if self._stopped:
            return  # the run is being cancelled: no waiting call may start now
        for index in self.admission.ready():
            pending = self._pending[index]
            future = self.futures[index]
            if pending is None:
                # Nothing to execute (already resolved, or reused from a failed attempt).
                if future.done():
                    self.admission.finish(index)
                else:
                    future.add_done_callback(functools.partial(self._after_reuse, index))
                continue
            tool, args, writes = pending
            self._pending[index] = None  # started: nothing left to withdraw (stop)
            record = self.records[index]
            arguments, asks = self.calls[index].arguments, self.agent.needs_approval(tool)
            self.executor.reserve(tool, args, arguments, record, self.turn, look=not asks)
            task = asyncio.create_task(self._execute(index, tool, args, writes, record))
            self.ledger.setdefault((tool.name, self.calls[index].arguments), []).append(task)
            task.add_done_callback(functools.partial(self._settle, future, index))

    def _finished(self, index: int) -> None:
        self.admission.finish(index)
        self._pump()

    def _after_reuse(self, index: int, _future: asyncio.Future[Outcome]) -> None:
        self._finished(index)

    def _settle(
        self, future: asyncio.Future[Outcome], index: int, task: asyncio.Task[Outcome]
    ) -> None:
        if task.cancelled() or task.cancelling():
            # Only the run cancels a tool's task (a timeout is handled inside it and leaves
            # no pending cancellation): the run is over, so start nothing more.
            self._stopped = True
        if not future.done():
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                future.set_result(task.result())
        self._finished(index)

    async def _execute(
        self,
        index: int,
        tool: Tool,
        args: dict[str, Any],
        writes: frozenset[str],
        record: ToolRecord,
    ) -> Outcome:
        call = self.calls[index]
        if self.agent.needs_approval(tool):
            reason = await self._approval(call, record)
            if reason is not None:
                now = self._now()
                message = f"not run: {reason}"
                return Outcome(error_output("denied", message), message, now, now)
        context = None
        if tool.takes_context:
            context = RunContext(
                self.deps,
                call.call_id,
                tool.name,
                self.turn,
                self.agent.name,
                functools.partial(self._sub_run, record),
            )

        def started() -> None:
            if self.emit is not None:
                self.emit(ToolCallStarted(self.turn, call.call_id, call.name, call.arguments))

        outcome = await self.executor.execute(
            Call(tool, args, call.arguments, writes, record, context, started, self.turn)
        )
        if record.cache is not None or record.invalidated:
            # Kept with the result: an attempt of the turn that reuses it reports it too.
            outcome = dataclasses.replace(
                outcome, cache=record.cache, invalidated=record.invalidated
            )
        return outcome

    async def _approval(self, call: FunctionCall, record: ToolRecord) -> str | None:
        """Wait for the call's approval; ``None`` when approved, else the denial's reason.

        The call keeps its place: calls that conflict with it wait, the others go on.
        """
        decision: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        request = ApprovalRequested(self.turn, call.call_id, call.name, call.arguments, decision)
        record.approval_requested_ns = self._now()
        if self.emit is not None:
            self.emit(request)
        approver = self.run.approver
        if approver is not None:
            try:
                verdict = approver(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception as exc:
                _log.warning(
                    "the approver raised on %s; the call is denied", call.name, exc_info=exc
                )
                verdict = False
                request.deny(f"the approver failed ({type(exc).__name__})")
            if verdict is True:
                request.approve()
            elif verdict is False:
                request.deny()
        reason = await decision
        record.approval = "approved" if reason is None else "denied"
        return reason

    async def _sub_run(self, record: ToolRecord, agent: Agent, input: RunInput) -> RunResult:
        """Another agent's run inside a call: the same client and deps, nested in the record."""
        parent = self.run
        deadlines = _deadlines(agent, DEFAULT, DEFAULT, DEFAULT)
        run = _start(agent, parent.client, None, deadlines, parent.deps, parent.approver)
        result = await _run(run, input, None, agent.max_turns)
        record.subruns.append(result)
        return result

    async def results(self) -> list[FunctionCallOutput]:
        """Every call's result, in the model's call order."""
        outputs: list[FunctionCallOutput] = []
        for index, future in enumerate(self.futures):
            outcome = await future
            self._report(index, outcome)
            outputs.append(
                FunctionCallOutput(call_id=self.calls[index].call_id, output=outcome.output)
            )
        return outputs


def _add(total: Usage, usage: Usage | None) -> Usage:
    if usage is None:
        return total
    return Usage(
        input_tokens=total.input_tokens + usage.input_tokens,
        cached_tokens=total.cached_tokens + usage.cached_tokens,
        output_tokens=total.output_tokens + usage.output_tokens,
        reasoning_tokens=total.reasoning_tokens + usage.reasoning_tokens,
    )


class _Default:
    """The agent's value (the default of the per-call timeout arguments)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


class Runner:
    """Runs agents: :meth:`run`, :meth:`run_stream`, :meth:`run_sync`."""

    @staticmethod
    async def run(
        agent: Agent,
        input: RunInput,
        *,
        client: Transport,
        previous: RunResult | PartialRun | None = None,
        max_turns: int | None = None,
        trace: RunHook | None = None,
        first_event_timeout: float | _Default | None = DEFAULT,
        stall_timeout: float | _Default | None = DEFAULT,
        turn_timeout: float | _Default | None = DEFAULT,
        deps: Any = None,
        approver: Approver | None = None,
    ) -> RunResult:
        """Run ``agent`` on ``input`` until it answers without calling tools.

        ``input`` is a user message, or items (``hotloop.wire.items`` or OpenAI-style dicts).
        ``deps`` reaches every tool that takes a :class:`~hotloop.runtime.tools.RunContext`
        (as ``context.deps``). ``approver`` decides on each call that waits for approval
        (:class:`~hotloop.runtime.events.ApprovalRequested`); it is required when the agent has
        such a tool.

        ``previous`` continues an earlier run's conversation (a :class:`RunResult`), or
        continues a run that failed (the :class:`PartialRun` its error carries, with the same
        ``input`` or ``()``: no finished tool call runs again). ``trace`` is called once with
        the result when the run finishes (for example a :class:`hotloop.trace.Tracer`; it
        must not block). The timeouts override the agent's (``None``: no deadline). Raises
        :class:`MaxTurnsExceeded`, :class:`ModelError`, :class:`TurnTimeout` or
        :class:`~hotloop.transport.TransportError`, each with ``.partial`` set.
        """
        deadlines = _deadlines(agent, first_event_timeout, stall_timeout, turn_timeout)
        if approver is None:
            waiting = [tool.name for tool in agent.tools if agent.needs_approval(tool)]
            if waiting:
                raise ValueError(
                    f"{', '.join(waiting)} must be approved before each call: pass approver= "
                    "(to Runner.run or Runner.run_sync), or use Runner.run_stream and answer "
                    "ApprovalRequested events"
                )
        run = _start(agent, client, None, deadlines, deps, approver)
        return await _run(
            run, input, previous, agent.max_turns if max_turns is None else max_turns, trace
        )

    @staticmethod
    async def run_stream(
        agent: Agent,
        input: RunInput,
        *,
        client: Transport,
        previous: RunResult | PartialRun | None = None,
        max_turns: int | None = None,
        trace: RunHook | None = None,
        first_event_timeout: float | _Default | None = DEFAULT,
        stall_timeout: float | _Default | None = DEFAULT,
        turn_timeout: float | _Default | None = DEFAULT,
        deps: Any = None,
        approver: Approver | None = None,
    ) -> AsyncGenerator[RunEvent, None]:
        """Run ``agent`` and yield its events; the last one is :class:`RunFinished`.

        Leaving the iteration early cancels the run and its tools. A call that waits for
        approval is yielded as :class:`~hotloop.runtime.events.ApprovalRequested`: call its
        ``approve()`` or ``deny(reason)`` (an ``approver`` may decide instead). ``trace``,
        ``deps`` and the timeouts as in :meth:`run`.
        """
        deadlines = _deadlines(agent, first_event_timeout, stall_timeout, turn_timeout)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        run = _start(agent, client, queue.put_nowait, deadlines, deps, approver)
        task = asyncio.create_task(
            _run(run, input, previous, agent.max_turns if max_turns is None else max_turns, trace)
        )
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    yield RunFinished(task.result())
                    return
                yield item
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    def run_sync(
        agent: Agent,
        input: RunInput,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        transport: Literal["websocket", "http", "chat"] = "websocket",
        previous: RunResult | PartialRun | None = None,
        max_turns: int | None = None,
        trace: RunHook | None = None,
        first_event_timeout: float | _Default | None = DEFAULT,
        stall_timeout: float | _Default | None = DEFAULT,
        turn_timeout: float | _Default | None = DEFAULT,
        deps: Any = None,
        approver: Approver | None = None,
    ) -> RunResult:
        """:meth:`run` for synchronous code: opens a connection for this run and closes it.

        ``base_url``, ``api_key`` and ``transport`` as for :func:`hotloop.connect` (which
        falls back to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``); the rest as in :meth:`run`.
        The ``approver`` runs on this run's event loop: one that asks a person should be an
        ``async def`` that awaits ``asyncio.to_thread(...)``, so the tools and the connection
        go on while it waits.
        """

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop in this thread: run_sync starts one
        else:
            raise RuntimeError(
                "Runner.run_sync cannot run inside a running event loop (a notebook, an async "
                "framework): use `await Runner.run(...)` there"
            )

        async def main() -> RunResult:
            async with connect(base_url, api_key, transport=transport) as client:
                return await Runner.run(
                    agent,
                    input,
                    client=client,
                    previous=previous,
                    max_turns=max_turns,
                    trace=trace,
                    first_event_timeout=first_event_timeout,
                    stall_timeout=stall_timeout,
                    turn_timeout=turn_timeout,
                    deps=deps,
                    approver=approver,
                )

        return asyncio.run(main())


def _start(
    agent: Agent,
    client: Transport,
    emit: Emit | None,
    deadlines: _Deadlines | None,
    deps: Any,
    approver: Approver | None = None,
) -> _Run:
    threads = None
    if any(not tool.is_async for tool in agent.tools):
        threads = ToolThreads(agent.max_tool_threads)
    origin = time.perf_counter_ns()
    run = _Run(agent, client, emit, deadlines, deps, origin, threads, approver)
    speculate = next((p for p in agent.policies if isinstance(p, Speculate)), None)
    run.executor = ToolExecutor(
        client,
        threads,
        lambda: time.perf_counter_ns() - origin,
        tools=agent.tool,
        speculate=speculate,
        asks=agent.needs_approval,
    )
    return run


def _input_items(input: RunInput) -> tuple[Item, ...]:
    if isinstance(input, str):
        return items_from_input(input)
    return tuple(
        item_from_dict(entry, f"input[{index}]") if isinstance(entry, dict) else entry
        for index, entry in enumerate(input)
    )


async def _run(
    run: _Run,
    input: RunInput,
    previous: RunResult | PartialRun | None,
    max_turns: int,
    trace: RunHook | None = None,
) -> RunResult:
    number("max_turns", max_turns, integer=True)
    if max_turns < 1:
        raise ValueError("max_turns must be at least 1")
    agent, emit, origin, threads = run.agent, run.emit, run.origin, run.threads
    given = _input_items(input)
    ledger: Ledger = {}
    if isinstance(previous, PartialRun):
        if given and given != previous.input:
            raise ValueError(
                "a failed run continues with its own input: pass the same input, or ()"
            )
        given = previous.input
        history = list(previous.items)
        new_from = previous.new_from
        previous_id = previous.last_response_id
        ledger = _ledger_of(previous.finished)
    else:
        history = list(previous.items) if previous is not None else []
        new_from = len(history)
        previous_id = previous.last_response_id if previous is not None else None
        history.extend(given)
    if previous is not None and agent.policies:
        _resume_chains(run, previous)
    steps: list[StepRecord] = []
    usage = Usage()
    output_retries = agent.output_retries
    tasks: list[asyncio.Future[Outcome]] = []
    try:
        for turn in range(1, max_turns + 1):
            record = StepRecord(
                turn=turn,
                request_sent_ns=time.perf_counter_ns() - origin,
                input_from=new_from,
                output_from=len(history),
            )
            steps.append(record)
            request = ModelRequest(
                model=agent.model,
                history=history,
                new_from=new_from,
                previous_response_id=previous_id,
                instructions=agent.instructions,
                tools=agent.definitions,
                settings=agent.settings,
                timings=RequestTimings(),
            )
            executor = run.executor
            assert executor is not None
            executor.turn_started(turn)
            stream, calls = await _stream_turn(run, request, turn, record, ledger)
            response = stream.final_response
            if response is None:
                raise ModelError("the stream ended without a response")
            if response.status == "completed":
                calls.release_held()
            else:
                # Calls that may write never run from a response that did not complete.
                calls.refuse_held(f"the response ended {response.status}")
            if response.status == "failed":
                error = response.error or {}
                raise ModelError(
                    f"the model failed: {error.get('message', 'no message')}",
                    code=error.get("code"),
                )
            record.response_done_ns = time.perf_counter_ns() - origin
            record.response_id = response.id
            record.response_model = response.model or None
            record.usage = response.usage
            reported = response.extra.get("hotloop") if response.extra else None
            if isinstance(reported, dict):
                record.server = {
                    key: value for key, value in reported.items() if isinstance(value, int)
                }
                _report_warnings(reported.get("warnings"), turn, emit)
            usage = _add(usage, response.usage)
            function_calls = [item for item in response.output if isinstance(item, FunctionCall)]
            if not agent.eager:
                for call in function_calls:
                    calls.submit(call)
                if response.status == "completed":
                    calls.release_held()
                else:
                    calls.refuse_held(f"the response ended {response.status}")
            executor.response_done()
            if emit is not None:
                emit(ModelTurnFinished(turn, response.id, response.usage, len(function_calls)))
            if not function_calls:
                output = None
                if agent.output is not None:
                    try:
                        output = agent.output.parse(stream.text)
                    except pydantic.ValidationError as exc:
                        errors = problems(exc)
                        if output_retries == 0:
                            raise OutputValidationError(
                                f"the answer does not match {agent.output.name} after "
                                f"{agent.output_retries} retries: {errors}",
                                text=stream.text,
                                errors=errors,
                            ) from None
                        # The model tries again, told what was wrong.
                        output_retries -= 1
                        history.extend(response.output)
                        new_from = len(history)
                        history.append(_retry_message(errors))
                        previous_id = response.id
                        ledger = {}
                        continue
                history.extend(response.output)
                result = RunResult(
                    final_output=stream.text,
                    items=tuple(history),
                    usage=usage,
                    steps=tuple(steps),
                    last_response_id=response.id,
                    wall_ns=time.perf_counter_ns() - origin,
                    started_ns=origin,
                    output=output,
                    agent_name=agent.name,
                    model=agent.model,
                    server_url=getattr(run.client, "url", None),
                )
                if executor.speculate is not None:
                    # What is still being fetched is of no use now: stopped at the run's end.
                    executor.close(at=result.wall_ns)
                    result = dataclasses.replace(result, speculations=tuple(executor.speculations))
                if run.asides is not None:
                    run.asides.close(at=result.wall_ns)  # a summary on its way is of no use
                    result = dataclasses.replace(
                        result,
                        usage=_add(usage, run.asides.usage()),
                        asides=tuple(run.asides.records),
                    )
                if trace is not None:
                    trace(result)
                return result
            outputs = await calls.results()
            executor.tools_done(record.tools)
            record.tools_done_ns = time.perf_counter_ns() - origin
            for entries in ledger.values():
                tasks.extend(entries)
            # The turn counts once its calls have results: until then a failure continues
            # from before it (with the results that did come in, from the ledger).
            history.extend(response.output)
            new_from = len(history)
            history.extend(outputs)
            previous_id = response.id
            ledger = {}
            if agent.policies and run.last_model is not None:
                run.chains[run.last_model] = (previous_id, new_from)
        raise MaxTurnsExceeded(max_turns, history)
    except HotloopError as exc:
        # The run stops here: keep what it did, so that it can be continued from this point.
        await _settle_writes(agent, ledger)
        # Speculations and summaries are stopped now, so that their records are final (the
        # summaries that came back count in the tokens the run spent).
        _stop_beside(run)
        speculations: tuple[SpeculationRecord, ...] = ()
        if run.executor is not None:
            speculations = tuple(run.executor.speculations)
        asides: tuple[StepRecord, ...] = ()
        if run.asides is not None:
            usage = _add(usage, run.asides.usage())
            asides = tuple(run.asides.records)
        exc.partial = PartialRun(
            items=tuple(history),
            input=given,
            new_from=new_from,
            last_response_id=previous_id,
            finished=_finished_calls(ledger),
            steps=tuple(steps),
            usage=usage,
            error=str(exc),
            asides=asides,
            speculations=speculations,
        )
        raise
    finally:
        # The current turn's ledger too: its tools may have started eagerly while it streamed.
        for task in (*tasks, *(task for entries in ledger.values() for task in entries)):
            if not task.done():
                task.cancel()
        if threads is not None:
            threads.close()
        _stop_beside(run)  # a run that failed or was cancelled too


def _stop_beside(run: _Run) -> None:
    """Stop what runs beside the turns (summaries, speculations), once or again."""
    if run.asides is not None:
        run.asides.close()
    if run.executor is not None and run.executor.speculate is not None:
        run.executor.close()


def _report_warnings(warnings: Any, turn: int, emit: Emit | None) -> None:
    """Log and emit what the server warned about a turn (the gateway's ``hotloop.warnings``).

    A warning is not model output, so nothing else would show it: an agent whose tools do not
    match a simulated scenario would just get a short answer, with no hint why.
    """
    if not isinstance(warnings, list):
        return
    for message in warnings:
        if isinstance(message, str):
            _log.warning("model turn %d: %s", turn, message)
            if emit is not None:
                emit(ModelWarning(turn, message))


def _retry_message(errors: str) -> Message:
    return Message(
        role="user",
        content=(
            f"Your answer does not match the required format: {errors}. Answer again with "
            "only JSON that matches the schema."
        ),
    )


def _ledger_of(finished: Sequence[FinishedCall]) -> Ledger:
    """A continued run's first ledger: the interrupted turn's finished calls, as results."""
    loop = asyncio.get_running_loop()
    ledger: Ledger = {}
    for call in finished:
        future: asyncio.Future[Outcome] = loop.create_future()
        future.set_result(Outcome(call.output, call.error, 0, 0))
        ledger.setdefault((call.name, call.arguments), []).append(future)
    return ledger


async def _settle_writes(agent: Agent, ledger: Ledger) -> None:
    """Wait for started calls that may write (``eager_writes``): a write is never cut off."""
    running = [
        future
        for (name, _), entries in ledger.items()
        if (tool := agent.tool(name)) is None or not tool.dispatch_early
        for future in entries
        if not future.done()
    ]
    if running:
        await asyncio.wait(running)


def _finished_calls(ledger: Ledger) -> tuple[FinishedCall, ...]:
    finished: list[FinishedCall] = []
    for (name, arguments), entries in ledger.items():
        for future in entries:
            if future.done() and not future.cancelled() and future.exception() is None:
                outcome = future.result()
                finished.append(FinishedCall(name, arguments, outcome.output, outcome.error))
    return tuple(finished)


def _relative(value: int | None, origin: int) -> int | None:
    return None if value is None else value - origin


def _record_timings(record: StepRecord, timings: RequestTimings, origin: int) -> None:
    record.connect_start_ns = _relative(timings.connect_start_ns, origin)
    record.connect_end_ns = _relative(timings.connect_end_ns, origin)
    record.request_encoded_ns = _relative(timings.encoded_ns, origin)
    record.request_written_ns = _relative(timings.sent_ns, origin)
    record.request_bytes = timings.body_bytes
    record.incremental = timings.incremental


def _turn_handler(
    run: _Run,
    stream: ResponseStream,
    calls: _TurnCalls,
    record: StepRecord,
    turn: int,
    watch: _Watchdog | None = None,
) -> Callable[[Event], None]:
    """The per-event work of one turn attempt, run as each event arrives.

    Over a WebSocket this runs inside the socket's protocol callback: a tool call is submitted
    (and, once admitted, started) in the same callback that completed its arguments.
    """
    eager, emit, origin = run.agent.eager, run.emit, run.origin
    clock = watch.loop.time if watch is not None else None

    def on_event(event: Event) -> None:
        if clock is not None:
            watch.last = clock()  # type: ignore[union-attr]
        if record.first_token_ns is None:
            now = time.perf_counter_ns() - origin
            if record.first_event_ns is None:
                record.first_event_ns = now
            if type(event) is OutputItemAdded:
                # The first output item begins with the model's first token (the first text
                # delta or completed call stands in if a server sends no output_item.added).
                record.first_token_ns = now
        if emit is not None and type(event) is OutputItemAdded and isinstance(event.item, Message):
            emit(MessageStarted(turn))
        for report in stream.receive(event):
            if isinstance(report, TextDelta):
                if record.first_token_ns is None:
                    record.first_token_ns = time.perf_counter_ns() - origin
                if emit is not None:
                    emit(TextDeltaEvent(turn, report.delta))
            elif isinstance(report, FunctionCallReady):
                if record.first_token_ns is None:
                    record.first_token_ns = time.perf_counter_ns() - origin
                if eager:
                    calls.submit(report.call)
            elif emit is not None and type(report) is ItemDone and type(report.item) is Message:
                emit(MessageFinished(turn, report.item.text))
            elif isinstance(report, StreamError):
                raise ModelError(
                    f"the server ended the turn with an error: {report.message}",
                    code=report.code,
                )

    return on_event


async def _stream_turn(
    run: _Run, request: ModelRequest, turn: int, record: StepRecord, ledger: Ledger
) -> tuple[ResponseStream, _TurnCalls]:
    """Stream one turn, dispatching calls eagerly; re-send it after replay-safe failures."""
    agent, client = run.agent, run.client
    skip = REDUNDANT_EVENTS if run.emit is not None else _NOT_STREAMING
    watch = _Watchdog(run.deadlines) if run.deadlines is not None else None
    policies = agent.policies
    # What the turn continues before any policy changed it: a call rerouted in flight starts
    # from here.
    continues = (request.previous_response_id, request.new_from)
    history = request.history

    def reroute(given_up: ModelRequest, model: str) -> ModelRequest:
        run.rerouted_to = model
        record.rerouted_from = given_up.model
        record.rerouted_ns = time.perf_counter_ns() - run.origin
        rewritten = given_up.history is not history
        rerouted = dataclasses.replace(
            given_up,
            model=model,
            # A history a policy replaced (compacted) is numbered its own way: it goes whole.
            previous_response_id=None if rewritten else continues[0],
            new_from=0 if rewritten else continues[1],
            timings=RequestTimings() if given_up.timings is not None else None,
        )
        return _chained(run, rerouted, rewritten)

    attempt = 0
    while True:
        attempt += 1
        record.attempts = attempt
        if attempt > 1 and request.timings is not None:
            request = dataclasses.replace(request, timings=RequestTimings())
        if policies:
            request = _before_request(run, request, turn, attempt, history)
        record.request_model = request.model
        stream = ResponseStream()
        calls = _TurnCalls(run, turn, ledger, record)
        record.tools.clear()
        run.rerouted_to = record.rerouted_from = record.rerouted_ns = None
        on_event = _turn_handler(run, stream, calls, record, turn, watch)
        call = _sender(run, turn, attempt, reroute, watch) if policies else None
        failure: HotloopError
        try:
            if watch is not None:
                await _watched(client, request, on_event, skip, watch, call)
            elif call is None:
                await client.stream_to(request, on_event, skip=skip)
            else:
                await call(request, on_event, skip)
            if request.timings is not None:
                _record_timings(record, request.timings, run.origin)
            failed = _failed_response(stream)
            if failed is not None:
                raise failed  # an attempt that failed: re-sent, or a policy's to decide
            run.last_model = record.request_model = run.rerouted_to or request.model
            return stream, calls
        except TurnTimeout as exc:
            calls.stop()
            # Nothing was delivered: the turn goes out again (the transport left the socket or
            # lane that swallowed it).
            retry = exc.code == "first_event_timeout"
            failure = exc
        except TransportError as exc:
            calls.stop()
            retry = exc.replay_safe
            failure = exc
        except ModelError as exc:
            if not policies and not exc.replay_safe:
                raise
            calls.stop()
            retry = exc.replay_safe
            failure = exc
        if attempt >= agent.max_attempts:
            raise failure
        decided: ModelRequest | None = None
        if policies:
            delivered = record.first_event_ns is not None
            decided = _after_failure(run, request, turn, attempt, failure, delivered)
            if decided is not None:
                retry = True
        if not retry:
            raise failure
        wait = 0.0
        if decided is None or decided.model == request.model:
            # Sent again to the same model: a rate limit is waited out first.
            asked = _rate_limit_wait(failure, attempt)
            if asked is None:
                raise failure  # the server asks for a longer wait than a run sleeps through
            wait = asked
            end = watch.turn_end if watch is not None else None
            if end is not None and watch is not None and watch.loop.time() + wait >= end:
                raise failure  # the wait would outlast the turn's deadline
        if decided is not None:
            request = decided
        code = getattr(failure, "code", None)
        _log.info(
            "turn %d, attempt %d failed (%s); sending it again to %s in %.2f s",
            turn,
            attempt,
            code or type(failure).__name__,
            request.model,
            wait,
        )
        if run.emit is not None:
            run.emit(
                TurnRetried(
                    turn,
                    attempt,
                    code if isinstance(code, str) else None,
                    str(failure),
                    wait,
                    request.model,
                )
            )
        if wait:
            await asyncio.sleep(wait)


#: ``response.failed`` codes of a rate limit (the simulated model's, and the gateway's when
#: its upstream rate limits it for longer than it waits itself).
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "upstream_rate_limited"})
#: The longest wait a rate-limited turn sleeps through before it is sent again: a server that
#: asks for a longer one gets its error raised at once (``retry_after`` says the wait), for
#: the caller to decide.
MAX_RATE_LIMIT_WAIT = 60.0
#: The wait after a rate limit that did not say how long: this, doubled per attempt after the
#: first (at most ``_RATE_LIMIT_WAIT_CAP``), with ±25% jitter so clients do not come back
#: together.
_RATE_LIMIT_WAIT = 0.5
_RATE_LIMIT_WAIT_CAP = 8.0
#: That wait's jitter: a generator of its own, never the global ``random`` state an
#: application may have seeded.
_jitter = random.Random()


def _rate_limit_wait(failure: HotloopError, attempt: int) -> float | None:
    """How long to wait before sending a turn again after ``failure``, the ``attempt``-th
    (from 1): 0 unless it is a rate limit (status 429, or ``rate_limit_exceeded``); the wait
    the server asked for, or an exponential backoff with jitter; ``None`` when the server
    asked for more than :data:`MAX_RATE_LIMIT_WAIT`."""
    status = getattr(failure, "status", None)
    if status != 429 and getattr(failure, "code", None) not in RATE_LIMIT_CODES:
        return 0.0
    asked: float | None = getattr(failure, "retry_after", None)
    if asked is not None:
        return asked if asked <= MAX_RATE_LIMIT_WAIT else None
    backoff: float = min(_RATE_LIMIT_WAIT * 2.0 ** (attempt - 1), _RATE_LIMIT_WAIT_CAP)
    return backoff * _jitter.uniform(0.75, 1.25)


def _failed_response(stream: ResponseStream) -> ModelError | None:
    """The error of an attempt whose response ended ``failed`` (``None``: it did not)."""
    response = stream.final_response
    if response is None or response.status != "failed":
        return None
    error = response.error or {}
    code = error.get("code")
    resent = RESENT_FAILURES.get(code) if isinstance(code, str) else None
    replay_safe = resent == "any" or (resent == "no_output" and not response.output)
    message = str(error.get("message", "no message"))
    return ModelError(
        f"the model failed: {message}",
        code=code,
        replay_safe=replay_safe,
        retry_after=retry_after(None, message),
    )


def _sender(
    run: _Run,
    turn: int,
    attempt: int,
    reroute: Callable[[ModelRequest, str], ModelRequest],
    watch: _Watchdog | None = None,
) -> Send | None:
    """The policies that wrap the call, around the transport; ``None`` when none does.

    ``reroute(request, model)`` is what :meth:`TurnState.rerouted` returns for ``request``.
    Every event the transport hands up counts for ``watch``'s deadlines, also one a policy
    holds back from the run (a small model's reasoning while ``RouteTurns`` waits to see
    whether it answers).
    """
    senders = [policy for policy in run.agent.policies if policy.sends]
    if not senders:
        return None
    client = run.client

    async def transport(request: ModelRequest, on_event: OnEvent, skip: Collection[str]) -> None:
        if watch is not None:
            forward, heard = on_event, watch.heard

            def arrived(event: Event) -> None:
                heard()
                forward(event)

            on_event = arrived
        await client.stream_to(request, on_event, skip=skip)

    call: Send = transport
    for policy in reversed(senders):
        call = functools.partial(_through, policy, run, turn, attempt, reroute, call)
    return call


async def _through(
    policy: Policy,
    run: _Run,
    turn: int,
    attempt: int,
    reroute: Callable[[ModelRequest, str], ModelRequest],
    inner: Send,
    request: ModelRequest,
    on_event: OnEvent,
    skip: Collection[str],
) -> None:
    state = _policy_state(run, policy, request, turn, attempt)
    state._reroute = functools.partial(reroute, request)
    await policy.send(state, request, on_event, skip, inner)


def _policy_state(
    run: _Run, policy: Policy, request: ModelRequest, turn: int, attempt: int
) -> TurnState:
    memo = run.memos.setdefault(id(policy), {})
    state = TurnState(run.agent, turn, attempt, request, memo=memo)
    state._aside = functools.partial(_aside, run, turn)
    return state


def _aside(
    run: _Run, turn: int, request: ModelRequest, purpose: str, timeout: float | None
) -> asyncio.Task[ResponseObject]:
    """``TurnState.request_aside``: the request goes out beside the turn, recorded."""
    if run.asides is None:
        run.asides = Asides(run.client, run.origin)
    return run.asides.start(turn, request, purpose, timeout)


def _before_request(
    run: _Run, request: ModelRequest, turn: int, attempt: int, history: Sequence[Item]
) -> ModelRequest:
    for policy in run.agent.policies:
        changed = policy.before_request(_policy_state(run, policy, request, turn, attempt))
        if changed is not None:
            request = changed
    return _chained(run, request, request.history is not history)


def _chained(run: _Run, request: ModelRequest, rewritten: bool = False) -> ModelRequest:
    """``request`` continuing its model's own chain, when it switches models.

    ``rewritten``: a policy replaced the run's history with its own (a compacted context), in
    which the chains' positions mean nothing.
    """
    switched = run.last_model is not None and request.model != run.last_model
    if not switched:
        return request
    if rewritten or not _keeps_chains(run.agent):
        # No per-model chains (or none in this history): the run's last response is another
        # model's, so the whole history goes.
        if request.previous_response_id is not None:
            request = dataclasses.replace(request, previous_response_id=None)
        return request
    chain = run.chains.get(request.model)
    if chain is not None and chain[0] != request.previous_response_id:
        # Switched to a model that answered before in this run: continue its own response
        # (its cache holds that prefix), sending everything that came after it.
        request = dataclasses.replace(request, previous_response_id=chain[0], new_from=chain[1])
    return request


def _resume_chains(run: _Run, previous: RunResult | PartialRun) -> None:
    """A continued run goes on with the models' chains of the run it continues: each model's
    last response there, and the items after it (a model switched to continues its own)."""
    steps = previous.steps
    end = previous.new_from if isinstance(previous, PartialRun) else len(previous.items)
    for index, step in enumerate(steps):
        if step.request_model is None or step.response_id is None:
            continue  # a turn that failed, or a record read back without its model
        after = steps[index + 1].input_from if index + 1 < len(steps) else end
        if after is None:
            continue
        run.chains[step.request_model] = (step.response_id, after)
        run.last_model = step.request_model


def _keeps_chains(agent: Agent) -> bool:
    """Whether a switched turn may continue a response by id (no ``RouteTurns`` turned the
    per-model chains off)."""
    return all(policy.keep_chains for policy in agent.policies if isinstance(policy, RouteTurns))


def _after_failure(
    run: _Run,
    request: ModelRequest,
    turn: int,
    attempt: int,
    failure: HotloopError,
    delivered: bool,
) -> ModelRequest | None:
    """The request of the next attempt, if a policy asks for one."""
    for policy in run.agent.policies:
        state = _policy_state(run, policy, request, turn, attempt)
        state.failure, state.delivered = failure, delivered
        decided = policy.after_failure(state)
        if decided is not None:
            return decided
    return None


async def _watched(
    client: Transport,
    request: ModelRequest,
    on_event: Callable[[Event], None],
    skip: frozenset[str],
    watch: _Watchdog,
    call: Send | None = None,
) -> None:
    """``client.stream_to`` (or ``call``, the policies around it) under the turn's deadlines;
    raises :class:`TurnTimeout`."""
    watch.start()
    try:
        if call is None:
            await client.stream_to(request, on_event, skip=skip)
        else:
            await call(request, on_event, skip)
    except asyncio.CancelledError:
        code = watch.fired
        task = asyncio.current_task()
        if code is None or task is None or task.uncancel() > 0:
            raise  # a cancellation of the run, not a deadline
        delivered = watch.last is not None
        if code == "first_event_timeout":
            waited = watch.deadlines.first_event
            message = f"no event of the turn within {waited} s of sending it"
        elif code == "stall_timeout":
            message = f"the turn stalled: no event for {watch.deadlines.stall} s"
        else:
            message = f"the turn took longer than {watch.deadlines.turn} s"
        raise TurnTimeout(message, code=code, replay_safe=not delivered) from None
    finally:
        watch.stop()


def _deadlines(
    agent: Agent,
    first_event: float | _Default | None,
    stall: float | _Default | None,
    turn: float | _Default | None,
) -> _Deadlines | None:
    deadlines = _Deadlines(
        agent.first_event_timeout if isinstance(first_event, _Default) else first_event,
        agent.stall_timeout if isinstance(stall, _Default) else stall,
        agent.turn_timeout if isinstance(turn, _Default) else turn,
    )
    for setting, value in (
        ("first_event_timeout", deadlines.first_event),
        ("stall_timeout", deadlines.stall),
        ("turn_timeout", deadlines.turn),
    ):
        number(setting, value, optional=True)
        if value is not None and value <= 0:
            raise ValueError("timeouts must be positive (or None)")
    if deadlines.first_event is None and deadlines.stall is None and deadlines.turn is None:
        return None
    return deadlines
