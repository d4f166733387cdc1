"""Injected model failures: every rollout completes, no tool call runs twice, and what it costs.

A rollout is one agent run of ``--turns`` model turns on the simulated model's generic mode
(``hotloop-sim:generic:N``: N tool turns, then the answer), against an in-process gateway whose
model draws failures from a tail profile (``--profile``, default ``flaky``: rate limits, server
errors before output and streams dropped mid-output, at the rates ``docs/sim.md`` gives, plus
the tails of ``fast-tail``). The same gateway serves two more models with the same profile and
its failures set to 0: ``hotloop-sim@clean`` (the baseline) and ``hotloop-sim@backup`` (what
``Fallback`` falls back to), each on ``--replicas`` replicas.

The agent has two tools that count their executions per rollout, keyed by the call id their
``RunContext`` carries and by (turn, tool): ``lookup`` (``pure``: it starts while the turn
streams, so a failed attempt may have started it) and ``save_note`` (a write: it waits for a
response that completes). Three strategies run interleaved, ``--concurrency`` rollouts of each
at a time:

* ``clean``: the clean model, with ``RetryOnTimeout()``: the baseline;
* ``retry``: the failing model, with the runner's own re-sends and ``RetryOnTimeout()``;
* ``fallback``: the failing model, with ``Fallback("hotloop-sim@backup:...")``: a failure moves
  the run to the backup model, where it stays.

It prints, per strategy: rollouts completed and lost, failures seen (``response.failed`` and
transport errors, by kind), re-sent attempts, runs that fell back, tool calls, executions and
calls executed twice, the mean, p50 and p99 of the rollout wall time, and the time added per
failure: (mean wall - mean clean wall) / failures per rollout. Exits 1 if a rollout was lost or
a tool call executed twice (or never, though its result went to the model); wall times are
reported, never checked.

    python bench/failures.py                    # 200 rollouts per strategy, 16 turns
    python bench/failures.py --quick            # 40 rollouts, 8 turns
    python bench/failures.py --latency drop_probability=0.05   # another rate, said so
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

import hotloop
from hotloop import Agent, RunContext, Runner, tool
from hotloop.backends.sim import SimBackend
from hotloop.bench.report import percentile
from hotloop.errors import ScenarioError
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Fallback, Policy, RetryOnTimeout
from hotloop.sim.latency import PROFILES, LatencyProfile, get_profile
from hotloop.transport import ModelRequest, OnEvent, Transport, TransportError
from hotloop.wire.events import Event, ResponseFailed
from hotloop.wire.items import FunctionCall

#: The profile parameters that inject failures; the clean models set them to 0.
FAILURES = ("rate_limit_probability", "server_error_probability", "drop_probability")
STRATEGIES = ("clean", "retry", "fallback")


@dataclass
class Executions:
    """One rollout's tool executions, counted by call id and by (turn, tool)."""

    by_call: Counter[str] = field(default_factory=Counter)
    by_turn: Counter[tuple[int, str]] = field(default_factory=Counter)

    def count(self, context: RunContext[Executions]) -> None:
        self.by_call[context.call_id] += 1
        self.by_turn[context.turn, context.tool_name] += 1

    @property
    def total(self) -> int:
        return sum(self.by_call.values())

    @property
    def twice(self) -> int:
        """Calls executed more than once: the same call id, or the same tool in one turn (a
        re-sent turn names its calls anew, so a call run again would have another id)."""
        same_id = sum(1 for n in self.by_call.values() if n > 1)
        same_turn = sum(1 for n in self.by_turn.values() if n > 1)
        return max(same_id, same_turn)


@tool(pure=True)
async def lookup(context: RunContext[Executions], query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    context.deps.count(context)
    return f"found {query}"


@tool
async def save_note(context: RunContext[Executions], note: str) -> str:
    """Save a note (a write: it must never happen twice).

    Args:
        note: What to save.
    """
    context.deps.count(context)
    return "saved"


class Observed:
    """A transport that counts the failures its turns meet, then hands everything on."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.failures: Counter[str] = Counter()
        self.models: Counter[str] = Counter()

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        self.models[request.model] += 1

        def observe(event: Event) -> None:
            if isinstance(event, ResponseFailed):
                error = event.response.error or {}
                self.failures[str(error.get("code") or "failed")] += 1
            on_event(event)

        try:
            await self.inner.stream_to(request, observe, skip=skip)
        except TransportError as exc:
            self.failures[exc.code or "transport_error"] += 1
            raise

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        return self.inner.stream(request)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Observed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@dataclass
class Tally:
    """What one strategy's rollouts did."""

    walls: list[float] = field(default_factory=list)
    lost: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    fell_back: int = 0
    calls: int = 0
    executions: int = 0
    twice: int = 0
    missing: int = 0
    #: Model time of each turn (all its attempts): turns sent once, and turns with their
    #: failures (re-sent attempts).
    clean_turns: list[float] = field(default_factory=list)
    failed_turns: list[tuple[float, int]] = field(default_factory=list)

    def added_per_failed_turn(self) -> float | None:
        """Time a failure added to its turn: (failed turns' time - clean turns' mean) / their
        failures."""
        failures = sum(n for _, n in self.failed_turns)
        if not failures or not self.clean_turns:
            return None
        base = statistics.fmean(self.clean_turns)
        return sum(took - base for took, _ in self.failed_turns) / failures

    @property
    def completed(self) -> int:
        return len(self.walls)

    @property
    def rollouts(self) -> int:
        return self.completed + sum(self.lost.values())


async def rollout(base_url: str, agent: Agent, task: str, backup: str, tally: Tally) -> None:
    executions = Executions()
    async with hotloop.connect(base_url) as client:
        observed = Observed(client)
        started = time.perf_counter()
        try:
            result = await Runner.run(agent, task, client=observed, deps=executions)
        except Exception as exc:  # a lost rollout is what this measures: count it, go on
            tally.lost[f"{type(exc).__name__} {getattr(exc, 'code', None) or ''}".strip()] += 1
            result = None
        wall = time.perf_counter() - started
    tally.failures.update(observed.failures)
    tally.executions += executions.total
    tally.twice += executions.twice
    if result is None:
        return
    tally.walls.append(wall)
    tally.resends += sum(step.attempts - 1 for step in result.steps)
    for step in result.steps:
        if step.response_done_ns is None:
            continue
        took = (step.response_done_ns - step.request_sent_ns) / 1e9
        if step.attempts == 1:
            tally.clean_turns.append(took)
        else:
            tally.failed_turns.append((took, step.attempts - 1))
    tally.fell_back += observed.models[backup] > 0
    calls = sum(1 for item in result.items if isinstance(item, FunctionCall))
    tally.calls += calls
    tally.missing += max(0, calls - executions.total)


def clean_profile(profile: LatencyProfile) -> LatencyProfile:
    return profile.override(**dict.fromkeys(FAILURES, 0))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = get_profile(args.profile, args.overrides)
    clean = clean_profile(profile)
    backend = SimBackend(
        profile=profile,
        replicas=args.replicas,
        seed=args.seed,
        models={"clean": clean, "backup": clean},
    )
    generic = f"generic:{args.turns - 1}"
    main, clean_model = f"hotloop-sim:{generic}", f"hotloop-sim@clean:{generic}"
    backup = f"hotloop-sim@backup:{generic}"
    policies: dict[str, tuple[str, list[Policy]]] = {
        "clean": (clean_model, [RetryOnTimeout()]),
        "retry": (main, [RetryOnTimeout()]),
        "fallback": (main, [Fallback(backup)]),
    }
    agents = {
        name: Agent(
            model,
            tools=[lookup, save_note],
            max_turns=args.turns + 2,
            max_attempts=args.max_attempts,
            policies=chosen,
        )
        for name, (model, chosen) in policies.items()
    }
    tallies = {name: Tally() for name in agents}
    async with GatewayServer(backend, GatewayConfig()) as server:
        done = 0
        for batch in range(0, args.rollouts, args.concurrency):
            size = min(args.concurrency, args.rollouts - batch)
            # Interleaved: each batch runs every strategy side by side.
            await asyncio.gather(
                *(
                    rollout(server.base_url, agent, f"task {batch + i}", backup, tallies[name])
                    for i in range(size)
                    for name, agent in agents.items()
                )
            )
            done += size
            if done % args.progress == 0 or done == args.rollouts:
                lost = sum(sum(t.lost.values()) for t in tallies.values())
                twice = sum(t.twice for t in tallies.values())
                print(
                    f"  {done}/{args.rollouts} rollouts per strategy ({lost} lost, "
                    f"{twice} calls executed twice)",
                    file=sys.stderr,
                    flush=True,
                )
        registry = server.gateway.metrics.registry
        gateway_failed = sum(
            registry.get_sample_value(
                "hotloop_responses_total", {"transport": transport, "status": "failed"}
            )
            or 0
            for transport in ("websocket", "http", "chat")
        )
    return {"tallies": tallies, "profile": profile, "gateway_failed": int(gateway_failed)}


def report(args: argparse.Namespace, measured: dict[str, Any]) -> tuple[str, bool]:
    """The table, and whether the check passed."""
    tallies: dict[str, Tally] = measured["tallies"]
    profile: LatencyProfile = measured["profile"]
    rates = ", ".join(
        f"{getattr(profile, key):.0%} {what}"
        for key, what in zip(FAILURES, ("429", "500", "dropped"), strict=True)
    )
    changed = ", ".join(f"{key}={value}" for key, value in args.overrides.items())
    lines = [
        f"{args.rollouts} rollouts per strategy, {args.turns} turns each, profile "
        f"{profile.name}{f' ({changed})' if changed else ''} ({rates} per request); clean "
        f"and backup models: {profile.name} with "
        f"failures set to 0. {args.replicas} replicas per model, {args.concurrency} rollouts "
        f"of each strategy at a time, max_attempts {args.max_attempts}, seed {args.seed}",
        "",
        f"{'strategy':9} {'done':>5} {'lost':>5} {'failures':>8} {'/rollout':>8} "
        f"{'re-sent':>7} {'fell back':>9} {'calls':>6} {'runs':>6} {'twice':>5} "
        f"{'mean':>8} {'p50':>8} {'p99':>8} {'+/failure':>10} {'+/f. turn':>10}",
    ]
    clean_walls = tallies["clean"].walls
    clean_mean = statistics.fmean(clean_walls) if clean_walls else None
    for name in STRATEGIES:
        tally = tallies[name]
        failures = sum(tally.failures.values())
        per_rollout = failures / max(1, tally.rollouts)
        walls = tally.walls
        if walls:
            mean, p50, p99 = statistics.fmean(walls), statistics.median(walls), 0.0
            p99 = percentile(walls, 0.99)
            times = f"{mean:7.3f}s {p50:7.3f}s {p99:7.3f}s"
        else:
            mean, times = None, f"{'-':>8} {'-':>8} {'-':>8}"
        added = turn_added = "-"
        if name != "clean" and per_rollout > 0 and mean is not None and clean_mean is not None:
            added = f"{(mean - clean_mean) / per_rollout * 1000:+.0f} ms"
        per_turn = tally.added_per_failed_turn()
        if per_turn is not None:
            turn_added = f"{per_turn * 1000:+.0f} ms"
        lines.append(
            f"{name:9} {tally.completed:>5} {sum(tally.lost.values()):>5} {failures:>8} "
            f"{per_rollout:>8.3f} {tally.resends:>7} {tally.fell_back:>9} {tally.calls:>6} "
            f"{tally.executions:>6} {tally.twice:>5} {times} {added:>10} {turn_added:>10}"
        )
    lines += [
        "",
        "+/failure: (mean wall - clean mean wall) / failures per rollout; +/f. turn: (model time",
        "of the turns that failed - mean of the turns that did not) / their failures (steps).",
        "failures by kind (as the runs met them):",
    ]
    for name in STRATEGIES:
        kinds = tallies[name].failures
        shown = ", ".join(f"{code} {n}" for code, n in sorted(kinds.items())) or "none"
        lines.append(f"  {name:9} {shown}")
    seen = sum(sum(t.failures.values()) for t in tallies.values())
    lines.append(
        f"failed responses the gateway counted: {measured['gateway_failed']} (runs saw {seen})"
    )
    lost = sum(sum(t.lost.values()) for t in tallies.values())
    twice = sum(t.twice for t in tallies.values())
    missing = sum(t.missing for t in tallies.values())
    for name in STRATEGIES:
        for reason, n in tallies[name].lost.most_common():
            lines.append(f"  lost ({name}): {n} x {reason}")
    ok = lost == 0 and twice == 0 and missing == 0
    verdict = "OK" if ok else "FAILED"
    lines.append(
        f"check: {verdict}: {lost} rollouts lost, {twice} tool calls executed twice, "
        f"{missing} calls whose result came from no execution"
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default="flaky", choices=sorted(PROFILES))
    parser.add_argument("--rollouts", type=int, default=200, help="per strategy (200)")
    parser.add_argument(
        "--turns", type=int, default=16, help="model turns per rollout: tool turns + 1 (16)"
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10, help="rollouts of each at a time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        help="Agent.max_attempts: sends of one turn at most (5)",
    )
    parser.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of the profile (the clean models follow, failures aside)",
    )
    parser.add_argument(
        "--progress", type=int, default=50, help="a progress line per this many rollouts"
    )
    parser.add_argument(
        "--quick", action="store_true", help="40 rollouts of 8 turns (overrides both)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rollouts, args.turns, args.progress = 40, 8, 10
    if args.turns < 2 or args.rollouts < 1 or args.concurrency < 1:
        parser.error("--turns must be at least 2, --rollouts and --concurrency at least 1")
    args.overrides = {}
    for pair in args.latency:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--latency takes KEY=VALUE, got {pair!r}")
        args.overrides[key.strip()] = value.strip()
    try:
        profile = get_profile(args.profile, args.overrides)
    except ScenarioError as exc:
        parser.error(str(exc))
    if profile.failure_probability == 0:
        parser.error(f"profile {profile.name} injects no failures")
    table, ok = report(args, asyncio.run(measure(args)))
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
