"""Token-exact continuation on a real llama.cpp engine: prompt tokens evaluated and time to
first token per turn of long tool loops, chat endpoint against native ``/completion``.

Starts llama.cpp's own server (``hotloop.testing.llamacpp``, one thread, ``--slots`` slots) on
the project's tiny tool-calling model built with ``answer_after=--answer-after`` (24 by
default: 24 tool calls, then ``All done.``, so 25 model turns per loop), and runs
``--conversations`` tool loops at once (more than the engine's slots) with hotloop's runtime,
in four ways:

* **engine-chat** — the runtime straight to the engine's ``/v1/chat/completions``
  (``hotloop.connect(url, transport="chat")``): the whole history every turn, rendered by the
  engine from parsed messages;
* **gateway-chat** — the runtime in WebSocket mode to a hotloop gateway whose upstream is the
  same chat endpoint (``ChatBackend``): the engine still re-renders the model's calls;
* **gateway-exact** — the same gateway on llama.cpp's native ``/completion``
  (``LlamaCppBackend``): each turn's prompt is the previous prompt, the tokens the model
  generated, then the new input;
* **gateway-exact-pinned** — the same with ``pin_slots``: each conversation keeps one slot.

Per turn it records the prompt tokens the engine evaluated (``input - cached``: what the
prefix cache did not cover) and the time to first token as the runtime sees it (request sent
to first output item), and reports medians over every conversation of every run at turns 2,
10 and 20, with the loop's total evaluated tokens and wall time. Runs are interleaved (the
order rotated each repetition) after one uncounted warm-up per strategy; every conversation
has its own task text (a run tag), so no run finds another's prompt in the engine's cache.
Every loop is checked (turn count, final text); failures are counted, never dropped. Sampling
is the server's default for every strategy (hotloop's chat transport sends no temperature).
The gateways run in this process, on the same two cores as the engine.

A script under ``bench/`` and not a ``hotloop bench`` strategy because ``hotloop bench`` plays
scenarios on the embedded simulated model and cannot start an engine; this needs the
``engine`` extra (``make setup``). It is a benchmark, not a test: it never fails on time (it
exits 1 only when a loop did not complete).

    python bench/llamacpp_continuation.py                       # 5 runs, 4 conversations, 2 slots
    python bench/llamacpp_continuation.py --runs 3 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.chat import ChatBackend
from hotloop.backends.llamacpp import LlamaCppBackend
from hotloop.backends.upstream import UpstreamConfig
from hotloop.gateway import GatewayServer
from hotloop.runtime.events import RunResult
from hotloop.testing.llamacpp import ANSWER_TEXT, LlamaServer, build_tiny_model
from hotloop.transport.base import Transport
from hotloop.wire import codec

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "hotloop-engine"
MODEL = "tiny"
STRATEGIES = ("engine-chat", "gateway-chat", "gateway-exact", "gateway-exact-pinned")
REPORTED_TURNS = (2, 10, 20)


@tool(reads=["weather:{city}"])
async def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "sunny"


@dataclass
class Loop:
    """One conversation of one run: per turn, evaluated prompt tokens and time to first token."""

    ok: bool
    error: str = ""
    wall_s: float = 0.0
    evaluated: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)


def loop_from(result: RunResult, turns: int) -> Loop:
    problems = []
    if result.turns != turns:
        problems.append(f"{result.turns} turns, expected {turns}")
    if result.final_output != ANSWER_TEXT:
        problems.append(f"final output {result.final_output!r}")
    loop = Loop(ok=not problems, error="; ".join(problems), wall_s=result.wall_ns / 1e9)
    for step in result.steps:
        usage = step.usage
        loop.evaluated.append(usage.input_tokens - usage.cached_tokens if usage else -1)
        loop.cached.append(usage.cached_tokens if usage else -1)
        first = step.first_token_ns
        loop.ttft_ms.append((first - step.request_sent_ns) / 1e6 if first is not None else -1.0)
    return loop


@contextlib.asynccontextmanager
async def strategy_clients(
    name: str, server: LlamaServer
) -> AsyncIterator[Callable[[], Transport]]:
    """A factory of fresh clients for one strategy (its gateway, when it has one, stays up)."""
    if name == "engine-chat":
        yield lambda: hotloop.connect(f"{server.base_url}/v1", transport="chat")
        return
    config = UpstreamConfig(urls=(f"{server.base_url}/v1",), models={MODEL: MODEL})
    backend: Any
    if name == "gateway-chat":
        backend = ChatBackend(config)
    else:
        backend = LlamaCppBackend(config, pin_slots=name == "gateway-exact-pinned")
    async with GatewayServer(backend) as gateway:
        yield lambda: hotloop.connect(gateway.base_url)


async def one_run(
    factory: Callable[[], Transport], tag: str, conversations: int, turns: int
) -> list[Loop]:
    agent = Agent(MODEL, "You answer weather questions.", [get_weather], max_turns=turns + 5)

    async def conversation(n: int) -> Loop:
        client = factory()
        try:
            result = await Runner.run(agent, f"Weather in city {tag}-{n}?", client=client)
        except Exception as exc:  # a failed loop is reported, never dropped
            return Loop(ok=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            await client.close()
        return loop_from(result, turns)

    return list(await asyncio.gather(*(conversation(n) for n in range(conversations))))


def median_at(loops: list[Loop], attribute: str, turn: int) -> float | None:
    values = [
        getattr(loop, attribute)[turn - 1]
        for loop in loops
        if loop.ok and len(getattr(loop, attribute)) >= turn
    ]
    return statistics.median(values) if values else None


def summarize(loops: list[Loop]) -> dict[str, Any]:
    good = [loop for loop in loops if loop.ok]
    return {
        "loops": len(loops),
        "failures": [loop.error for loop in loops if not loop.ok],
        "evaluated": {str(t): median_at(loops, "evaluated", t) for t in REPORTED_TURNS},
        "cached": {str(t): median_at(loops, "cached", t) for t in REPORTED_TURNS},
        "ttft_ms": {str(t): median_at(loops, "ttft_ms", t) for t in REPORTED_TURNS},
        "evaluated_per_loop": statistics.median(sum(loop.evaluated) for loop in good)
        if good
        else None,
        "loop_wall_s": statistics.median(loop.wall_s for loop in good) if good else None,
        "per_turn_evaluated": [
            median_at(loops, "evaluated", t)
            for t in range(1, max(map(_turns, good), default=0) + 1)
        ],
        "per_turn_ttft_ms": [
            median_at(loops, "ttft_ms", t) for t in range(1, max(map(_turns, good), default=0) + 1)
        ],
    }


def _turns(loop: Loop) -> int:
    return len(loop.evaluated)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    turns = args.answer_after + 1
    model = build_tiny_model(CACHE, answer_after=args.answer_after)
    ctx = args.ctx_per_slot * args.slots
    loops: dict[str, list[Loop]] = {name: [] for name in args.strategies}
    async with (
        LlamaServer(
            model,
            n_slots=args.slots,
            ctx_size=ctx,
            threads=1,
            cache_ram_mib=args.cache_ram,
            log_path=CACHE / "bench-llama-server.log",
        ) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        factories = {
            name: await stack.enter_async_context(strategy_clients(name, server))
            for name in args.strategies
        }
        started = time.monotonic()
        for repetition in range(-1, args.runs):  # -1: the uncounted warm-up
            order = list(args.strategies)
            shift = max(repetition, 0) % len(order)
            order = order[shift:] + order[:shift]
            for name in order:
                tag = f"{name}-r{repetition + 1}"
                result = await one_run(factories[name], tag, args.conversations, turns)
                if repetition >= 0:
                    loops[name].extend(result)
                failed = sum(not loop.ok for loop in result)
                print(
                    f"  run {repetition + 1 if repetition >= 0 else 'warm-up'} {name}: "
                    f"{len(result) - failed}/{len(result)} loops ok "
                    f"({time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                )
    return {
        "benchmark": "llamacpp_continuation",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "runs": args.runs,
            "conversations": args.conversations,
            "slots": args.slots,
            "ctx_per_slot": args.ctx_per_slot,
            "cache_ram_mib": args.cache_ram,
            "turns_per_loop": turns,
            "threads": 1,
        },
        "strategies": {name: summarize(loops[name]) for name in args.strategies},
    }


def _cell(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"{settings['conversations']} concurrent tool loops of {settings['turns_per_loop']} "
        f"turns on {settings['slots']} slots (1 thread, {settings['cache_ram_mib']} MiB host "
        f"prompt cache), {settings['runs']} runs; medians over every loop of every run.",
        "",
        "| strategy | evaluated prompt tokens t2 / t10 / t20 | cached t2 / t10 / t20 "
        "| TTFT ms t2 / t10 / t20 | evaluated per loop | loop s | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, data in report["strategies"].items():
        triple = " / ".join(_cell(data["evaluated"][str(t)]) for t in REPORTED_TURNS)
        cached = " / ".join(_cell(data["cached"][str(t)]) for t in REPORTED_TURNS)
        ttft = " / ".join(_cell(data["ttft_ms"][str(t)], 1) for t in REPORTED_TURNS)
        lines.append(
            f"| {name} | {triple} | {cached} | {ttft} | {_cell(data['evaluated_per_loop'])} "
            f"| {_cell(data['loop_wall_s'], 2)} | {len(data['failures'])}/{data['loops']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per strategy")
    parser.add_argument("--conversations", type=int, default=4, help="concurrent loops per run")
    parser.add_argument("--slots", type=int, default=2, help="the engine's slots (-np)")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot")
    parser.add_argument(
        "--cache-ram", type=int, default=256, help="MiB of host prompt cache (0: none)"
    )
    parser.add_argument("--answer-after", type=int, default=24, help="tool calls per loop")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument(
        "--json", type=Path, default=ROOT / "reports" / "llamacpp-continuation.json"
    )
    parser.add_argument(
        "--markdown", type=Path, default=ROOT / "reports" / "llamacpp-continuation.md"
    )
    args = parser.parse_args()
    report = asyncio.run(main(args))
    table = markdown(report)
    print(table)
    for path, data in ((args.json, codec.dumps(report)), (args.markdown, table.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {args.json} and {args.markdown}", file=sys.stderr)
    failed = any(data["failures"] for data in report["strategies"].values())
    sys.exit(1 if failed else 0)
