"""Hedging and failover across the replicas of one model, inside the gateway.

A client that cannot hedge (any SDK) still gets it here: :class:`ReplicaHedging` races the
attempts of one turn on different replicas and hands the gateway the events of the first one
to produce output.

* The first attempt goes out at once. If it has produced no output ``delay`` seconds later
  (a fixed delay, or adaptive: the ``percentile`` of the times to first output this model
  showed so far, after ``min_samples`` of them), the same turn goes out again, to another
  replica. The first to produce output wins; the other is cancelled at once, which stops its
  generation (the simulated engine stops, an upstream's HTTP stream is closed).
* Failover: an attempt that fails before producing any output (a 429, a 500, a refused or
  timed-out upstream) is replaced at once by an attempt on another replica, while the turn
  has attempts left (``max_attempts``); a failure after output was delivered stands.
* Stalls: with ``stall``, a turn whose output began and then went quiet that long is generated
  again on another replica. The client was sent part of the output already, so the new
  attempt may only take over once it has produced exactly that output (text, item kinds and
  names; never ids, which differ between replicas) — a deterministic model does, a sampled
  one usually will not, and then the stalled attempt goes on as if nothing happened.
* ``budget`` caps hedges (stall hedges included) at that share of the turns (0.1: at most
  10% extra requests); failovers are not counted against it, since the failed attempt
  produced nothing.

Only the winner ever writes to the turn's :class:`~hotloop.protocol.builder.ResponseBuilder`:
each attempt writes through a :class:`StagedBuilder`, which holds what the attempt records
before its first output (usage, warnings) and decides the race at its first output call. The
client sees one response, exactly as if one replica had answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hotloop.checks import number
from hotloop.errors import APIError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import Generation
from hotloop.transport.base import PercentileDelay
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["HedgeSettings", "ReplicaHedging", "StagedBuilder"]

#: Errors before output that another replica may not repeat: worth a failover.
_FAILOVER_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """How the gateway hedges a model's turns across its replicas.

    ``delay``: seconds without output before the turn goes to another replica (``None``:
    adaptive, the ``percentile`` of the times to first output seen so far, once
    ``min_samples`` were seen; no hedge before). ``budget``: hedges as a share of turns.
    ``max_attempts``: attempts per turn in all (the first, a hedge, failovers).
    ``stall``: seconds of silence after the output began before the turn is generated again
    on another replica, which takes over once it has reproduced the output sent so far
    (None: never).
    """

    delay: float | None = None
    percentile: float = 0.95
    min_samples: int = 20
    budget: float = 0.1
    max_attempts: int = 3
    stall: float | None = None

    def __post_init__(self) -> None:
        number("delay", self.delay, optional=True)
        number("percentile", self.percentile)
        number("min_samples", self.min_samples, integer=True)
        number("budget", self.budget)
        number("max_attempts", self.max_attempts, integer=True)
        number("stall", self.stall, optional=True)
        if self.delay is not None and self.delay < 0:
            raise ValueError("the hedge delay must not be negative")
        if self.stall is not None and not self.stall > 0:
            raise ValueError("the stall limit must be positive")
        if not 0 < self.percentile < 1:
            raise ValueError("the hedge percentile must be between 0 and 1")
        if self.budget < 0 or self.min_samples < 1 or self.max_attempts < 1:
            raise ValueError("budget must be >= 0, min_samples and max_attempts >= 1")


class _Race:
    """The attempts of one turn; ``winner`` is the one whose output the client gets.

    ``sent`` is the winner's output so far as a transcript (see :class:`StagedBuilder`): what
    a stall hedge must reproduce before it may take over.
    """

    __slots__ = ("out", "sent", "sent_length", "tasks", "winner")

    def __init__(self, out: ResponseBuilder) -> None:
        self.out = out
        self.winner: int | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.sent: list[str] = []
        self.sent_length = 0

    def win(self, index: int) -> None:
        self.winner = index
        for other, task in enumerate(self.tasks):
            if other != index:
                task.cancel()  # the loser stops now

    def record(self, token: str) -> None:
        self.sent.append(token)
        self.sent_length += len(token)


class _Lost(Exception):
    """An attempt that lost the race tried to write (it is being cancelled)."""


#: Marks in a transcript: what is not output text. Text never holds a NUL character.
_OPEN_MESSAGE = "\x00M"
_OPEN_REASONING = "\x00R"
_CLOSE = "\x00X"

#: One write of an attempt: its transcript token, whether that is text (a delta, which may be
#: split anywhere), and how to apply it to a builder.
_Write = tuple[str, bool, Callable[[ResponseBuilder], tuple[Event, ...]]]


class StagedBuilder(ResponseBuilder):
    """The builder one attempt writes to: nothing reaches the turn's builder until the
    attempt's first output, which decides the race; from then on every call passes through.

    Usage, warnings and a cut-off recorded before output are held and replayed on a win.
    An attempt that lost raises at its next write (it is cancelled at once anyway).

    A **stall hedge** (``replacing=True``) starts after the winner's output began, so it may
    only take over a response whose output it reproduces exactly: each write extends its
    transcript (item kinds and names, text, closes; never ids, which differ between
    replicas), which must stay a prefix of what the client was sent. Once it covers all of
    it, it takes over: the rest of its output so far goes out, and the stalled attempt is
    cancelled. A transcript that differs makes it lose.
    """

    __slots__ = ("_held", "_index", "_race", "_replacing", "_writes", "_written")

    def __init__(self, race: _Race, index: int, *, replacing: bool = False) -> None:
        super().__init__(race.out.response)
        self._race = race
        self._index = index
        self._held: list[Callable[[ResponseBuilder], object]] = []
        self._replacing = replacing
        self._writes: list[_Write] = []
        self._written = 0

    def _write(
        self, token: str, text: bool, apply: Callable[[ResponseBuilder], tuple[Event, ...]]
    ) -> tuple[Event, ...]:
        race = self._race
        if self._replacing:
            return self._catch_up(token, text, apply)
        if race.winner is None:
            self._win()
        elif race.winner != self._index:
            raise _Lost
        race.record(token)
        return apply(race.out)

    def _win(self) -> None:
        race = self._race
        race.win(self._index)
        for replay in self._held:
            replay(race.out)
        self._held.clear()

    def _catch_up(
        self, token: str, text: bool, apply: Callable[[ResponseBuilder], tuple[Event, ...]]
    ) -> tuple[Event, ...]:
        race = self._race
        if race.winner == self._index or race.winner is None:
            raise _Lost  # cannot happen: a stall hedge starts after a winner
        self._writes.append((token, text, apply))
        self._written += len(token)
        sent = "".join(race.sent)
        mine = "".join(write[0] for write in self._writes)
        if self._written < race.sent_length:
            if not sent.startswith(mine):
                raise _Lost  # it says something else: it must never take over
            return ()
        if not mine.startswith(sent):
            raise _Lost
        # It reproduced everything the client was sent: it takes over from here.
        events: list[Event] = []
        offset = 0
        boundary = race.sent_length
        self._replacing = False
        self._win()
        for token_, is_text, apply_ in self._writes:
            end = offset + len(token_)
            if end > boundary:
                if offset < boundary:
                    if not is_text:
                        raise _Lost  # a mark across the boundary cannot be split
                    rest = token_[boundary - offset :]
                    race.record(rest)
                    events.extend(race.out.delta(rest))
                else:
                    race.record(token_)
                    events.extend(apply_(race.out))
            offset = end
        self._writes.clear()
        return tuple(events)

    def claim(self) -> None:
        """Win the race without output (an attempt that ended with none)."""
        if self._race.winner is None:
            self._win()
        elif self._race.winner != self._index:
            raise _Lost

    def _hold(self, replay: Callable[[ResponseBuilder], object]) -> None:
        if self._race.winner == self._index and not self._replacing:
            replay(self._race.out)
        else:
            self._held.append(replay)

    # -- state (the turn's) --------------------------------------------------------------

    @property
    def response(self) -> ResponseObject:
        return self._race.out.response

    @property
    def output(self) -> tuple[Item, ...]:
        return self._race.out.output if self._race.winner == self._index else ()

    @property
    def usage(self) -> Usage | None:
        return self._race.out.usage

    @property
    def item_open(self) -> bool:
        return self._race.winner == self._index and self._race.out.item_open

    # -- held until the attempt wins -----------------------------------------------------

    def set_usage(self, usage: Usage) -> None:
        self._hold(lambda out: out.set_usage(usage))

    def warn(self, message: str) -> None:
        self._hold(lambda out: out.warn(message))

    def set_incomplete(self, reason: str) -> None:
        self._hold(lambda out: out.set_incomplete(reason))

    # -- output: the first call decides the race -----------------------------------------

    def open_message(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        return self._write(_OPEN_MESSAGE, False, lambda out: out.open_message(item_id=item_id))

    def open_text(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        return (*self.open_message(item_id=item_id), *self.open_part("output_text"))

    def open_reasoning(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        return self._write(_OPEN_REASONING, False, lambda out: out.open_reasoning(item_id=item_id))

    def open_call(
        self, name: str, *, call_id: str | None = None, item_id: str | None = None
    ) -> tuple[Event, ...]:
        return self._write(
            f"\x00C{name}\x00",
            False,
            lambda out: out.open_call(name, call_id=call_id, item_id=item_id),
        )

    def open_part(self, kind: str) -> tuple[Event, ...]:
        return self._write(f"\x00P{kind}\x00", False, lambda out: out.open_part(kind))

    def delta(self, text: str) -> tuple[Event, ...]:
        return self._write(text, True, lambda out: out.delta(text))

    def close_item(self, *, encrypted_content: str | None = None) -> tuple[Event, ...]:
        return self._write(
            f"{_CLOSE}{encrypted_content or ''}\x00",
            False,
            lambda out: out.close_item(encrypted_content=encrypted_content),
        )

    def add_item(self, item: Item) -> tuple[Event, ...]:
        fields = {key: value for key, value in item.to_dict().items() if key not in _IDS}
        return self._write(
            f"\x00A{codec.dumps(fields).decode()}\x00", False, lambda out: out.add_item(item)
        )


#: Fields of a whole item that name it rather than say what it holds.
_IDS = frozenset({"id", "call_id"})


#: What an attempt is: the turn generated on replica ``index`` into ``out``.
Attempt = Callable[[int, ResponseBuilder], Generation]

_END: Any = object()


class ReplicaHedging:
    """Races the attempts of one model's turns across its replicas; see the module docstring.

    One per model: its counters and the adaptive delay's samples are that model's.
    ``requests`` counts turns, ``hedges`` hedged attempts sent (stall hedges included),
    ``wins`` first-output hedges that won, ``stall_hedges`` and ``stall_wins`` the stall
    hedges sent and those that took over, ``failovers`` attempts sent after a failure before
    output.
    """

    def __init__(self, settings: HedgeSettings, replicas: int) -> None:
        self.settings = settings
        self.replicas = replicas
        self.requests = 0
        self.hedges = 0
        self.wins = 0
        self.failovers = 0
        self.stall_hedges = 0
        self.stall_wins = 0
        self._delays = PercentileDelay(settings.percentile, settings.min_samples)

    def delay(self) -> float | None:
        """The delay before a hedge now (``None``: no hedge yet, too few samples)."""
        settings = self.settings
        if settings.delay is not None:
            return settings.delay
        return self._delays.value()

    async def generate(self, attempt: Attempt, out: ResponseBuilder) -> Generation:
        """The turn's events, from whichever attempt produces output first."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        self.requests += 1
        race = _Race(out)
        inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        started = loop.time()
        live: set[int] = set()
        hedged: set[int] = set()

        async def pump(index: int, replacing: bool) -> None:
            staged = StagedBuilder(race, index, replacing=replacing)
            try:
                async for events in attempt(index, staged):
                    if events:
                        inbox.put_nowait((index, events))
                if race.winner is None:
                    staged.claim()  # a turn with no output at all: this attempt answered it
            except _Lost:
                return
            except Exception as exc:
                inbox.put_nowait((index, exc))
                return
            inbox.put_nowait((index, _END))

        def launch(*, replacing: bool = False) -> int:
            index = len(race.tasks)
            live.add(index)
            race.tasks.append(asyncio.create_task(pump(index, replacing)))
            return index

        launch()
        delay = self.delay()
        hedge_at = started + delay if delay is not None and self.replicas > 1 else None
        stall = settings.stall if self.replicas > 1 else None
        #: When the winner last handed over events; the stall hedge running (at most one).
        last = started
        replacement: int | None = None
        current: int | None = None
        try:
            while True:
                timeout = None
                if race.winner is None:
                    if hedge_at is not None:
                        timeout = max(0.0, hedge_at - loop.time())
                elif stall is not None and replacement is None:
                    timeout = max(0.0, last + stall - loop.time())
                try:
                    async with asyncio.timeout(timeout):
                        index, item = await inbox.get()
                except TimeoutError:
                    if race.winner is None:
                        hedge_at = None
                        if self._affordable() and len(race.tasks) < settings.max_attempts:
                            self.hedges += 1
                            hedged.add(launch())
                    elif self._affordable() and len(race.tasks) < settings.max_attempts:
                        # The winner went quiet mid-output: another replica generates the
                        # turn again and takes over if it reproduces what was sent.
                        self.hedges += 1
                        self.stall_hedges += 1
                        replacement = launch(replacing=True)
                    else:
                        stall = None  # no budget or attempts left: wait it out
                    continue
                winner = race.winner
                if winner is not None and index != winner:
                    continue  # a loser's failure: it never wrote, and it is cancelled
                if current != winner:
                    if current is None:
                        self._delays.add(loop.time() - started)
                        self.wins += index in hedged
                    else:
                        self.stall_wins += 1  # a stall hedge took over
                    current = winner
                if item is _END:
                    return
                if isinstance(item, Exception):
                    live.discard(index)
                    if winner is None:
                        # Nothing of this attempt reached the client: another may answer.
                        if self._fails_over(item) and len(race.tasks) < settings.max_attempts:
                            self.failovers += 1
                            launch()
                            continue
                        if live:
                            continue
                    raise item
                last = loop.time()
                yield item
        finally:
            for task in race.tasks:
                task.cancel()
            for task in race.tasks:
                with contextlib.suppress(BaseException):
                    await task

    def _affordable(self) -> bool:
        return self.hedges + 1 <= self.settings.budget * self.requests

    @staticmethod
    def _fails_over(error: Exception) -> bool:
        return isinstance(error, APIError) and error.status in _FAILOVER_STATUSES


def hedging_for(
    settings: HedgeSettings | None, replicas: Sequence[object]
) -> ReplicaHedging | None:
    """A :class:`ReplicaHedging` for a model with these replicas (None: no hedging)."""
    if settings is None or len(replicas) < 2:
        return None
    return ReplicaHedging(settings, len(replicas))
