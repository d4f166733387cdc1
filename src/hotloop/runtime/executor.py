"""The tool executor: every admitted tool call of a run goes through :class:`ToolExecutor`.

The scheduler (:mod:`hotloop.runtime.scheduler`) decides *when* a call may start; the executor
decides *how* it runs, in this order:

1. **cache**: a tool with ``cache=`` may be answered by a result kept from an identical earlier
   call (``hit``), or join an identical call running now (``coalesced``); see
   :mod:`hotloop.runtime.cache`;
2. **execution**: the tool runs under its timeout; what it raises, a timeout or an exhausted
   thread pool becomes an error result for the model, never a crash of the run;
3. **invalidation**: a call that may write drops the cached results its writes overlap when it
   is admitted (:meth:`ToolExecutor.admitted`) and again when it finishes.

What the executor did is recorded on the call's :class:`~hotloop.runtime.events.ToolRecord`:
``cache`` (``hit``, ``miss``, ``coalesced``) and ``invalidated`` (cached results a write
dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hotloop.errors import HotloopError
from hotloop.runtime.cache import Cache, MemoryStore, RunResults, canonical_key
from hotloop.runtime.events import SpeculationRecord, ToolRecord
from hotloop.runtime.speculation import Speculate, transitions_of
from hotloop.runtime.tools import RunContext, Tool, ToolPoolExhausted, ToolThreads
from hotloop.wire import codec

__all__ = ["Call", "Outcome", "ToolExecutor", "error_output"]

_log = logging.getLogger("hotloop.runtime")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's result for the model, its error (None: it succeeded) and when it ran."""

    output: str
    error: str | None
    started_ns: int
    finished_ns: int


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
    ) -> None:
        self.results = RunResults(client)
        self.threads = threads
        self.now = now
        self.tools = tools
        #: Speculative prefetch (None: off); see :mod:`hotloop.runtime.speculation`.
        self.speculate = speculate
        self.speculations: list[SpeculationRecord] = []
        self._speculated = Cache(store=MemoryStore())
        self._by_key: dict[str, SpeculationRecord] = {}
        self._transitions = transitions_of(client) if speculate and speculate.learn else None
        self._previous: str | None = None
        self._in_flight = 0
        self._used = 0
        self._executed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def admitted(self, tool: Tool, writes: frozenset[str], record: ToolRecord) -> None:
        """A call was admitted: if it may write, cached results it may change are dropped."""
        if tool.effects.exclusive:
            record.invalidated += self.results.invalidate(None)
        elif writes:
            record.invalidated += self.results.invalidate(writes)
        if self._transitions is not None:
            key = _raw_key(tool.name, record.arguments)
            if self._previous is not None:
                self._transitions.saw(self._previous, (tool.name, record.arguments))
            self._previous = key

    def close(self) -> None:
        """The run is over: speculations still running are of no use now."""
        for task in self._tasks:
            task.cancel()

    def execute(self, call: Call) -> Awaitable[Outcome]:
        """Run one admitted call (or answer it from the cache): an awaitable of its outcome."""
        if self.speculate is not None:
            return self._speculating(call)
        if call.tool.cache is None:
            return self._run(call)
        return self._cached(call)

    async def _speculating(self, call: Call) -> Outcome:
        """A call while speculation is on: take a speculated result if there is one, then
        predict what follows the call."""
        tool, args, arguments, record = call.tool, call.args, call.arguments, call.record
        key = canonical_key(tool.name, args, arguments)
        outcome: Outcome | None = None
        if _speculable(tool):
            reads, _ = tool.resources(args)
            taken = self.results.take(self._speculated, key, reads)
            if isinstance(taken, asyncio.Future):
                started = self.now()
                joined = await asyncio.shield(taken)
                if joined is not None:
                    outcome = Outcome(joined, None, started, self.now())
            elif taken is not None:
                now = self.now()
                outcome = Outcome(taken, None, now, now)
            if outcome is not None:
                record.cache = "speculated"
                speculation = self._by_key.pop(key, None)
                if speculation is not None:
                    speculation.used_ns = record.args_complete_ns
                    self._used += 1
        if outcome is None:
            if tool.cache is None:
                outcome = await self._run(call)
            else:
                outcome = await self._cached(call)
        if outcome.error is None:
            self._predict(tool, args, arguments, outcome.output)
        return outcome

    def _predict(self, tool: Tool, args: Mapping[str, Any], arguments: str, output: str) -> None:
        speculate = self.speculate
        assert speculate is not None
        predictions: list[tuple[str, str, Mapping[str, Any] | str]] = []
        if speculate.follow_ups and tool.follows is not None:
            try:
                for name, follow_args in tool.follows(args, output):
                    predictions.append(("follows", name, follow_args))
            except Exception as exc:
                _log.warning("the follow-ups of %s raised; none used", tool.name, exc_info=exc)
        if self._transitions is not None:
            for name, seen in self._transitions.after(_raw_key(tool.name, arguments)):
                predictions.append(("learned", name, seen))
        for source, name, predicted in predictions[: speculate.per_call * 2]:
            self._launch(source, name, predicted)

    def _affordable(self) -> bool:
        speculate = self.speculate
        assert speculate is not None
        if self._in_flight >= speculate.max_in_flight:
            return False
        unused = len(self.speculations) - self._used
        # A grace of one, so that speculation can start before anything was executed.
        return unused < speculate.max_waste * self._executed + 1

    def _launch(self, source: str, name: str, given: Mapping[str, Any] | str) -> None:
        tool = self.tools(name)
        if tool is None or not _speculable(tool) or not self._affordable():
            return
        arguments = given if isinstance(given, str) else codec.dumps(dict(given)).decode()
        try:
            args = tool.parse(arguments)
            reads, writes = tool.resources(args)
        except (HotloopError, KeyError, ValueError):
            return  # a prediction the tool would refuse: nothing to run
        if writes:
            return
        key = canonical_key(tool.name, args, arguments)
        if tool.cache is not None and self.results.store(tool.cache).get(key, 0.0) is not None:
            return  # the cache answers it already
        kind, _, epoch = self.results.lookup(self._speculated, key, reads)
        if kind != "miss":
            return  # speculated already, and still valid (kept, or running)
        speculation = SpeculationRecord(tool.name, arguments, source, self.now())
        self.speculations.append(speculation)
        self._by_key[key] = speculation
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._prefetch(tool, args, reads, key, epoch, speculation)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            speculation.finished_ns = self.now()
            self._in_flight -= 1
            self.results.finish(self._speculated, key, reads, epoch, output)

    async def _cached(self, call: Call) -> Outcome:
        tool, args, record = call.tool, call.args, call.record
        cache = tool.cache
        assert cache is not None
        reads, _ = tool.resources(args)
        key = canonical_key(tool.name, args, call.arguments)
        kind, found, epoch = self.results.lookup(cache, key, reads)
        if kind == "hit":
            assert isinstance(found, str)
            record.cache = "hit"
            now = self.now()
            return Outcome(found, None, now, now)
        if kind == "coalesced":
            assert isinstance(found, asyncio.Future)
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
        return Outcome(output, error, started, self.now())


def _nothing() -> None:
    return None


def _speculable(tool: Tool) -> bool:
    """Whether calls of ``tool`` may run before the model asks: reads only, nothing else."""
    effects = tool.effects
    if effects.writes or tool.takes_context or tool.approval:
        return False
    return effects.pure or effects.idempotent or not effects.exclusive


def _raw_key(name: str, arguments: str) -> str:
    """A call's key for the transition model, from its JSON arguments (keys sorted)."""
    try:
        return f"{name}\0{codec.canonical(codec.loads(arguments or '{}')).decode()}"
    except HotloopError:
        return f"{name}\0{arguments}"
