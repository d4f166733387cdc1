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
import statistics
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotloop.errors import HotloopError
from hotloop.transport.base import ModelRequest, OnEvent, RequestTimings, TransportError
from hotloop.wire.events import (
    ERROR_EVENTS,
    RESPONSE_END_EVENTS,
    Event,
    FunctionCallArgumentsDelta,
    OutputItemAdded,
    OutputTextDelta,
)

if TYPE_CHECKING:
    from hotloop.runtime.agent import Agent

__all__ = ["Fallback", "Hedge", "Policy", "RetryOnTimeout", "RouteTurns", "Send", "TurnState"]


@dataclass(slots=True)
class TurnState:
    """What a policy knows when it decides about one attempt of a turn.

    ``turn`` and ``attempt`` count from 1. ``failure`` is why the previous attempt failed
    (``after_failure`` only) and ``delivered`` whether it had delivered events. ``memo`` is
    this policy's own dict for this run.
    """

    agent: Agent
    turn: int
    attempt: int
    request: ModelRequest
    failure: HotloopError | None = None
    delivered: bool = False
    memo: dict[str, Any] = field(default_factory=dict)


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
    a fresh lane or socket: the transport retires the one that stalled), and calls it had
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
    the whole history goes. A model's first turn continues the run's last response. The step
    record's ``request_bytes``, ``incremental`` and ``usage`` show what a switch cost.
    ``state.turn`` and ``state.request`` (its history, and which items are new) are what a
    choice usually rests on.
    """

    def __init__(self, choose: Callable[[TurnState], str | None]) -> None:
        self.choose = choose

    def before_request(self, state: TurnState) -> ModelRequest | None:
        if state.attempt > 1:
            return None  # a re-send keeps the model its attempt chose (or a fallback's)
        model = self.choose(state)
        if model is None or model == state.request.model:
            return None
        return dataclasses.replace(state.request, model=model)


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
    if given). Whichever produces output first wins; the other is cancelled at once (over HTTP
    that ends its request, and the server stops generating). Only the winner's events reach the
    run, so tools are only ever dispatched from the winner.

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
        self._samples: list[float] = []

    def hedge_delay(self) -> float | None:
        """The delay before a hedge now (``None``: no hedge, too few samples)."""
        if self.delay is not None:
            return self.delay
        if len(self._samples) < self.min_samples:
            return None
        cuts = statistics.quantiles(self._samples[-1000:], n=100, method="inclusive")
        return cuts[min(98, max(0, round(self.percentile * 100) - 1))]

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
            self._samples.append(loop.time() - started)
            for index, task in enumerate(tasks):
                if index != race.winner:
                    task.cancel()  # the loser stops now
            await self._unless_stalled(race, tasks[race.winner])
            if race.winner == 1:
                self.wins += 1
                won, timings = requests[1].timings, request.timings
                if won is not None and timings is not None:
                    # The step's timings describe the request that answered.
                    for name in ("connect_start_ns", "connect_end_ns", "encoded_ns", "sent_ns"):
                        setattr(timings, name, getattr(won, name))
                    timings.body_bytes, timings.incremental = won.body_bytes, won.incremental
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
