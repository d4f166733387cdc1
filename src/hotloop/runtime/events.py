"""What a run reports while it goes (``Runner.run_stream``) and what it returns.

Times are ``time.perf_counter_ns()`` values relative to the run's start (``*_ns``), so a step
record reads as a timeline: when the request went out, when the first event and the first
token came back, when each call's arguments were complete, when its tool started and ended.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from hotloop.wire.items import FunctionCall, Item, Message
from hotloop.wire.responses import Usage

__all__ = [
    "ApprovalRequested",
    "FinishedCall",
    "MessageFinished",
    "MessageStarted",
    "ModelTurnFinished",
    "ModelWarning",
    "PartialRun",
    "RunEvent",
    "RunFinished",
    "RunResult",
    "SpeculationRecord",
    "StepRecord",
    "TextDelta",
    "TurnRetried",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolRecord",
]


@dataclass(slots=True)
class ToolRecord:
    """One tool call of a step, and when each phase happened."""

    call_id: str
    name: str
    arguments: str
    args_complete_ns: int
    started_ns: int | None = None
    finished_ns: int | None = None
    error: str | None = None
    reused: bool = False
    #: For a call that needed approval: ``"approved"`` or ``"denied"``, and when it was asked.
    approval: str | None = None
    approval_requested_ns: int | None = None
    #: Runs of other agents made by this call (a sub-agent used as a tool), in order.
    subruns: list[RunResult] = field(default_factory=list)
    #: For a tool with ``cache=``: ``"hit"`` (answered from the cache, not run), ``"miss"``
    #: (run, its result kept) or ``"coalesced"`` (took the result of an identical call running
    #: at the same time); ``"speculated"``: took a speculative execution's result. A call
    #: ``reused`` from an earlier attempt of the turn keeps what the cache did there.
    cache: str | None = None
    #: Cached results this call dropped because it may write what they read (a ``reused``
    #: call: in the attempt that ran it).
    invalidated: int = 0


@dataclass(slots=True)
class SpeculationRecord:
    """One speculative execution (``Speculate``): what ran, why, when, and whether a call of
    the model used it. ``source`` is ``"follows"`` (a tool's declared follow-ups) or
    ``"learned"`` (the client's transition model); ``used_ns`` is when the call that took its
    result had complete arguments (None: never used, the execution was wasted)."""

    name: str
    arguments: str
    source: str
    started_ns: int
    finished_ns: int | None = None
    used_ns: int | None = None
    error: str | None = None


@dataclass(slots=True)
class StepRecord:
    """One model turn and the tools it called.

    ``request_sent_ns`` is when the runner handed the turn's request to the transport;
    ``connect_start_ns``/``connect_end_ns`` (only when the request had to open a connection),
    ``request_encoded_ns`` and ``request_written_ns`` (the body written to the socket or the
    HTTP client) are the transport's, for the attempt that succeeded; ``request_bytes`` is
    that attempt's body size and ``incremental`` whether it carried only the new items.
    "Tool results → next request sent" is ``tools_done_ns`` of turn *k* to
    ``request_written_ns`` of turn *k + 1*.
    """

    turn: int
    request_sent_ns: int
    first_event_ns: int | None = None
    first_token_ns: int | None = None
    response_done_ns: int | None = None
    tools_done_ns: int | None = None
    response_id: str | None = None
    attempts: int = 1
    usage: Usage | None = None
    tools: list[ToolRecord] = field(default_factory=list)
    #: The server's own timings of the response, when it reports them (the hotloop gateway
    #: does, in ``response.hotloop``): ``queue_ns``, ``gateway_pre_ns``, ``first_output_ns``,
    #: ``decode_ns``, ``gateway_post_ns``. They split network time from server time.
    server: dict[str, int] | None = None
    connect_start_ns: int | None = None
    connect_end_ns: int | None = None
    request_encoded_ns: int | None = None
    request_written_ns: int | None = None
    request_bytes: int = 0
    incremental: bool = False
    #: The model the turn's request named: the agent's, or another a policy sent it to (for
    #: a call given up in flight, the model that took over). ``None`` when unknown.
    request_model: str | None = None
    #: The model that answered, as the response names it.
    response_model: str | None = None
    #: When a policy gave up the turn's call for another model's in flight (``RouteTurns``
    #: sends an answer begun by a model in its ``answers`` to the answering model): the model
    #: given up, and when (``rerouted_ns - request_sent_ns`` is the time it took).
    rerouted_from: str | None = None
    rerouted_ns: int | None = None
    #: Where this turn's items sit in :attr:`RunResult.items`: its new input items start at
    #: ``input_from``, the model's output items at ``output_from`` (up to the next turn's
    #: ``input_from``, or the end). ``None`` when unknown (a step read back from a trace).
    input_from: int | None = None
    output_from: int | None = None
    #: For a request a policy sent beside the turns (:attr:`RunResult.asides`): what it was
    #: for (``"summary"``: a ``Compact`` summary); ``None`` for a turn.
    purpose: str | None = None
    #: For a request beside the turns that ended without a response (it failed, missed its
    #: timeout, or the run ended first), or whose response failed: why; its
    #: ``response_done_ns`` is when it ended.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a run.

    ``items`` is the whole conversation (earlier runs' items, this run's input, every model
    output and tool result); pass the result as ``previous=`` to continue the conversation.
    ``started_ns`` is the ``time.perf_counter_ns()`` value the run's relative times count from.
    ``output`` is the final answer validated into the agent's ``output_type``, if it has one.
    ``asides`` are the requests policies sent beside the turns (a ``Compact`` summary), which
    the loop did not wait for; their tokens count in ``usage``. With ``Compact``, ``items``
    stays the whole conversation: only what the model was sent was compacted.
    """

    final_output: str
    items: tuple[Item, ...]
    usage: Usage
    steps: tuple[StepRecord, ...]
    last_response_id: str | None
    wall_ns: int
    started_ns: int = 0
    #: The final answer as a value of the agent's ``output_type`` (``None`` without one).
    output: Any = None
    #: The agent's name and model, and the URL of the server the run talked to (when its
    #: transport exposes one): what traces name the run and its model requests by.
    agent_name: str | None = None
    model: str | None = None
    server_url: str | None = None
    #: Requests policies sent beside the turns, in the order they went out.
    asides: tuple[StepRecord, ...] = ()
    #: Speculative executions (``Speculate``), in the order they started.
    speculations: tuple[SpeculationRecord, ...] = ()

    @property
    def turns(self) -> int:
        return len(self.steps)

    @property
    def tool_calls(self) -> int:
        return sum(len(step.tools) for step in self.steps)

    def new_items_since(self, start: int) -> tuple[Item, ...]:
        return self.items[start:]

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(item for item in self.items if isinstance(item, Message))

    @property
    def function_calls(self) -> tuple[FunctionCall, ...]:
        return tuple(item for item in self.items if isinstance(item, FunctionCall))


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A tool call of an interrupted turn that had finished: its result is kept."""

    name: str
    arguments: str
    output: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PartialRun:
    """Where a run stood when it failed; every error a run raises carries one (``.partial``).

    Pass it back to continue the run: ``Runner.run(agent, input, previous=exc.partial)`` (the
    same ``input``, or ``()``). The continued run starts with the turn that failed and
    executes no finished call again: ``items`` hold every completed turn with its tool
    results, and a call of the interrupted turn that had finished (``finished``) is not run
    again when the model asks for it again (same tool, same arguments): its result is reused.
    Calls that had not finished were cancelled; only calls that read, or are ``pure`` or
    ``idempotent``, run before their response completes, so a write is never among them
    (with ``Agent(eager_writes=True)`` the run waits for writes that had started).

    ``new_from`` and ``last_response_id`` say which items the server has not seen yet and
    which response they continue, so the continued run stays incremental when it can.
    ``input`` is the run's own input; ``steps``, ``usage``, ``error``, ``asides`` and
    ``speculations`` describe the failed attempt (the continued run reports only its own):
    ``usage`` counts the summaries that came back, and the asides and speculations still
    running when it failed were stopped then (their records say so).
    """

    items: tuple[Item, ...]
    input: tuple[Item, ...]
    new_from: int
    last_response_id: str | None
    finished: tuple[FinishedCall, ...]
    steps: tuple[StepRecord, ...]
    usage: Usage
    error: str
    asides: tuple[StepRecord, ...] = ()
    speculations: tuple[SpeculationRecord, ...] = ()

    @property
    def turns(self) -> int:
        """Model turns the failed attempt completed."""
        return sum(1 for step in self.steps if step.response_id is not None)


@dataclass(frozen=True, slots=True)
class MessageStarted:
    """The model began a message: its :class:`TextDelta` events follow."""

    turn: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Model text as it streams, between :class:`MessageStarted` and :class:`MessageFinished`."""

    turn: int
    delta: str


@dataclass(frozen=True, slots=True)
class MessageFinished:
    """The model finished a message; ``text`` is all of it."""

    turn: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """A tool started (its arguments were complete and the scheduler admitted it)."""

    turn: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    """A call has its result, reported the moment it has it (while the model may still stream).

    ``output`` is what the model gets; ``error`` is set when it failed (or never ran: invalid
    arguments, an unknown tool, a write refused from a response that did not complete).
    ``duration_ns`` is how long the tool ran (0 when it did not run, or was reused).
    """

    turn: int
    call_id: str
    name: str
    output: str
    error: str | None
    duration_ns: int


@dataclass(frozen=True, slots=True)
class ModelTurnFinished:
    """A model turn ended (before its tools are all done)."""

    turn: int
    response_id: str
    usage: Usage | None
    tool_calls: int


@dataclass(frozen=True, slots=True)
class TurnRetried:
    """An attempt of a model turn failed and the turn goes out again, in ``wait_s`` seconds
    (a rate limit is waited out; other failures are sent again at once), to ``model``.

    ``attempt`` is the attempt that failed (from 1); ``code`` and ``message`` say why.
    Nothing of a failed attempt reaches the run's history; calls it had started are reused.
    """

    turn: int
    attempt: int
    code: str | None
    message: str
    wait_s: float
    model: str


@dataclass(frozen=True, slots=True)
class ModelWarning:
    """The server warned about a model turn (a simulated scenario calls a tool the agent does
    not have, say): not model output, but why the run may not go as expected.

    Reported before that turn's :class:`ModelTurnFinished`; the runner also logs it.
    """

    turn: int
    message: str


class ApprovalRequested:
    """A call waits for approval before it runs: call :meth:`approve` or :meth:`deny`.

    ``Runner.run_stream`` yields it; ``Runner.run`` hands it to its ``approver``. Only this call
    waits: calls that do not conflict with it go on. A denied call does not run, and the model
    gets an error result with the reason.
    """

    __slots__ = ("_decision", "arguments", "call_id", "name", "turn")

    def __init__(
        self,
        turn: int,
        call_id: str,
        name: str,
        arguments: str,
        decision: asyncio.Future[str | None],
    ) -> None:
        self.turn = turn
        self.call_id = call_id
        self.name = name
        self.arguments = arguments
        self._decision = decision

    @property
    def decided(self) -> bool:
        return self._decision.done()

    def approve(self) -> None:
        """Let the call run."""
        if not self._decision.done():
            self._decision.set_result(None)

    def deny(self, reason: str = "the user denied it") -> None:
        """Do not run the call; the model is told ``reason``."""
        if not self._decision.done():
            self._decision.set_result(reason or "the user denied it")

    def __repr__(self) -> str:
        return f"ApprovalRequested(turn={self.turn}, name={self.name!r}, call_id={self.call_id!r})"


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run is over."""

    result: RunResult


RunEvent: TypeAlias = (
    ApprovalRequested
    | MessageStarted
    | TextDelta
    | MessageFinished
    | ToolCallStarted
    | ToolCallFinished
    | ModelTurnFinished
    | ModelWarning
    | TurnRetried
    | RunFinished
)
