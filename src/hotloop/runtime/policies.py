"""Policies around a model call: what each attempt of a turn sends, and what a failure becomes.

The runner sends each turn in attempts (the first, then re-sends after failures). A policy is
consulted at two points, and only changes the :class:`~hotloop.transport.base.ModelRequest`:

* :meth:`Policy.before_request`, before every attempt: it may send the turn to another model
  (per-step routing, a fallback that stuck);
* :meth:`Policy.after_failure`, when an attempt failed: it may ask for another attempt, to the
  same model or another one, where the runner alone would have raised.

Policies compose: ``Agent(policies=[...])`` consults them in order, and each sees the request
as the previous ones left it. Every attempt is one the runner makes anyway, so what protects a
re-sent turn protects these too: calls that started in a failed attempt are matched by name and
arguments and reused, never executed twice, and calls that may write still wait for a response
that completes. Attempts stay bounded by ``Agent.max_attempts``; the turn deadline
(``turn_timeout``) covers them all.

Hooks are plain methods, called on the event loop: they must not block or await. What a
policy must remember across the turns of one run goes in :attr:`TurnState.memo` (one dict per
run and policy); a policy object itself is shared by every run of its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

from hotloop.checks import number
from hotloop.errors import HotloopError
from hotloop.transport.base import (
    ModelRequest,
    OnEvent,
    PercentileDelay,
    RequestTimings,
    TransportError,
)
from hotloop.wire.events import (
    ERROR_EVENTS,
    RESPONSE_END_EVENTS,
    ContentPartAdded,
    Event,
    FunctionCallArgumentsDelta,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
)
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message, Reasoning
from hotloop.wire.responses import ResponseObject

if TYPE_CHECKING:
    from hotloop.runtime.agent import Agent

__all__ = ["Fallback", "Hedge", "Policy", "RetryOnTimeout", "RouteTurns", "Send", "TurnState"]


@dataclass(slots=True)
class TurnState:
    """What a policy knows when it decides about one attempt of a turn.

    ``turn`` and ``attempt`` count from 1. ``failure`` is why the previous attempt failed
    (``after_failure`` only) and ``delivered`` whether it had delivered events. ``memo`` is
    this policy's own dict for this run. :meth:`request_aside` sends a model request of the
    policy's own beside the turn.
    """

    agent: Agent
    turn: int
    attempt: int
    request: ModelRequest
    failure: HotloopError | None = None
    delivered: bool = False
    memo: dict[str, Any] = field(default_factory=dict)
    #: Set by the runner for :meth:`rerouted` (``send`` only).
    _reroute: Callable[[str], ModelRequest] | None = field(default=None, repr=False)
    #: Set by the runner for :meth:`request_aside`.
    _aside: Callable[[ModelRequest, str, float | None], asyncio.Future[ResponseObject]] | None = (
        field(default=None, repr=False)
    )

    def request_aside(
        self, request: ModelRequest, purpose: str, *, timeout: float | None = None
    ) -> asyncio.Future[ResponseObject] | None:
        """Send ``request`` through the run's client now, beside the turn, without waiting.

        A plain model call: its response continues no chain of the run and joins no history.
        The future's result is the final response (it raises what the call raised); the loop
        never waits for it, and it is cancelled if still running when the run ends. The
        call is recorded in :attr:`RunResult.asides <hotloop.runtime.events.RunResult.asides>`
        with ``purpose``, and its tokens count in the run's ``usage``. ``None`` outside a run.

        ``timeout`` (seconds): a call with no complete response by then is cancelled, and the
        future raises :class:`TimeoutError`.
        """
        if self._aside is None:
            return None
        return self._aside(request, purpose, timeout)

    def rerouted(self, model: str) -> ModelRequest:
        """This attempt's request sent to ``model`` instead, for a :meth:`Policy.send` that
        gives up its call for another model's.

        The request continues ``model``'s own chain in this run, as if ``before_request`` had
        chosen it (the whole history without per-model chains), with fresh ``timings``. The
        runner takes the turn as ``model``'s, and the step record shows the model given up
        (``rerouted_from``) and when (``rerouted_ns``). Outside a run the request sends the
        whole history.
        """
        if self._reroute is not None:
            return self._reroute(model)
        timings = RequestTimings() if self.request.timings is not None else None
        return dataclasses.replace(
            self.request, model=model, previous_response_id=None, timings=timings
        )


#: Sends one attempt and hands its events over: the transport, or the policies inside.
Send = Callable[[ModelRequest, OnEvent, Collection[str]], Awaitable[None]]


class Policy:
    """A policy around model calls; override the hooks it needs (all default to no change)."""

    def before_request(self, state: TurnState) -> ModelRequest | None:
        """The request to send for this attempt instead of ``state.request``, or ``None``."""
        return None

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        """The request for another attempt after ``state.failure``, or ``None`` to let the
        runner decide (it re-sends only replay-safe failures)."""
        return None

    async def send(
        self,
        state: TurnState,
        request: ModelRequest,
        on_event: OnEvent,
        skip: Collection[str],
        send: Send,
    ) -> None:
        """Send one attempt through ``send`` (the transport, or the policies inside this one).

        Override it to wrap the call itself, as :class:`Hedge` does; every event handed to
        ``on_event`` must belong to one response. The turn's deadlines cover the whole call.
        """
        await send(request, on_event, skip)

    @property
    def sends(self) -> bool:
        """Whether this policy wraps the call (overrides :meth:`send`)."""
        return type(self).send is not Policy.send


def _code(failure: HotloopError | None) -> str | None:
    code = getattr(failure, "code", None)
    return code if isinstance(code, str) else None


class RetryOnTimeout(Policy):
    """Timeouts that act: a turn that missed its first event or stalled is sent again.

    The runner re-sends a turn that missed its first event by itself; a stall after events
    arrived is not replay safe, so it raises. With this policy that turn goes out again too (on
    a fresh lane or socket: the stalled response is cancelled), and calls it had
    started are reused. ``codes`` are the :class:`~hotloop.runtime.runner.TurnTimeout` codes it
    acts on; the whole-turn deadline is never retried.
    """

    def __init__(self, codes: Collection[str] = ("first_event_timeout", "stall_timeout")) -> None:
        self.codes = frozenset(codes) - {"turn_timeout"}

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        if isinstance(state.failure, TransportError) and _code(state.failure) in self.codes:
            return state.request
        return None


class Fallback(Policy):
    """Model A, then B (then C ...): a turn that fails on one model goes to the next.

    ``models`` are the fallbacks in order, after the agent's own model. Any failure of an
    attempt counts (a refused or failed request, a timeout, a lost connection, an error event),
    or only those whose ``code`` is in ``codes``. The fallback attempt sends the whole history
    (the next model continues no response of the failed one); once a run has fallen back it
    stays on that model (``sticky``), continuing incrementally from the fallback's own
    responses; with ``sticky=False`` each turn tries the agent's model first again.
    """

    def __init__(
        self, *models: str, codes: Collection[str] | None = None, sticky: bool = True
    ) -> None:
        if not models:
            raise ValueError("Fallback needs at least one model to fall back to")
        self.models = models
        self.codes = frozenset(codes) if codes is not None else None
        self.sticky = sticky

    def before_request(self, state: TurnState) -> ModelRequest | None:
        model = state.memo.get("model")
        if model is None or model == state.request.model:
            return None
        return dataclasses.replace(state.request, model=model)

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        if self.codes is not None and _code(state.failure) not in self.codes:
            return None
        chain = (state.agent.model, *self.models)
        current = state.request.model
        position = chain.index(current) if current in chain else 0
        if position + 1 >= len(chain):
            return None  # no model left: the failure stands
        model = chain[position + 1]
        if self.sticky:
            state.memo["model"] = model
        return dataclasses.replace(state.request, model=model, previous_response_id=None)


class RouteTurns(Policy):
    """Per-step routing: ``choose(state)`` names the model for each turn (``None``: the agent's).

    Each model keeps its own chain: a turn switched to a model that answered before in this run
    continues that model's last response (whose prompt its cache holds), sending every item
    that came after it; over a WebSocket that response must still live on the connection, or
    the whole history goes. A model's first turn continues the run's last response. A
    conversation continued with ``previous=`` goes on with the chains of the run it continues. With
    ``keep_chains=False`` a switched turn sends the whole history instead (the run's last
    response is another model's), which is what a switch costs without chains. The step
    record's ``response_model``, ``request_bytes``, ``incremental`` and ``usage`` show what a
    switch cost. ``state.turn`` and ``state.request`` (its history, and which items are new)
    are what a choice usually rests on.

    ``answers`` maps a model to the one that gives its answers (``None``: the agent's model).
    A turn sent to such a model is held until its first output item that is not reasoning: a
    function call (or any other item) lets the turn stream on as usual; a message means the
    model is answering, so that call is cancelled at once and the same turn goes to the
    answering model (continuing that model's chain), whose events alone reach the run. The
    given-up call counts in ``escalations`` and ``escalated_s`` (seconds from sending it to
    giving it up; both shared by every run of the agent), and its step record shows
    ``rerouted_from`` and ``rerouted_ns``. It is no failed attempt: ``attempts`` stays as it
    was.

    Models that write a short message before their calls ("Now let me run the tests.") would
    look like answering at once. Once a response of the run showed that habit (a message,
    then a function call, in one model output), a message of at most ``preamble_chars``
    characters is held as a likely preamble: a function call after it lets the turn stream on
    (the message included), while a longer message, or a response that ends after it, is an
    answer and goes over. Before the run showed it (or with ``preamble_chars=0``), the first
    message goes over at once.

    :meth:`digest` is the usual rule: turns that only digest tool results go to a small model,
    and the final answer comes from the large one.
    """

    def __init__(
        self,
        choose: Callable[[TurnState], str | None],
        *,
        keep_chains: bool = True,
        answers: Mapping[str, str | None] | None = None,
        preamble_chars: int = 400,
    ) -> None:
        number("preamble_chars", preamble_chars, integer=True)
        if preamble_chars < 0:
            raise ValueError("preamble_chars must be 0 (no preambles) or more")
        self.choose = choose
        self.keep_chains = keep_chains
        self.answers: dict[str, str | None] = dict(answers or {})
        self.preamble_chars = preamble_chars
        #: Calls given up because their model started to answer, and the seconds they ran.
        self.escalations = 0
        self.escalated_s = 0.0

    @classmethod
    def digest(
        cls,
        small: str,
        large: str | None = None,
        *,
        answer: Literal["large", "small"] = "large",
        keep_chains: bool = True,
        preamble_chars: int = 400,
    ) -> Self:
        """Turns that only digest tool results go to ``small``; the others, and the final
        answer, to ``large``.

        A turn *only digests* when its new input (``state.request.new_items``: what came
        after the run's last response) is nothing but function-call outputs. Every other turn
        goes to ``large`` (``None``: the agent's model): the first turn of a run, whose input
        is the user's (it plans), and any turn whose new input holds a message (a follow-up,
        or the runner's request to fix an answer that did not match ``output_type``).

        Whether a digest turn gives the final answer shows only in its output. With
        ``answer="large"`` (the default) a digest turn whose response starts with a message
        is cancelled there and sent to ``large`` (see ``answers``): the answer costs the small
        model's time to its first output item, then a large-model turn. With
        ``answer="small"`` the small model's answer stands. A re-sent attempt keeps its model,
        as with any ``RouteTurns``.
        """
        if answer not in ("large", "small"):
            raise ValueError('answer must be "large" or "small"')

        def choose(state: TurnState) -> str | None:
            return small if _only_digests(state.request) else large

        answers = {small: large} if answer == "large" else None
        return cls(choose, keep_chains=keep_chains, answers=answers, preamble_chars=preamble_chars)

    def before_request(self, state: TurnState) -> ModelRequest | None:
        if state.attempt > 1:
            return None  # a re-send keeps the model its attempt chose (or a fallback's)
        model = self.choose(state)
        if model is None or model == state.request.model:
            return None
        return dataclasses.replace(state.request, model=model)

    @property
    def sends(self) -> bool:
        # Only a policy that holds answers wraps the call (or a subclass with its own send).
        return bool(self.answers) or type(self).send is not RouteTurns.send

    async def send(
        self,
        state: TurnState,
        request: ModelRequest,
        on_event: OnEvent,
        skip: Collection[str],
        send: Send,
    ) -> None:
        if request.model not in self.answers:
            await send(request, on_event, skip)
            return
        answering = self.answers[request.model] or state.agent.model
        if answering == request.model:
            await send(request, on_event, skip)
            return
        loop = asyncio.get_running_loop()
        preamble = self.preamble_chars if _writes_preambles(state, request) else 0
        gate = _Gate(on_event, preamble)
        started = loop.time()
        first = asyncio.ensure_future(send(request, gate.on_event, skip))
        try:
            waiting: set[asyncio.Future[Any]] = {first, gate.answering}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not gate.answering.done():
                await first  # not an answer (or it failed): the call stands as it went
                return
            first.cancel()  # the small model stops now; none of its events reached the run
            with contextlib.suppress(BaseException):
                await first
            self.escalations += 1
            self.escalated_s += loop.time() - started
            answer = state.rerouted(answering)
            await send(answer, on_event, skip)
            if request.timings is not None and answer.timings is not None:
                _adopt_timings(request.timings, answer.timings)
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first


def _only_digests(request: ModelRequest) -> bool:
    """Whether the turn's new input is only function-call outputs (and not empty)."""
    new = request.new_items
    return bool(new) and all(isinstance(item, FunctionCallOutput) for item in new)


def _writes_preambles(state: TurnState, request: ModelRequest) -> bool:
    """Whether a model output of this run so far held a message and then a function call
    (remembered in ``state.memo``; the history is read once, as it grows)."""
    memo = state.memo
    if memo.get("preambles"):
        return True
    history = request.history
    start = memo.get("preambles_read", 0)
    if start > len(history):
        start = 0  # another history (a new run with the same memo would not be)
    message = memo.get("preambles_message", False)
    found = False
    for item in history[start:]:
        if isinstance(item, Message) and item.role == "assistant":
            message = True
        elif isinstance(item, FunctionCall):
            if message:
                found = True
                break
        elif not isinstance(item, Reasoning):
            message = False  # input: the next model output starts
    memo["preambles"] = found
    memo["preambles_read"] = len(history)
    memo["preambles_message"] = message
    return found


def _answers(items: Collection[Item]) -> bool | None:
    """Whether the first item that is not reasoning is a message (``None``: only reasoning)."""
    for item in items:
        if not isinstance(item, Reasoning):
            return isinstance(item, Message)
    return None


class _Gate:
    """Holds one response's events until its first output item that is not reasoning shows
    whether the model is answering: then ``answering`` is set and every event is dropped, or
    the held events are handed over and the rest streams through.

    With ``preamble`` > 0, messages of up to that many characters are held as preambles: the
    item after them decides (a function call: not answering), a longer message is an answer.
    """

    def __init__(self, on_event: OnEvent, preamble: int = 0) -> None:
        self.forward = on_event
        self.preamble = preamble
        #: Characters of the messages held as preambles so far, and of the one streaming.
        self.written = 0
        self.writing: int | None = None
        self.open = False
        self.held: list[Event] = []
        self.answering: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(self, event: Event) -> None:
        if self.open:
            self.forward(event)
            return
        if self.answering.done():
            return  # the answer goes to another model: nothing of this one reaches the run
        verdict = self._verdict(event)
        if verdict is None:
            self.held.append(event)
        elif verdict:
            self.held.clear()
            self.answering.set_result(None)
        else:
            self.open = True
            held, self.held = self.held, []
            for earlier in held:
                self.forward(earlier)
            self.forward(event)

    def _verdict(self, event: Event) -> bool | None:
        """Answering (True), not (False), or not decided yet (None): the first output item that
        is not reasoning decides, or with ``preamble``, the first after messages of up to that
        many characters in all (a message past it is an answer)."""
        kind = type(event)
        if kind is OutputItemAdded or kind is OutputItemDone:
            item = event.item  # type: ignore[union-attr]
            if not isinstance(item, Message):
                return _answers((item,))  # reasoning: not yet; a call (or other item): no
            if kind is OutputItemAdded:
                self.writing = len(item.text)
            else:
                self.written += len(item.text)
                self.writing = None
        elif kind is OutputTextDelta or kind is ContentPartAdded:
            # Text (with or without its output_item.added): a message streaming.
            delta = len(event.delta) if kind is OutputTextDelta else 0  # type: ignore[union-attr]
            self.writing = (self.writing or 0) + delta
        elif kind in RESPONSE_END_EVENTS:
            # Ended while undecided: its output says what it was.
            output = event.response.output  # type: ignore[union-attr]
            if not self.preamble:
                return _answers(output) is True
            return not any(isinstance(item, FunctionCall) for item in output) and any(
                isinstance(item, Message) for item in output
            )
        elif kind is FunctionCallArgumentsDelta or kind in ERROR_EVENTS:
            return False
        else:
            return None  # created, in progress, a text or content part done: not decided yet
        if not self.preamble or self.written + (self.writing or 0) > self.preamble:
            return True  # a message, and no preamble (or too long for one): answering
        return None


def _adopt_timings(timings: RequestTimings, won: RequestTimings) -> None:
    """The step's timings describe the request that answered."""
    for name in ("connect_start_ns", "connect_end_ns", "encoded_ns", "sent_ns"):
        setattr(timings, name, getattr(won, name))
    timings.body_bytes, timings.incremental = won.body_bytes, won.incremental


#: Events that show a response is producing output (or has ended): the first one decides a race.
_DECISIVE: frozenset[type] = (
    frozenset({OutputItemAdded, OutputTextDelta, FunctionCallArgumentsDelta})
    | RESPONSE_END_EVENTS
    | ERROR_EVENTS
)


class _Race:
    """Two attempts of one turn; the first to produce output wins, the other's events are dropped.

    Events before a response's first output (``response.created``, ``in_progress``) are held
    per attempt and handed over only if that attempt wins, so the caller sees one response.
    """

    def __init__(self, on_event: OnEvent) -> None:
        loop = asyncio.get_running_loop()
        self.on_event = on_event
        self.winner: int | None = None
        self.held: tuple[list[Event], list[Event]] = ([], [])
        self.decided: asyncio.Future[int] = loop.create_future()
        self.clock = loop.time
        #: When the winner last handed over an event.
        self.last = 0.0

    def handler(self, index: int) -> OnEvent:
        def on_event(event: Event) -> None:
            winner = self.winner
            if winner is None:
                if type(event) not in _DECISIVE:
                    self.held[index].append(event)
                    return
                self.winner = index
                self.decided.set_result(index)
                for earlier in self.held[index]:
                    self.on_event(earlier)
                self.held[index].clear()
                self.last = self.clock()
                self.on_event(event)
            elif winner == index:
                self.last = self.clock()
                self.on_event(event)

        return on_event


class Hedge(Policy):
    """Hedged requests: a turn with no output after a delay is sent again; the first wins.

    If the first attempt has produced no output ``delay`` seconds after it went out, the same
    request goes out a second time (on another lane or connection of the client; to ``model``
    if given). Whichever produces output first wins; the other is cancelled at once, and the
    server stops generating it (over HTTP its request ends; over a WebSocket its lane sends
    ``response.cancel``). Only the winner's events reach the run, so tools are only ever
    dispatched from the winner.

    ``delay=None`` adapts it: the ``percentile`` of the time to first output seen so far (after
    ``min_samples`` turns; no hedging before). ``stall``: a response that produced output and
    then nothing for that many seconds is abandoned and the turn sent again (a replay-safe
    ``TransportError`` ``stalled``: the runner re-sends it, reusing the calls that started).
    ``budget`` caps hedges and stall re-sends together at that share of the turns this policy
    has seen (0.1: at most 10% extra requests). Counters are the policy's own, shared by every
    run of its agent.
    """

    def __init__(
        self,
        delay: float | None = None,
        *,
        percentile: float = 0.95,
        min_samples: int = 20,
        budget: float = 0.1,
        model: str | None = None,
        stall: float | None = None,
    ) -> None:
        number("delay", delay, optional=True)
        number("percentile", percentile)
        number("min_samples", min_samples, integer=True)
        number("budget", budget)
        number("stall", stall, optional=True)
        if (delay is not None and delay < 0) or (stall is not None and stall <= 0):
            raise ValueError("delay must not be negative, and stall must be positive")
        if not 0 < percentile < 1 or budget < 0:
            raise ValueError("percentile must be in (0, 1) and budget non-negative")
        self.delay = delay
        self.percentile = percentile
        self.min_samples = min_samples
        self.budget = budget
        self.model = model
        self.stall = stall
        self.requests = 0
        self.hedges = 0
        self.wins = 0
        self.stall_resends = 0
        self._delays = PercentileDelay(percentile, min_samples)

    def hedge_delay(self) -> float | None:
        """The delay before a hedge now (``None``: no hedge, too few samples)."""
        if self.delay is not None:
            return self.delay
        return self._delays.value()

    async def _unless_stalled(self, race: _Race, winner: asyncio.Future[None]) -> None:
        """Wait for the winner; give it up when it stalls longer than ``stall`` (budget
        permitting), so that the runner sends the turn again."""
        stall = self.stall
        while stall is not None and not winner.done():
            watched: set[asyncio.Future[Any]] = {winner}
            await asyncio.wait(watched, timeout=stall)
            quiet = race.clock() - race.last
            if not winner.done() and quiet >= stall:
                if self.hedges + 1 > self.budget * self.requests:
                    break  # over budget: wait it out
                self.hedges += 1
                self.stall_resends += 1
                winner.cancel()
                raise TransportError(
                    f"the response stalled for {quiet:.2f} s; sent again",
                    code="stalled",
                    replay_safe=True,
                )
        await winner

    async def send(
        self,
        state: TurnState,
        request: ModelRequest,
        on_event: OnEvent,
        skip: Collection[str],
        send: Send,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.requests += 1
        delay = self.hedge_delay()
        race = _Race(on_event)
        started = loop.time()
        first = asyncio.ensure_future(send(request, race.handler(0), skip))
        tasks = [first]
        requests = [request]
        try:
            affordable = self.hedges + 1 <= self.budget * self.requests
            if delay is not None and affordable:
                waiting: set[asyncio.Future[Any]] = {first, race.decided}
                await asyncio.wait(waiting, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                if race.winner is None and not first.done():
                    self.hedges += 1
                    hedge = dataclasses.replace(
                        request,
                        model=self.model or request.model,
                        timings=RequestTimings() if request.timings is not None else None,
                    )
                    requests.append(hedge)
                    tasks.append(asyncio.ensure_future(send(hedge, race.handler(1), skip)))
            while race.winner is None:
                pending = [task for task in tasks if not task.done()]
                if not pending:
                    break  # every attempt ended without output: the first one's outcome stands
                watched: set[asyncio.Future[Any]] = {*pending, race.decided}
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if race.winner is None:
                await first
                return
            self._delays.add(loop.time() - started)
            for index, task in enumerate(tasks):
                if index != race.winner:
                    task.cancel()  # the loser stops now
            await self._unless_stalled(race, tasks[race.winner])
            if race.winner == 1:
                self.wins += 1
                won, timings = requests[1].timings, request.timings
                if won is not None and timings is not None:
                    _adopt_timings(timings, won)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
