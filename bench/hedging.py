"""Hedged requests against a heavy-tailed model: the rollout wall time, p50 and p99.

A rollout is one agent run of ``--turns`` tool turns on the simulated model's generic mode
(``hotloop-sim:generic:N``: every turn calls the agent's tools, then it answers), against a
gateway whose model draws its latency from a tail profile (``--profile``, default
``fast-tail``: time to first token varying with p99/p50 = 3, 1% spikes of about 5 s before the
first token, 1% stalls mid-stream) on ``--replicas`` replicas, each with its own seeded draws.

Two sides, each a pair of strategies run interleaved, ``--concurrency`` rollouts at a time:

* ``client``: hotloop's runtime, ``plain`` (no policy) against ``hedged``
  (``Hedge(stall=0.3)``: adaptive delay, the p95 of the times to first output seen so far; a
  response quiet for 0.3 s after its output started is sent again; at most 10% extra
  requests in all);
* ``gateway``: an agent loop written with the official ``openai`` SDK, unmodified
  (``responses.create(stream=True)`` with ``previous_response_id``), against a plain gateway
  (``sdk``) and against a gateway that hedges across its replicas (``sdk-hedged``:
  ``--hedge auto --hedge-stall 0.3``, the same adaptive delay, stall limit and budget).

It prints, per strategy: rollouts, p50 and p99 of the rollout wall time, extra model requests,
and the ratios. ``hotloop bench`` compares loops against a lower bound computed from a
profile's constants, so it refuses tail profiles; this script is what measures tails.

    python bench/hedging.py                          # 200 rollouts per strategy, both sides
    python bench/hedging.py --side gateway           # the SDK pair only
    python bench/hedging.py --rollouts 40 --turns 8  # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from openai import AsyncOpenAI

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.hedging import HedgeSettings
from hotloop.backends.sim import SimBackend
from hotloop.bench.report import percentile
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


#: The same tool, as the SDK loop declares it.
SDK_TOOL: Any = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to look up."}},
        "required": ["query"],
        "additionalProperties": False,
    },
    "strict": True,
}


async def rollout(base_url: str, agent: Agent, task: str) -> float:
    async with hotloop.connect(base_url) as client:
        started = time.perf_counter()
        await Runner.run(agent, task, client=client)
        return time.perf_counter() - started


async def sdk_rollout(sdk: AsyncOpenAI, model: str, task: str) -> float:
    """One agent run written with the openai SDK alone: stream each turn, answer its calls."""
    started = time.perf_counter()
    items: list[Any] = [{"role": "user", "content": task}]
    previous: str | None = None
    for _ in range(64):
        stream = await sdk.responses.create(
            model=model,
            input=items,
            tools=[SDK_TOOL],
            previous_response_id=previous,
            stream=True,
        )
        calls = []
        async for event in stream:
            if event.type == "response.output_item.done" and event.item.type == "function_call":
                calls.append(event.item)
            elif event.type == "response.completed":
                previous = event.response.id
            elif event.type in ("response.failed", "error"):
                raise RuntimeError(f"the turn failed: {event}")
        if not calls:
            return time.perf_counter() - started
        items = [
            {"type": "function_call_output", "call_id": call.call_id, "output": "found it"}
            for call in calls
        ]
    raise RuntimeError("the model never answered")


Job = Callable[[str], Awaitable[float]]


async def interleave(jobs: dict[str, Job], args: argparse.Namespace) -> dict[str, list[float]]:
    """Run ``args.rollouts`` rollouts of every strategy, a batch of each side by side."""
    walls: dict[str, list[float]] = {name: [] for name in jobs}
    done = 0
    for batch in range(0, args.rollouts, args.concurrency):
        size = min(args.concurrency, args.rollouts - batch)
        runs = [(name, job(f"task {batch + i}")) for i in range(size) for name, job in jobs.items()]
        results = await asyncio.gather(*(run for _, run in runs))
        for (name, _), wall in zip(runs, results, strict=True):
            walls[name].append(wall)
        done += size
        print(f"  {done}/{args.rollouts} rollouts per strategy", file=sys.stderr)
    return walls


def backend(args: argparse.Namespace, hedging: HedgeSettings | None = None) -> SimBackend:
    return SimBackend(profile=args.profile, replicas=args.replicas, seed=args.seed, hedging=hedging)


async def client_side(args: argparse.Namespace) -> dict[str, Any]:
    model = f"hotloop-sim:generic:{args.turns}"
    hedge = Hedge(budget=args.budget, stall=args.stall or None)
    agents = {
        "plain": Agent(model, tools=[lookup], max_turns=args.turns + 2),
        "hedged": Agent(model, tools=[lookup], max_turns=args.turns + 2, policies=[hedge]),
    }
    async with GatewayServer(backend(args), GatewayConfig()) as server:
        # Warm-up: the adaptive hedge learns the time to first output on plain traffic first.
        warmup = [rollout(server.base_url, agents["hedged"], "warm up") for _ in range(4)]
        await asyncio.gather(*warmup)
        baseline_requests, baseline_hedges = hedge.requests, hedge.hedges
        jobs: dict[str, Job] = {
            name: functools.partial(rollout, server.base_url, agent)
            for name, agent in agents.items()
        }
        walls = await interleave(jobs, args)
    return {
        "walls": walls,
        "requests": hedge.requests - baseline_requests,
        "hedges": hedge.hedges - baseline_hedges,
        "detail": f"hedges that won {hedge.wins}, stall re-sends {hedge.stall_resends}",
    }


async def gateway_side(args: argparse.Namespace) -> dict[str, Any]:
    model = f"hotloop-sim:generic:{args.turns}"
    hedged = backend(args, HedgeSettings(budget=args.budget, stall=args.stall or None))
    async with (
        GatewayServer(backend(args), GatewayConfig()) as plain_server,
        GatewayServer(hedged, GatewayConfig()) as hedged_server,
        AsyncOpenAI(base_url=plain_server.base_url, api_key="unused", max_retries=0) as plain,
        AsyncOpenAI(base_url=hedged_server.base_url, api_key="unused", max_retries=0) as sdk,
    ):
        # Warm-up: the gateway's adaptive delay learns the time to first output first.
        await asyncio.gather(*(sdk_rollout(sdk, model, "warm up") for _ in range(4)))
        hedging = hedged.replica_hedging()
        assert hedging is not None
        baseline_requests, baseline_hedges = hedging.requests, hedging.hedges
        jobs: dict[str, Job] = {
            "sdk": functools.partial(sdk_rollout, plain, model),
            "sdk-hedged": functools.partial(sdk_rollout, sdk, model),
        }
        walls = await interleave(jobs, args)
    return {
        "walls": walls,
        "requests": hedging.requests - baseline_requests,
        "hedges": hedging.hedges - baseline_hedges,
        "detail": f"hedges that won {hedging.wins}, stall hedges {hedging.stall_hedges} "
        f"({hedging.stall_wins} took over), failovers {hedging.failovers}",
    }


def report(args: argparse.Namespace, side: dict[str, Any]) -> None:
    rows = {
        name: (statistics.median(values), percentile(values, 0.99))
        for name, values in side["walls"].items()
    }
    for name, (p50, p99) in rows.items():
        print(f"  {name:10s} p50 {p50:7.3f} s   p99 {p99:7.3f} s")
    (base, (plain50, plain99)), (hedged_name, (hedged50, hedged99)) = rows.items()
    extra = side["hedges"] / max(1, side["requests"])
    print(
        f"{hedged_name}/{base}: p50 {hedged50 / plain50:.3f}x, p99 {hedged99 / plain99:.3f}x "
        f"(p99 cut {plain99 / hedged99:.2f}x); extra model requests {extra:.1%} "
        f"({side['hedges']} of {side['requests']}), {side['detail']}"
    )


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
    parser.add_argument("--side", choices=("both", "client", "gateway"), default="both")
    args = parser.parse_args(argv)
    print(
        f"{args.rollouts} rollouts per strategy, {args.turns + 1} turns each, profile "
        f"{args.profile}, {args.replicas} replicas, {args.concurrency} at a time"
    )
    if args.side in ("both", "client"):
        report(args, asyncio.run(client_side(args)))
    if args.side in ("both", "gateway"):
        report(args, asyncio.run(gateway_side(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
