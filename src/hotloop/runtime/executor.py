"""The tool executor: every admitted tool call of a run goes through :class:`ToolExecutor`.

The scheduler (:mod:`hotloop.runtime.scheduler`) decides *when* a call may start; the executor
decides *how* it runs, in this order:

1. **reservation**: when a call's task is made (:meth:`ToolExecutor.reserve`), what serves it
   is set aside for it: a speculation of it (:mod:`hotloop.runtime.speculation`), a result
   kept from an identical earlier call, or an identical call running now, else a flight of
   its own in the cache that identical calls made meanwhile join; a write the model made
   after it, admitted before its first step, takes none of these away;
2. **cache**: a tool with ``cache=`` is answered by what it reserved (``hit``, ``coalesced``),
   or runs (``miss``) and gives its result to the calls that joined it; see
   :mod:`hotloop.runtime.cache`;
3. **execution**: the tool runs under its timeout; what it raises, a timeout or an exhausted
   thread pool becomes an error result for the model, never a crash of the run;
4. **invalidation**: a call that may write drops the cached results its writes overlap when it
   is admitted (:meth:`ToolExecutor.admitted`) and again when it finishes.

What the executor did is recorded on the call's :class:`~hotloop.runtime.events.ToolRecord`:
``cache`` (``hit``, ``miss``, ``coalesced``, ``speculated``) and ``invalidated`` (cached results a
write dropped).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hotloop.runtime.cache import Cache, RunResults, canonical_key
from hotloop.runtime.events import SpeculationRecord, ToolRecord
from hotloop.runtime.scheduler import overlap
from hotloop.runtime.speculation import Speculate, transition_key, transitions_of
from hotloop.runtime.tools import RunContext, Tool, ToolPoolExhausted, ToolThreads
from hotloop.wire import codec

__all__ = ["Call", "Outcome", "ToolExecutor", "error_output"]

_log = logging.getLogger("hotloop.runtime")

#: At most this many of a call's declared follow-ups are looked at (``per_call`` are kept).
_MAX_FOLLOW_UPS = 64


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's result for the model, its error (None: it succeeded) and when it ran; what
    the cache did for it and how many cached results it dropped (its record's ``cache`` and
    ``invalidated``, for a later attempt of the turn that reuses it)."""

    output: str
    error: str | None
    started_ns: int
    finished_ns: int
    cache: str | None = None
    invalidated: int = 0


@dataclass(frozen=True, slots=True)
class _Reserved:
    """What a call holds from when its task is made until it runs (see
    :meth:`ToolExecutor.reserve`): its key and reads, the speculation it claimed (None:
    none), what it found (a result, a run to join; None: nothing), its tool's ``cache`` and
    that cache's ``epoch`` then (None: the tool caches nothing), and whether it registered a
    ``flight`` in the cache at that epoch: identical calls made meanwhile join it, and it
    ends when the call does (or with the run, if the call never ran)."""

    key: str
    reads: frozenset[str]
    speculation: SpeculationRecord | None
    found: str | asyncio.Future[str | None] | None
    cache: Cache | None
    epoch: int | None
    flight: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted call, as the executor runs it: the tool, its validated ``args`` and the
    model's JSON ``arguments``, the resources it may write, its record, the context it gets
    (None: the tool takes none), what to do when it starts, and its turn."""

    tool: Tool
    args: Mapping[str, Any]
    arguments: str
    writes: frozenset[str]
    record: ToolRecord
    context: RunContext[Any] | None
    on_start: Callable[[], None]
    turn: int


def error_output(kind: str, message: str) -> str:
    """The result text the model gets for a call that failed: ``{"error": {...}}``."""
    return codec.dumps({"error": {"type": kind, "message": message}}).decode()


class ToolExecutor:
    """Runs one run's tool calls: cache, execution, invalidation (see the module docstring).

    ``now`` gives the run's clock in nanoseconds (the step records' origin).
    """

    def __init__(
        self,
        client: object,
        threads: ToolThreads | None,
        now: Callable[[], int],
        *,
        tools: Callable[[str], Tool | None] = lambda name: None,
        speculate: Speculate | None = None,
        asks: Callable[[Tool], bool] = lambda tool: tool.approval,
    ) -> None:
        self.results = RunResults(client)
        self.threads = threads
        self.now = now
        self.tools = tools
        #: Whether a call of a tool waits for approval (the agent's rule): never speculated.
        self.asks = asks
        #: Speculative prefetch (None: off); see :mod:`hotloop.runtime.speculation`.
        self.speculate = speculate
        self.speculations: list[SpeculationRecord] = []
        self._speculated = self.results.private()
        self._by_key: dict[str, SpeculationRecord] = {}
        #: What calls that started hold until they run, by record (see reserve), or what
        #: looking for it raised.
        self._reserved: dict[int, _Reserved | Exception] = {}
        #: The speculations calls claimed and have not got the result of yet, by record.
        self._serving: dict[int, SpeculationRecord] = {}
        #: The model turn each speculation was started for (by id): the one generated next.
        self._for_turn: dict[int, int] = {}
        self._transitions = transitions_of(client) if speculate and speculate.learn else None
        self._previous: str | None = None
        #: This run's transitions: the client's model learns them when the run is over.
        self._seen: list[tuple[str, tuple[str, str]]] = []
        #: The calls the model made in this turn: no use predicting them.
        self._asked: set[str] = set()
        self._in_flight = 0
        self._used = 0
        self._executed = 0
        #: Speculations started and not ended yet: their tasks, and (by id) their records.
        self._tasks: dict[asyncio.Task[None], SpeculationRecord] = {}
        self._open: set[int] = set()
        #: Predictions not started yet, by call key (see _pump).
        self._candidates: dict[str, _Candidate] = {}
        self._sequence = 0
        #: Speculations running now: key → (task, what it reads).
        self._running: dict[str, tuple[asyncio.Task[None], frozenset[str]]] = {}
        #: Writes admitted and not finished (None: a tool that may touch anything), by record.
        self._writing: dict[int, frozenset[str] | None] = {}
        #: How long each tool took, a moving average (s): what a speculation of it may save.
        self._durations: dict[str, float] = {}
        #: Speculations of calls' other predictions than their best (ids, see _affordable),
        #: and how many of them are unused.
        self._others: set[int] = set()
        self._unused_others = 0
        self._turn = 0
        #: 0: the model's response is still coming (nothing starts); 1: it is complete (each
        #: predicting call's first prediction may start); 2: the turn's tools are done too.
        self._phase = 2

    def admitted(self, tool: Tool, writes: frozenset[str], record: ToolRecord) -> None:
        """A call was admitted: if it may write, cached results it may change are dropped."""
        if tool.effects.exclusive:
            record.invalidated += self.results.invalidate(None)
        elif writes:
            record.invalidated += self.results.invalidate(writes)
        if self.speculate is None:
            return
        if tool.effects.exclusive or writes:
            changed = None if tool.effects.exclusive else writes
            self._writing[id(record)] = changed
            self._stop_running(changed)

    def withdrawn(self, record: ToolRecord) -> None:
        """An admitted call will never run (the attempt of the turn that made it failed first;
        the next attempt admits it again): a write of it holds no prediction back any more."""
        if self._writing.pop(id(record), False) is not False:
            self._pump()

    def turn_started(self, turn: int) -> None:
        """A model turn's request goes out: predictions wait until its response is complete
        (a call still to come in it may write what they read); those older than the turn
        before are dropped."""
        if self.speculate is None:
            return
        self._turn = turn
        self._phase = 0
        self._asked.clear()
        self._writing.clear()  # every tool of the turn before is done by now
        for key in [key for key, found in self._candidates.items() if found.turn < turn - 1]:
            del self._candidates[key]

    def response_done(self) -> None:
        """The turn's response is complete: every call of it is known and admitted."""
        if self.speculate is None:
            return
        self._phase = 1
        self._pump()

    def tools_done(self, calls: Sequence[ToolRecord]) -> None:
        """Every tool of the turn is done: the other predictions may start too. The transition
        model will learn the turn's ``calls`` (of the attempt that completed, in the order the
        model made them: a call made again after its turn was sent again does not follow
        itself); calls of unknown tools, or with arguments the tool refuses or cannot name
        the resources of, are left out."""
        if self.speculate is None:
            return
        if self._transitions is not None:
            for record in calls:
                tool = self.tools(record.name)
                if tool is None:
                    continue
                try:
                    tool.resources(tool.parse(record.arguments))
                except Exception:
                    continue
                key = transition_key(tool.name, record.arguments)
                if self._previous is not None:
                    self._seen.append((self._previous, (tool.name, record.arguments)))
                self._previous = key
        self._phase = 2
        self._pump()

    def close(self, at: int | None = None) -> None:
        """The run is over (``at``, on the run's clock; None: now): speculations still running
        are of no use now; the client's transition model learns what this run did."""
        if self._transitions is not None:
            for previous, call in self._seen:
                self._transitions.saw(previous, call)
            self._seen.clear()
        self._candidates.clear()
        # Stopped now, and their records say so now: the run's result must not change after
        # it was returned (the tasks end a loop step later). A speculation a call claimed and
        # did not get the result of (the call is stopped too) served nothing.
        for speculation in self._serving.values():
            speculation.used_ns = None
        self._serving.clear()
        for reserved in self._reserved.values():  # calls that never ran: nobody waits on them
            if isinstance(reserved, _Reserved) and reserved.flight:
                assert reserved.cache is not None and reserved.epoch is not None
                key, reads = reserved.key, reserved.reads
                self.results.finish(reserved.cache, key, reads, reserved.epoch, None, keep=False)
        self._reserved.clear()
        now = self.now() if at is None else at
        for task, speculation in self._tasks.items():
            if speculation.finished_ns is None:
                speculation.finished_ns = now
                speculation.error = speculation.error or "stopped: the run ended"
            task.cancel()

    def _stop_running(self, writes: frozenset[str] | None) -> None:
        """A write was admitted: speculations running on what it may change are stopped (their
        result could not be used; joined calls run by themselves)."""
        for key, (task, reads) in list(self._running.items()):
            record = self._by_key.get(key)
            if record is None:
                continue  # a call has joined it: it was asked for before this write
            if writes is None or overlap(writes, reads):
                del self._running[key]
                record.error = "stopped: a write to what it reads was admitted"
                task.cancel()

    def reserve(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        arguments: str,
        record: ToolRecord,
        turn: int,
        *,
        look: bool = True,
    ) -> None:
        """A call starts: its task was made, and it runs (see :meth:`execute`) from its first
        step, a loop step later. What serves it is set aside for it now (a speculation, a
        cached result, an identical call running, else a flight of its own that identical
        calls join), so that a write that comes after it in the model's order, admitted
        before that step (in the same burst of events), takes none of it away. A call that
        waits for approval first (``look`` false) looks up once approved, and only the
        cache's epoch is kept: it reads from before such a write all the same.

        If looking raises (a tool's ``resources``, a store's ``get``), that is raised again
        when the call runs, in its task, where the run sees it."""
        try:
            found = self._look(tool, args, arguments, record, turn, take=look)
        except Exception as exc:
            self._reserved[id(record)] = exc
            return
        if found is not None:
            self._reserved[id(record)] = found

    def _look(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        arguments: str,
        record: ToolRecord,
        turn: int,
        *,
        take: bool = True,
    ) -> _Reserved | None:
        """What serves the call (see :meth:`reserve`); with ``take`` false, only its key and
        its cache's epoch. None when neither policy is on."""
        cache = tool.cache
        if self.speculate is None and cache is None:
            return None
        reads, _ = tool.resources(args)
        key = canonical_key(tool.name, args, arguments)
        epoch = None if cache is None else self.results.store(cache).epoch
        if not take:
            return _Reserved(key, reads, None, None, cache, epoch)
        found: str | asyncio.Future[str | None] | None = None
        speculation = None
        if self.speculate is not None:
            self._asked.add(key)
            self._candidates.pop(key, None)  # asked for: nothing to predict any more
            # A speculation no call took yet (kept, or still running): this call uses it up.
            speculation = self._by_key.pop(key, None) if _speculable(tool) else None
            if speculation is not None:
                found = self._claim(speculation, key, reads, tool, turn, record)
                if found is None:
                    speculation = None
        flight = False
        if cache is not None and not isinstance(found, str):
            # A miss, or a speculation still running: the call stands in the cache's flights
            # from now on, as if it ran, and identical calls join it (single flight).
            kind, in_cache, _ = self.results.lookup(cache, key, reads)
            flight = kind == "miss"
            if found is None:
                found = in_cache
        return _Reserved(key, reads, speculation, found, cache, epoch, flight)

    def execute(self, call: Call) -> Awaitable[Outcome]:
        """Run one admitted call (or answer it from the cache or a speculation): an awaitable
        of its outcome."""
        reserved = self._reserved.pop(id(call.record), None)
        if isinstance(reserved, Exception):
            raise reserved
        if reserved is None:
            reserved = self._look(call.tool, call.args, call.arguments, call.record, call.turn)
        if reserved is None:
            return self._run(call)
        if self.speculate is not None:
            return self._speculating(call, reserved)
        return self._cached(call, reserved)

    async def _speculating(self, call: Call, reserved: _Reserved) -> Outcome:
        """A call while speculation is on: take the speculation it claimed if there is one,
        then predict what follows the call."""
        tool, speculation = call.tool, reserved.speculation
        outcome: Outcome | None = None
        if speculation is not None:
            outcome = await self._taken(speculation, reserved, call)
            del self._serving[id(call.record)]
        if outcome is not None:
            assert speculation is not None
            call.record.cache = "speculated"
            if tool.cache is not None:  # cached as if it had run: a repeat is a hit
                ended = speculation.finished_ns
                age = 0.0 if ended is None else max(outcome.finished_ns - ended, 0) / 1e9
                assert reserved.epoch is not None
                self.results.keep(
                    tool.cache, reserved.key, reserved.reads, outcome.output, age, reserved.epoch
                )
            self._used += 1
            if id(speculation) in self._others:
                self._unused_others -= 1
        elif tool.cache is None:
            outcome = await self._run(call)
        else:
            if speculation is not None:  # it failed: the call runs in its flight, if it has one
                reserved = replace(reserved, speculation=None, found=None)
            outcome = await self._cached(call, reserved)
        if outcome.error is None:
            self._predict(tool, call.args, call.arguments, outcome.output)
        return outcome

    def _claim(
        self,
        speculation: SpeculationRecord,
        key: str,
        reads: frozenset[str],
        tool: Tool,
        turn: int,
        record: ToolRecord,
    ) -> str | asyncio.Future[str | None] | None:
        """Claim ``speculation`` for the call ``record`` of ``turn``, which it serves alone (a
        twin call in the same turn runs by itself): its result, or its run to join; None if
        there is nothing valid to take (it stays unused), or it is too old for the call (see
        :meth:`_fresh`)."""
        if not self._fresh(speculation, tool, turn):  # nobody may take it any more
            self.results.store(self._speculated).drop(key)
            running = self._running.pop(key, None)
            if running is not None:
                speculation.error = "stopped: the turn it was for is over"
                running[0].cancel()
            return None
        taken = self.results.take(self._speculated, key, reads)
        if taken is None:
            self._by_key[key] = speculation
            return None
        speculation.used_ns = record.args_complete_ns  # claimed now, even while it runs
        self._serving[id(record)] = speculation
        return taken

    async def _taken(
        self, speculation: SpeculationRecord, reserved: _Reserved, call: Call
    ) -> Outcome | None:
        """The outcome of the speculation ``call`` claimed; None if it failed (the call runs
        itself)."""
        taken = reserved.found
        assert taken is not None
        if isinstance(taken, asyncio.Future):
            started = self.now()
            joined = await self._join(taken, reserved)
            if joined is None:
                speculation.used_ns = None
                return None
            return Outcome(joined, None, started, self.now())
        now = self.now()
        return Outcome(taken, None, now, now)

    async def _join(self, running: asyncio.Future[str | None], reserved: _Reserved) -> str | None:
        """The result of a speculation still running, which a call took. The identical calls
        that joined the call's flight (see :meth:`_look`) get it too; if the speculation
        fails, the flight stays open for the call to run in."""
        flight = reserved.flight
        try:
            output = await asyncio.shield(running)
        except BaseException:
            if flight:
                self._land(reserved, None)
            raise
        if output is not None and flight:
            self._land(reserved, output)
        return output

    def _land(self, reserved: _Reserved, output: str | None) -> None:
        """End the flight ``reserved`` registered with ``output`` (None: none), keeping
        nothing: the calls that joined it get it."""
        assert reserved.cache is not None and reserved.epoch is not None
        key, reads = reserved.key, reserved.reads
        self.results.finish(reserved.cache, key, reads, reserved.epoch, output, keep=False)

    def _fresh(self, speculation: SpeculationRecord, tool: Tool, turn: int) -> bool:
        """Whether ``speculation`` may answer a call of ``tool`` in ``turn``. A write of this
        run drops what it overlaps; what others change outside the run is what limits its
        age. A pure tool's result does not age. A cached tool's is as good as a cached result
        for ``ttl`` seconds after it came. Any other tool's answers only the turn it was
        started for (the model turn generated next): later, the call runs again, as it would
        without speculation."""
        if tool.effects.pure:
            return True
        if tool.cache is not None:
            ttl, finished = tool.cache.ttl, speculation.finished_ns
            return ttl is None or finished is None or self.now() - finished <= ttl * 1e9
        return turn <= self._for_turn[id(speculation)]

    def _predict(self, tool: Tool, args: Mapping[str, Any], arguments: str, output: str) -> None:
        speculate = self.speculate
        assert speculate is not None
        declared: list[tuple[str, str, Mapping[str, Any] | str]] = []
        if speculate.follow_ups and tool.follows is not None:
            try:
                for name, follow_args in tool.follows(args, output):
                    if not isinstance(name, str) or not isinstance(follow_args, Mapping | str):
                        raise TypeError(
                            "a follow-up is a (tool name, arguments) pair, arguments a mapping "
                            f"or a JSON string, not ({name!r}, {follow_args!r})"
                        )
                    declared.append(("follows", name, follow_args))
                    if len(declared) == _MAX_FOLLOW_UPS:
                        break
            except Exception as exc:
                _log.warning(
                    "the follow-ups of %s raised; those after it are dropped",
                    tool.name,
                    exc_info=exc,
                )
        learned: list[tuple[str, str, Mapping[str, Any] | str]] = []
        if self._transitions is not None:
            for name, seen in self._transitions.after(transition_key(tool.name, arguments)):
                learned.append(("learned", name, seen))
        # Each source's best predictions first: the slowest tools (what a prefetch can save
        # most of), then the order given; ``per_call`` of each.
        predictions = [
            *self._best(declared)[: speculate.per_call],
            *self._best(learned)[: speculate.per_call],
        ]
        position = 0
        for source, name, predicted in predictions:
            if self._candidate(source, name, predicted, position):
                position += 1
        self._pump()

    def _best(
        self, predictions: list[tuple[str, str, Mapping[str, Any] | str]]
    ) -> list[tuple[str, str, Mapping[str, Any] | str]]:
        """``predictions`` slowest tool first (by this run's moving averages), else in order."""
        order = sorted(
            range(len(predictions)),
            key=lambda index: (-self._durations.get(predictions[index][1], 0.0), index),
        )
        return [predictions[index] for index in order]

    def _candidate(
        self, source: str, name: str, given: Mapping[str, Any] | str, position: int
    ) -> bool:
        """Keep a prediction as a candidate (see :meth:`_pump`), if it may run at all."""
        tool = self.tools(name)
        if tool is None or not _speculable(tool) or self.asks(tool):
            return False
        try:
            arguments = given if isinstance(given, str) else codec.dumps(dict(given)).decode()
            args = tool.parse(arguments)
            reads, writes = tool.resources(args)
        except Exception:
            return False  # a prediction the tool would refuse (or cannot key): nothing to run
        if writes:
            return False
        key = canonical_key(tool.name, args, arguments)
        if key in self._asked:
            return False  # the model made this call in this turn already
        self._sequence += 1
        found = self._candidates.pop(key, None)
        rank = 0 if source == "follows" else 1
        if found is not None:
            rank = min(rank, found.rank)
            position = min(position, found.position)
        self._candidates[key] = _Candidate(
            source if rank == 0 else "learned",
            tool,
            args,
            arguments,
            reads,
            self._turn,
            rank,
            position,
            self._sequence,
        )
        return True

    def _pump(self) -> None:
        """Start the candidates worth most while the budget allows: predictions of the latest
        turn first, declared follow-ups before learned ones, the slowest tools (what a
        speculation can save) first, then each call's predictions in its order. None starts
        while the model's response is still coming (a call still to come may write what it
        reads), nor while a write admitted to what it reads has not finished; until the
        turn's tools are done, only each predicting call's best prediction starts, so that
        one call's many predictions cannot take the budget from the next one's best."""
        if self._phase == 0 or not self._candidates:
            return
        ordered = sorted(
            self._candidates.items(),
            key=lambda item: (
                -item[1].turn,
                item[1].rank,
                -self._durations.get(item[1].tool.name, 0.0),
                item[1].position,
                item[1].sequence,
            ),
        )
        for key, found in ordered:
            if not self._affordable(found.position == 0):
                continue
            if found.position > 0 and self._phase < 2:
                continue
            if any(
                writes is None or overlap(writes, found.reads) for writes in self._writing.values()
            ):
                continue
            del self._candidates[key]
            self._launch(key, found)

    def _affordable(self, best: bool) -> bool:
        """Whether one more speculation fits the budget: were it wasted too, the unused ones
        would be at most ``max_waste`` of the calls made (or two, so that speculation can
        start before many calls were made). The unused speculations of calls' other
        predictions than their ``best`` (the slowest tool, then the first) may take only a
        third of that budget (or one): the rest is kept for each call's best prediction, the
        one likeliest to save the most."""
        speculate = self.speculate
        assert speculate is not None
        if self._in_flight >= speculate.max_in_flight:
            return False
        unused = len(self.speculations) - self._used
        # The calls made: run, or served by a speculation (what a run without it would run).
        allowed = speculate.max_waste * (self._executed + self._used)
        return unused + 1 <= max(allowed, 2) and (
            best or self._unused_others + 1 <= max(allowed / 3, 1)
        )

    def _launch(self, key: str, found: _Candidate) -> None:
        tool, reads = found.tool, found.reads
        if tool.cache is not None:
            try:
                if self.results.peek(tool.cache, key, reads) is not None:
                    return  # the cache answers it already, or a call running now will
            except Exception as exc:  # (a prefetch is optional work: the run goes on)
                _log.warning(
                    "the cache of %s raised; the speculation of it is not started",
                    tool.name,
                    exc_info=exc,
                )
                return
        kind, _, epoch = self.results.lookup(self._speculated, key, reads)
        if kind != "miss":
            return  # speculated already, and still valid (kept, or running)
        speculation = SpeculationRecord(tool.name, found.arguments, found.source, self.now())
        self.speculations.append(speculation)
        if found.position > 0:
            self._others.add(id(speculation))
            self._unused_others += 1
        self._by_key[key] = speculation
        self._for_turn[id(speculation)] = self._turn + 1
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._prefetch(tool, found.args, reads, key, epoch, speculation)
        )
        self._running[key] = (task, reads)
        self._tasks[task] = speculation
        self._open.add(id(speculation))
        # A task cancelled before its first step never runs its coroutine (nor its
        # ``finally``): its flight must end all the same, or a call would wait on it forever.
        task.add_done_callback(functools.partial(self._done, key, reads, epoch, speculation))

    async def _prefetch(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        reads: frozenset[str],
        key: str,
        epoch: int,
        speculation: SpeculationRecord,
    ) -> None:
        output: str | None = None
        try:
            record = ToolRecord("speculation", tool.name, speculation.arguments, self.now())
            outcome = await self._run(
                Call(tool, args, speculation.arguments, frozenset(), record, None, _nothing, 0)
            )
            speculation.error = outcome.error
            if outcome.error is None:
                output = outcome.output
        finally:
            self._ended(key, reads, epoch, speculation, output, asyncio.current_task())

    def _done(
        self,
        key: str,
        reads: frozenset[str],
        epoch: int,
        speculation: SpeculationRecord,
        task: asyncio.Task[None],
    ) -> None:
        del self._tasks[task]
        self._ended(key, reads, epoch, speculation, None, task)  # if it never ran

    def _ended(
        self,
        key: str,
        reads: frozenset[str],
        epoch: int,
        speculation: SpeculationRecord,
        output: str | None,
        task: asyncio.Task[Any] | None,
    ) -> None:
        """A speculation ended: its slot and its flight are free (with ``output``: None if it
        failed or never ran); once per speculation."""
        if id(speculation) not in self._open:
            return
        self._open.discard(id(speculation))
        if speculation.finished_ns is None:
            speculation.finished_ns = self.now()
        self._in_flight -= 1
        running = self._running.get(key)
        if running is not None and running[0] is task:
            del self._running[key]
        # Kept only for a call still to take it: not once a call that joined it took it, nor
        # once it is too old for any call (see _take).
        keep = self._by_key.get(key) is speculation
        self.results.finish(self._speculated, key, reads, epoch, output, keep=keep)
        self._pump()

    async def _cached(self, call: Call, reserved: _Reserved) -> Outcome:
        """A call of a cached tool: answered by what it reserved, or run in the flight it
        registered; one that reserved neither (it waited for approval) looks up now."""
        record, cache = call.record, call.tool.cache
        assert cache is not None and reserved.epoch is not None
        key, reads, found, epoch = reserved.key, reserved.reads, reserved.found, reserved.epoch
        if found is None and not reserved.flight:
            if self.results.changed(cache, epoch, reads):
                # A write to what it reads was admitted after the call was set to start (it
                # comes later in the model's order): the call reads from before that write,
                # so what it gets is neither shared nor kept.
                record.cache = "miss"
                return await self._run(call)
            _, found, epoch = self.results.lookup(cache, key, reads)
        if isinstance(found, str):
            record.cache = "hit"
            now = self.now()
            return Outcome(found, None, now, now)
        if found is not None:  # a flight to join
            started = self.now()
            output = await asyncio.shield(found)
            if output is not None:
                record.cache = "coalesced"
                return Outcome(output, None, started, self.now())
            # The call it joined failed: this one runs by itself (and is not shared).
            return await self._run(call)
        record.cache = "miss"
        stored: str | None = None
        try:
            outcome = await self._run(call)
            if outcome.error is None:
                stored = outcome.output
            return outcome
        finally:
            self.results.finish(cache, key, reads, epoch, stored)

    async def _run(self, call: Call) -> Outcome:
        tool, args, record, writes = call.tool, call.args, call.record, call.writes
        started = self.now()
        record.started_ns = started
        call.on_start()
        if record.call_id != "speculation":
            self._executed += 1
        error: str | None = None
        try:
            async with asyncio.timeout(tool.timeout):
                output = await tool.invoke(args, self.threads, call.context)
        except ToolPoolExhausted as exc:
            error = str(exc)
            output = error_output("tool_pool_exhausted", error)
        except TimeoutError:
            error = f"{tool.name} timed out after {tool.timeout} s"
            output = error_output("timeout", error)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the run (or a stopped speculation) cancelled it
            # The tool raised it itself (an await of something cancelled elsewhere): its
            # failure, not the run's cancellation.
            error = f"{type(exc).__name__}: {exc}"
            output = error_output("tool_error", error)
            _log.warning(
                "tool %s raised CancelledError without being cancelled (call %s, turn %d); "
                "the model gets the error",
                tool.name,
                record.call_id,
                call.turn,
                exc_info=exc,
            )
        except Exception as exc:  # a tool's failure is a result for the model, never a crash
            error = f"{type(exc).__name__}: {exc}"
            output = error_output("tool_error", error)
            _log.warning(
                "tool %s raised (call %s, turn %d); the model gets the error",
                tool.name,
                record.call_id,
                call.turn,
                exc_info=exc,
            )
        finally:
            # A write (or a tool that may touch anything) changed what it wrote by now, even
            # if it failed: reads cached since it was admitted may predate its effect.
            if tool.effects.exclusive:
                record.invalidated += self.results.invalidate(None)
            elif writes:
                record.invalidated += self.results.invalidate(writes)
        finished = self.now()
        if self.speculate is not None:
            took = (finished - started) / 1e9
            known = self._durations.get(tool.name)
            self._durations[tool.name] = took if known is None else (known + took) / 2
            if self._writing.pop(id(record), False) is not False:
                self._pump()  # a write finished: what waited on it may start
        return Outcome(output, error, started, finished)


def _nothing() -> None:
    return None


@dataclass(slots=True)
class _Candidate:
    """A predicted call not started yet: from which source, the latest turn that predicted
    it, its source's rank (0: declared follow-ups, 1: learned), its place among its
    predicting call's predictions and when it was predicted."""

    source: str
    tool: Tool
    args: Mapping[str, Any]
    arguments: str
    reads: frozenset[str]
    turn: int
    rank: int
    position: int
    sequence: int


def _speculable(tool: Tool) -> bool:
    """Whether calls of ``tool`` may run before the model asks: reads only, nothing else."""
    effects = tool.effects
    if effects.writes or tool.takes_context or tool.approval:
        return False
    # Not an idempotent tool that declared nothing: it may write anything, and running it
    # twice being harmless does not make running it unasked so.
    return effects.pure or not effects.exclusive
