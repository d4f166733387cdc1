"""Hedged requests against a heavy-tailed model: the rollout wall time, p50 and p99.

A rollout is one agent run of ``--turns`` tool turns on the simulated model's generic mode
(``hotloop-sim:generic:N``: every turn calls the agent's tools, then it answers), against a
gateway whose model draws its latency from a tail profile (``--profile``, default
``fast-tail``: lognormal time to first token with p99/p50 = 10, 1% stalls) on ``--replicas``
replicas, each with its own seeded draws. Two strategies, run interleaved, ``--concurrency``
rollouts at a time: ``plain`` (no policy) and ``hedged`` (``Hedge(stall=0.3)``: adaptive delay,
the p95 of the times to first output seen so far; a response quiet for 0.3 s after its output
started is sent again; at most 10% extra requests in all). It prints, per
strategy: rollouts, p50 and p99 of the rollout wall time, extra model requests, and the ratios.

``hotloop bench`` compares loops against a lower bound computed from a profile's constants, so
it refuses tail profiles; this script is what measures tails.

    python bench/hedging.py                          # 200 rollouts per strategy
    python bench/hedging.py --rollouts 40 --turns 8  # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Hedge
from hotloop.sim.latency import PROFILES


@tool(pure=True)
async def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    return f"found {query}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def rollout(base_url: str, agent: Agent, task: str) -> float:
    async with hotloop.connect(base_url) as client:
        started = time.perf_counter()
        await Runner.run(agent, task, client=client)
        return time.perf_counter() - started


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    backend = SimBackend(profile=args.profile, replicas=args.replicas, seed=args.seed)
    config = GatewayConfig()
    model = f"hotloop-sim:generic:{args.turns}"
    hedge = Hedge(budget=args.budget, stall=args.stall or None)
    agents = {
        "plain": Agent(model, tools=[lookup], max_turns=args.turns + 2),
        "hedged": Agent(model, tools=[lookup], max_turns=args.turns + 2, policies=[hedge]),
    }
    walls: dict[str, list[float]] = {name: [] for name in agents}
    async with GatewayServer(backend, config) as server:
        # Warm-up: the adaptive hedge learns the time to first output on plain traffic first.
        warmup = [rollout(server.base_url, agents["hedged"], "warm up") for _ in range(4)]
        await asyncio.gather(*warmup)
        baseline_requests, baseline_hedges = hedge.requests, hedge.hedges
        done = 0
        for batch in range(0, args.rollouts, args.concurrency):
            size = min(args.concurrency, args.rollouts - batch)
            # Interleaved: each batch runs both strategies side by side.
            jobs = [
                (name, rollout(server.base_url, agent, f"task {batch + i}"))
                for i in range(size)
                for name, agent in agents.items()
            ]
            results = await asyncio.gather(*(job for _, job in jobs))
            for (name, _), wall in zip(jobs, results, strict=True):
                walls[name].append(wall)
            done += size
            print(f"  {done}/{args.rollouts} rollouts per strategy", file=sys.stderr)
    requests = hedge.requests - baseline_requests
    hedges = hedge.hedges - baseline_hedges
    return {
        "walls": walls,
        "requests": requests,
        "hedges": hedges,
        "wins": hedge.wins,
        "stalls": hedge.stall_resends,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default="fast-tail", choices=sorted(PROFILES))
    parser.add_argument("--rollouts", type=int, default=200, help="per strategy")
    parser.add_argument("--turns", type=int, default=15, help="tool turns (+1 answer) per run")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10, help="rollouts at a time")
    parser.add_argument("--budget", type=float, default=0.1, help="share of hedged requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--stall",
        type=float,
        default=0.3,
        help="seconds without an event after output started before a re-send (0: never)",
    )
    args = parser.parse_args(argv)
    report = asyncio.run(measure(args))
    walls = report["walls"]
    rows = {
        name: (statistics.median(values), percentile(values, 0.99))
        for name, values in walls.items()
    }
    print(
        f"{args.rollouts} rollouts per strategy, {args.turns + 1} turns each, profile "
        f"{args.profile}, {args.replicas} replicas, {args.concurrency} at a time"
    )
    for name, (p50, p99) in rows.items():
        print(f"  {name:7s} p50 {p50:7.3f} s   p99 {p99:7.3f} s")
    (plain50, plain99), (hedged50, hedged99) = rows["plain"], rows["hedged"]
    extra = report["hedges"] / max(1, report["requests"])
    print(
        f"hedged/plain: p50 {hedged50 / plain50:.3f}x, p99 {hedged99 / plain99:.3f}x; "
        f"extra model requests {extra:.1%} ({report['hedges']} of {report['requests']}), "
        f"hedges that won {report['wins']}, stall re-sends {report['stalls']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
