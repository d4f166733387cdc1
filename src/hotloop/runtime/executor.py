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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hotloop.runtime.cache import RunResults, canonical_key
from hotloop.runtime.events import ToolRecord
from hotloop.runtime.tools import RunContext, Tool, ToolPoolExhausted, ToolThreads
from hotloop.wire import codec

__all__ = ["Outcome", "ToolExecutor", "error_output"]

_log = logging.getLogger("hotloop.runtime")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's result for the model, its error (None: it succeeded) and when it ran."""

    output: str
    error: str | None
    started_ns: int
    finished_ns: int


def error_output(kind: str, message: str) -> str:
    """The result text the model gets for a call that failed: ``{"error": {...}}``."""
    return codec.dumps({"error": {"type": kind, "message": message}}).decode()


class ToolExecutor:
    """Runs one run's tool calls: cache, execution, invalidation (see the module docstring).

    ``now`` gives the run's clock in nanoseconds (the step records' origin).
    """

    def __init__(self, client: object, threads: ToolThreads | None, now: Callable[[], int]) -> None:
        self.results = RunResults(client)
        self.threads = threads
        self.now = now

    def admitted(self, tool: Tool, writes: frozenset[str], record: ToolRecord) -> None:
        """A call was admitted: if it may write, cached results it may change are dropped."""
        if tool.effects.exclusive:
            record.invalidated += self.results.invalidate(None)
        elif writes:
            record.invalidated += self.results.invalidate(writes)

    async def execute(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        arguments: str,
        writes: frozenset[str],
        record: ToolRecord,
        context: RunContext[Any] | None,
        on_start: Callable[[], None],
        turn: int,
    ) -> Outcome:
        """Run one admitted call (or answer it from the cache) and return its outcome;
        ``writes`` are the resources it may write (from :meth:`Tool.resources`)."""
        cache = tool.cache
        if cache is None:
            return await self._run(tool, args, writes, record, context, on_start, turn)
        reads, _ = tool.resources(args)
        key = canonical_key(tool.name, args, arguments)
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
            return await self._run(tool, args, writes, record, context, on_start, turn)
        record.cache = "miss"
        stored: str | None = None
        try:
            outcome = await self._run(tool, args, writes, record, context, on_start, turn)
            if outcome.error is None:
                stored = outcome.output
            return outcome
        finally:
            self.results.finish(cache, key, reads, epoch, stored)

    async def _run(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        writes: frozenset[str],
        record: ToolRecord,
        context: RunContext[Any] | None,
        on_start: Callable[[], None],
        turn: int,
    ) -> Outcome:
        started = self.now()
        record.started_ns = started
        on_start()
        error: str | None = None
        try:
            async with asyncio.timeout(tool.timeout):
                output = await tool.invoke(args, self.threads, context)
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
                turn,
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
