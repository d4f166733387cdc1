"""Public helpers for testing and benchmarking agents on the embedded simulated model.

:func:`scenario_tools` turns a scenario's tool descriptions into runtime tools that behave as
the scenario says (latency, output size, declared effects) and records every execution, so a
test can check, for example, that each write ran exactly once. A scenario's ``cache`` and
``follows`` declarations become the tools' ``cache=`` and ``follows=`` (the runtime caches and
speculates only when asked to: tools cache with ``cache=True`` only, and follow-ups are used
only by an agent with ``Speculate()``). The tools it builds share one
:class:`~hotloop.sim.tools.ScenarioState`, so a read's output shows the writes made before it
(a stale read differs from a fresh one). :class:`FaultProxy`
(:mod:`hotloop.testing.faults`) breaks the network between an agent and its server on
purpose, and :func:`run_resuming` is the loop that continues a run after a failure.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hotloop.runtime.cache import Cache
from hotloop.runtime.events import RunResult
from hotloop.runtime.tools import Effects, FollowUps, Tool
from hotloop.sim.scenario import Scenario, ToolSpec
from hotloop.sim.tools import ScenarioState, follow_ups, tool_latency
from hotloop.testing.faults import Fault, FaultPlan, FaultProxy, run_resuming
from hotloop.wire import codec

__all__ = [
    "Execution",
    "ExecutionLog",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "ScenarioState",
    "check_run",
    "run_resuming",
    "scenario_tools",
    "session_task",
]


@dataclass(frozen=True, slots=True)
class Execution:
    """One tool execution: which tool, with which arguments, when (perf_counter_ns).

    ``cpu_ns`` is the CPU time the tool's own body used (thread CPU time around its work, its
    simulated latency excluded): the application's work, which a benchmark of the runtime's
    own CPU subtracts.
    """

    name: str
    arguments: str
    started_ns: int
    finished_ns: int
    cpu_ns: int = 0


@dataclass
class ExecutionLog:
    """Every execution of the tools built by :func:`scenario_tools`, in start order."""

    executions: list[Execution] = field(default_factory=list)

    def count(self, name: str | None = None) -> int:
        return sum(1 for e in self.executions if name is None or e.name == name)

    def cpu_ns(self) -> int:
        """The CPU time all the logged executions' bodies used."""
        return sum(execution.cpu_ns for execution in self.executions)

    def by_arguments(self) -> dict[tuple[str, str], int]:
        """How many times each (tool, arguments) ran."""
        counts: dict[tuple[str, str], int] = {}
        for execution in self.executions:
            key = (execution.name, execution.arguments)
            counts[key] = counts.get(key, 0) + 1
        return counts


def _effects(spec: ToolSpec) -> Effects:
    declared = spec.effects.pure or bool(spec.effects.reads) or bool(spec.effects.writes)
    return Effects(
        reads=spec.effects.reads,
        writes=spec.effects.writes,
        pure=spec.effects.pure,
        idempotent=spec.effects.idempotent,
        exclusive=not declared,
    )


def scenario_tools(
    scenario: Scenario,
    *,
    time_scale: float = 1.0,
    log: ExecutionLog | None = None,
    names: Sequence[str] | None = None,
    state: ScenarioState | None = None,
    cache: bool = False,
) -> list[Tool]:
    """Runtime tools playing ``scenario``'s tools; ``time_scale`` scales their latency.

    With ``cache=True``, a tool the scenario declares ``cache`` gets ``cache=Cache()`` (kept for
    the run); one that declares ``follows`` gets them as ``follows=``, read from the
    result's text (:func:`hotloop.sim.tools.follow_ups`).

    The tools act on ``state``, a new :class:`~hotloop.sim.tools.ScenarioState` by default: a
    call's output shows the versions of the resources it reads, so build the tools once per
    run (or pass each run a state of its own). Runs that share a state see each other's writes.
    """
    world = ScenarioState() if state is None else state
    tools: list[Tool] = []
    for spec in scenario.tools.values():
        if names is not None and spec.name not in names:
            continue

        async def run(_spec: ToolSpec = spec, **args: Any) -> str:
            started = time.perf_counter_ns()
            cpu = time.thread_time_ns()
            # Canonical arguments: the scenario's own encoding, whatever the model's spacing.
            arguments = codec.dumps(args).decode()
            observed = world.observe(_spec, arguments)
            cpu_before = time.thread_time_ns() - cpu
            await tool_latency(_spec, time_scale=time_scale)
            cpu = time.thread_time_ns()
            output = world.complete(_spec, arguments, observed)
            if log is not None:
                log.executions.append(
                    Execution(
                        _spec.name,
                        arguments,
                        started,
                        time.perf_counter_ns(),
                        cpu_before + time.thread_time_ns() - cpu,
                    )
                )
            return output

        tools.append(
            Tool.from_schema(
                spec.name,
                spec.parameters,
                run,
                description=spec.description,
                effects=_effects(spec),
                cache=Cache() if cache and spec.cache else None,
                follows=_follows(spec) if spec.follows else None,
            )
        )
    return tools


def _follows(spec: ToolSpec) -> FollowUps:
    def predict(args: Any, output: str) -> list[tuple[str, dict[str, Any]]]:
        return follow_ups(spec, args, output)

    return predict


def session_task(scenario: Scenario, session: str) -> str:
    """The scenario's task message, tagged with ``session``.

    The simulated engine's prefix cache is shared by every request, as a real engine's is.
    Runs that compare strategies must not reuse each other's cached prompts, so each one
    starts its conversation with a different first message: every prefix key then differs.
    """
    return f"{scenario.task}\n\n(session {session})"


def check_run(scenario: Scenario, result: RunResult, log: ExecutionLog) -> tuple[str, ...]:
    """What differs between a run and its scenario (empty when the run completed it)."""
    problems: list[str] = []
    if result.turns != len(scenario.turns):
        problems.append(f"{result.turns} model turns, the scenario has {len(scenario.turns)}")
    if result.tool_calls != scenario.total_calls:
        problems.append(f"{result.tool_calls} tool calls, the scenario has {scenario.total_calls}")
    # Calls served without running (a cache hit, a joined twin, a speculated result) were not
    # executed; speculative executions were, whether used or not. Writes are never served nor
    # speculated: each ran exactly as often as the scenario makes it.
    served = sum(
        1
        for step in result.steps
        for tool in step.tools
        if tool.cache in ("hit", "coalesced", "speculated")
    )
    speculated = len(result.speculations)
    if not served and not speculated:
        if log.count() != scenario.total_calls:
            problems.append(
                f"{log.count()} tool executions, the scenario has {scenario.total_calls}"
            )
    else:
        low = scenario.total_calls - served
        if not low <= log.count() <= low + speculated:
            problems.append(
                f"{log.count()} tool executions, expected {low} to {low + speculated} (the "
                f"scenario has {scenario.total_calls} calls, {served} served without running, "
                f"{speculated} speculative executions)"
            )
        for name, spec in scenario.tools.items():
            scripted = sum(1 for turn in scenario.turns for call in turn.calls if call.name == name)
            if not spec.writes_nothing and log.count(name) != scripted:
                problems.append(
                    f"{log.count(name)} executions of {name}, the scenario makes {scripted}"
                )
    if result.final_output != (scenario.turns[-1].text or ""):
        problems.append("the final answer differs from the scenario's final text")
    errors = [tool.error for step in result.steps for tool in step.tools if tool.error]
    if errors:
        problems.append(f"{len(errors)} tool call(s) failed; the first: {errors[0]}")
    return tuple(problems)
