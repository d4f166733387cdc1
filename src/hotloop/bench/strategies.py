"""The agent-loop strategies ``hotloop bench`` compares, and one checked, measured run of each.

The strategies differ only in transport, tool scheduling and the runtime's work-avoidance
policies; the agent, its tools (the scenario's, from :func:`hotloop.testing.scenario_tools`)
and the model are the same. The ``hotloop+…`` strategies are ``hotloop`` with policies on:
``cache`` (the scenario's ``cache`` declarations become run-scoped caches; without it no tool
caches), ``speculate`` (``Speculate()``: the tools' declared follow-ups and the client's learned
transitions, which start empty on every run's fresh client) and ``compact``
(``Compact(threshold_tokens=...)``: ``hotloop+compact`` summarises past
``COMPACT_THRESHOLD_TOKENS``, low enough to fire in the bundled scenarios and show what a switch
costs; ``hotloop+all`` past ``ALL_COMPACT_THRESHOLD_TOKENS``, where a user would compact: a
summary saves no model time when the prefix cache holds the history, so compacting a short
context only costs the switch). Every run
gets a fresh client (connection set-up is part of the run), a task tagged with its own session
id (the simulated engine's prefix cache is shared across requests, like a real engine's: runs
must not reuse each other's cached prompts), and is checked against the scenario afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import hotloop
from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.runtime import (
    Agent,
    Compact,
    ModelTurnFinished,
    Policy,
    RunFinished,
    Runner,
    RunResult,
    Speculate,
    StepRecord,
)
from hotloop.sim.scenario import Scenario
from hotloop.testing import ExecutionLog, check_run, scenario_tools, session_task
from hotloop.transport import Transport
from hotloop.wire.items import FunctionCallOutput

__all__ = [
    "STRATEGIES",
    "RunRecord",
    "Strategy",
    "avoided_work",
    "check_run",
    "outputs_digest",
    "phases",
    "run_once",
    "strategy_agent",
    "strategy_client",
    "strategy_named",
]

#: A run that takes longer than this is stopped and reported as failed.
RUN_TIMEOUT_S = 900.0
#: Where ``hotloop+compact`` starts a summary (estimated context tokens).
COMPACT_THRESHOLD_TOKENS = 8_000
#: Where ``hotloop+all`` does: half of a 128k-token context window.
ALL_COMPACT_THRESHOLD_TOKENS = 64_000


@dataclass(frozen=True, slots=True)
class Strategy:
    """One way of playing the agent loop: transport, input mode and tool scheduling."""

    name: str
    transport: Literal["websocket", "http"]
    incremental: bool
    eager: bool
    max_concurrency: int
    description: str
    #: Work-avoidance policies on: any of ``"cache"``, ``"speculate"``, ``"compact"``.
    policies: tuple[str, ...] = ()
    #: Where ``"compact"`` starts a summary (estimated context tokens).
    compact_threshold: int = COMPACT_THRESHOLD_TOKENS

    def describe(self) -> dict[str, Any]:
        """The strategy as report data: what it is, and how it plays the loop."""
        return {
            "description": self.description,
            "transport": self.transport,
            "incremental": self.incremental,
            "eager": self.eager,
            "max_concurrency": self.max_concurrency,
            "policies": list(self.policies),
            **({"compact_threshold": self.compact_threshold} if "compact" in self.policies else {}),
        }


def _hotloop_with(
    name: str,
    policies: tuple[str, ...],
    description: str,
    compact_threshold: int = COMPACT_THRESHOLD_TOKENS,
) -> Strategy:
    return Strategy(name, "websocket", True, True, 8, description, policies, compact_threshold)


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("naive", "http", False, False, 1, "stateless HTTP, full history, one tool at a time"),
    Strategy("http-prev-id", "http", True, False, 1, "HTTP keep-alive + previous_response_id"),
    Strategy("ws-incremental", "websocket", True, False, 1, "WebSocket, new items only"),
    Strategy(
        "ws-concurrent", "websocket", True, False, 8, "WebSocket + concurrent tools after the turn"
    ),
    Strategy("hotloop", "websocket", True, True, 8, "WebSocket + eager + concurrent tools"),
    _hotloop_with("hotloop+cache", ("cache",), "hotloop + the tool-result cache"),
    _hotloop_with("hotloop+speculate", ("speculate",), "hotloop + speculative prefetch"),
    _hotloop_with("hotloop+compact", ("compact",), "hotloop + background compaction"),
    _hotloop_with(
        "hotloop+all",
        ("cache", "speculate", "compact"),
        "hotloop + cache, speculation, compaction past 64k tokens",
        ALL_COMPACT_THRESHOLD_TOKENS,
    ),
)


def strategy_named(name: str) -> Strategy:
    """The strategy called ``name``; raises ``KeyError`` listing the known ones."""
    for strategy in STRATEGIES:
        if strategy.name == name:
            return strategy
    raise KeyError(f"unknown strategy {name!r}; known: {', '.join(s.name for s in STRATEGIES)}")


@dataclass(slots=True)
class RunRecord:
    """One run of one strategy: what it measured and whether it completed the scenario."""

    strategy: str
    repetition: int  # 0 = uncounted warm-up
    position: int  # place in this repetition's order
    ok: bool = False
    error: str | None = None
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    executions: int = 0
    requests: int = 0
    bytes_sent: int = 0
    connections_opened: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    #: Calls answered by the cache without running (``hit``) or by joining a twin (``coalesced``).
    cache_hits: int = 0
    #: Speculative executions whose result a call took, and those no call took.
    speculations_used: int = 0
    speculations_wasted: int = 0
    #: Cached or speculated results that writes dropped.
    invalidations: int = 0
    #: Compaction summaries requested beside the turns.
    summaries: int = 0
    #: A digest of every tool result the model got, in order (equal digests: equal inputs).
    outputs_digest: str = ""


def phases(steps: Sequence[StepRecord], wall_ns: int) -> dict[str, float]:
    """Where a run's wall time went, from its per-step timing records (seconds).

    ``model``: request sent → terminal event, summed over turns; ``tool_wait``: terminal event
    → last tool result of the turn (tools the loop waited on after the model finished);
    ``loop``: the rest; ``tool_hidden``: tool time that ran while the model was streaming.
    """
    model = tool_wait = hidden = 0
    for step in steps:
        done = step.response_done_ns or step.request_sent_ns
        model += done - step.request_sent_ns
        if step.tools_done_ns is not None:
            tool_wait += max(0, step.tools_done_ns - done)
        for tool in step.tools:
            if tool.started_ns is not None and tool.finished_ns is not None:
                hidden += max(0, min(tool.finished_ns, done) - tool.started_ns)
    return {
        "model_s": model / 1e9,
        "tool_wait_s": tool_wait / 1e9,
        "loop_s": (wall_ns - model - tool_wait) / 1e9,
        "tool_hidden_s": hidden / 1e9,
    }


def strategy_agent(
    strategy: Strategy, scenario: Scenario, time_scale: float, log: ExecutionLog
) -> Agent:
    """The scenario's agent, scheduled as ``strategy`` says; tools log into ``log``."""
    policies: list[Policy] = []
    if "speculate" in strategy.policies:
        policies.append(Speculate())
    if "compact" in strategy.policies:
        policies.append(Compact(threshold_tokens=strategy.compact_threshold))
    return Agent(
        f"{DEFAULT_MODEL}:{scenario.name}",
        scenario.instructions,
        scenario_tools(
            scenario, time_scale=time_scale, log=log, cache="cache" in strategy.policies
        ),
        name=strategy.name,
        max_turns=len(scenario.turns) + 5,
        eager=strategy.eager,
        max_concurrency=strategy.max_concurrency,
        policies=policies,
    )


def outputs_digest(result: RunResult) -> str:
    """A digest of the tool results the model got, in order: two runs of one scenario with
    equal digests sent the model the same results (its own outputs are scripted)."""
    digest = hashlib.sha256()
    for item in result.items:
        if isinstance(item, FunctionCallOutput):
            digest.update(item.text.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def avoided_work(record: RunRecord, result: RunResult) -> None:
    """Fill ``record``'s counts of the work ``result``'s policies avoided."""
    tools = [tool for step in result.steps for tool in step.tools]
    record.cache_hits = sum(1 for tool in tools if tool.cache in ("hit", "coalesced"))
    record.speculations_used = sum(1 for s in result.speculations if s.used_ns is not None)
    record.speculations_wasted = len(result.speculations) - record.speculations_used
    record.invalidations = sum(tool.invalidated for tool in tools)
    record.summaries = sum(1 for aside in result.asides if aside.purpose == "summary")
    record.outputs_digest = outputs_digest(result)


def strategy_client(strategy: Strategy, base_url: str) -> Transport:
    """A fresh client to ``base_url`` with ``strategy``'s transport and input mode.

    The benchmark's gateway is up before any run starts: a server that cannot be reached is a
    failed run after 2 s, not after a client's usual 30 s of reconnecting.
    """
    return hotloop.connect(
        base_url,
        transport=strategy.transport,
        incremental=strategy.incremental,
        reconnect_timeout=2.0,
    )


async def run_once(
    strategy: Strategy,
    scenario: Scenario,
    base_url: str,
    *,
    time_scale: float,
    repetition: int,
    position: int,
    session: str,
    on_turn: Callable[[int], None] | None = None,
) -> RunRecord:
    """Play ``scenario`` once with ``strategy``; a failure is in the record, never raised.

    ``on_turn`` is called with the number of model turns finished so far (progress display).
    """
    record = RunRecord(strategy.name, repetition, position)
    log = ExecutionLog()
    agent = strategy_agent(strategy, scenario, time_scale, log)  # built outside the measured span
    message = session_task(scenario, session)
    client = strategy_client(strategy, base_url)
    result: RunResult | None = None
    cpu = time.process_time()
    wall = time.perf_counter()
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            async for event in Runner.run_stream(agent, message, client=client):
                if isinstance(event, ModelTurnFinished) and on_turn is not None:
                    on_turn(event.turn)
                elif isinstance(event, RunFinished):
                    result = event.result
    except Exception as exc:  # a failed run is reported, never dropped
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.wall_s = time.perf_counter() - wall
        record.client_cpu_s = time.process_time() - cpu
        record.executions = log.count()
        stats = client.stats
        record.requests = stats.requests
        record.bytes_sent = stats.bytes_sent
        record.connections_opened = stats.connections_opened
        await client.close()
    if result is not None:
        record.turns = result.turns
        record.tool_calls = result.tool_calls
        record.phases = phases(result.steps, result.wall_ns)
        avoided_work(record, result)
        problems = check_run(scenario, result, log)
        record.error = "; ".join(problems) or None
        record.ok = not problems
    elif record.error is None:  # pragma: no cover - run_stream ends with RunFinished or raises
        record.error = "the run ended without a result"
    return record
