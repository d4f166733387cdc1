"""What tracing costs the client: CPU per turn with a Tracer writing JSONL vs without.

Plays the ``coding`` scenario (``--scenario``) against a ``zero``-profile gateway in a
subprocess (``python -m hotloop.cli gateway --profile zero``), so nothing but software runs and
the CPU of this process (``time.process_time``, all threads) is the client's alone. The agent
is full hotloop (WebSocket, eager, concurrent tools) with the scenario's tools at
``time_scale=0``.

Tracing *on* passes ``trace=tracer`` to every run: a :class:`hotloop.trace.Tracer` with a
:class:`hotloop.trace.JSONLSink` to a temporary file. Its worker threads' CPU counts too: each
"on" block ends with ``tracer.flush()`` inside the measured interval, so every span of the
block is converted, encoded and written before the clock stops, and none of it leaks into an
"off" block.

Blocks are interleaved: each repetition runs one block of ``--runs`` runs with tracing off and
one with it on, in an order that alternates between repetitions, on one warm client, after an
uncounted warm-up block of each. A block's sample is its CPU divided by its model turns. The
report gives the median over repetitions for both and their ratio, and the median of each
repetition's on/off ratio (target: on ≤ 1.10 x off).

This is a benchmark, not a test: it never fails on time (it exits 1 only when a run did not
complete the scenario or spans were dropped).

    python bench/trace_overhead.py                      # coding, 9 repetitions x 8 runs
    python bench/trace_overhead.py --repetitions 15 --runs 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import hotloop
from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.runtime import Agent, Runner
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.testing import scenario_tools
from hotloop.trace import JSONLSink, Tracer
from hotloop.transport import Transport
from hotloop.wire import codec


def say(text: str) -> None:
    """Progress, on stderr."""
    print(text, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def gateway(scenario: str) -> Any:
    """A zero-profile gateway in a subprocess; yields its base URL."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotloop.cli",
        "gateway",
        "--scenario",
        scenario,
        "--profile",
        "zero",
        "--port",
        str(port),
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as probe:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the gateway exited with {process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get(f"{base_url}/models")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start within 30 s")
                await asyncio.sleep(0.1)
        yield base_url
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def block(
    agent: Agent,
    scenario: Scenario,
    client: Transport,
    runs: int,
    tracer: Tracer | None,
) -> tuple[float, int, list[str]]:
    """``runs`` runs; returns (CPU seconds, model turns, problems)."""
    problems: list[str] = []
    turns = 0
    cpu = time.process_time()
    for _ in range(runs):
        result = await Runner.run(agent, scenario.task, client=client, trace=tracer)
        turns += result.turns
        if result.turns != len(scenario.turns) or result.tool_calls != scenario.total_calls:
            problems.append(f"{result.turns} turns, {result.tool_calls} tool calls")
    if tracer is not None:
        # Inside the measured interval: the block pays for all of its spans.
        tracer.flush()
    return time.process_time() - cpu, turns, problems


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scenario = load_scenario(args.scenario)
    agent = Agent(
        f"{DEFAULT_MODEL}:{scenario.name}",
        scenario.instructions,
        scenario_tools(scenario, time_scale=0),
        max_turns=len(scenario.turns) + 5,
    )
    samples: dict[str, list[float]] = {"off": [], "on": []}
    problems: list[str] = []
    say(
        f"scenario {scenario.name} ({len(scenario.turns)} turns, {scenario.total_calls} tool "
        f"calls), profile zero, {args.repetitions} repetitions x {args.runs} runs per mode"
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.jsonl"
        sink = JSONLSink(path)
        tracer = Tracer([sink])
        async with gateway(scenario.name) as base_url:
            client = hotloop.connect(base_url)
            try:
                # Warm-up: the connection, the code paths, the caches.
                await block(agent, scenario, client, args.runs, None)
                await block(agent, scenario, client, args.runs, tracer)
                for repetition in range(args.repetitions):
                    order = ("off", "on") if repetition % 2 == 0 else ("on", "off")
                    line = []
                    for mode in order:
                        cpu, turns, failed = await block(
                            agent, scenario, client, args.runs, tracer if mode == "on" else None
                        )
                        problems.extend(failed)
                        samples[mode].append(cpu / turns * 1000)
                        line.append(f"{mode} {samples[mode][-1]:.3f} ms")
                    say(f"  repetition {repetition + 1}/{args.repetitions}: " + ", ".join(line))
            finally:
                await client.close()
        tracer.close()
        spans_written = sink.written
        file_bytes = path.stat().st_size
    off = statistics.median(samples["off"])
    on = statistics.median(samples["on"])
    # Each repetition's two blocks ran back to back: their ratio cancels slow drifts of the
    # machine (other processes, frequency scaling) that the medians of each mode keep.
    paired = statistics.median(b / a for a, b in zip(samples["off"], samples["on"], strict=True))
    report: dict[str, Any] = {
        "benchmark": "trace_overhead",
        "scenario": scenario.name,
        "scenario_turns": len(scenario.turns),
        "scenario_tool_calls": scenario.total_calls,
        "profile": "zero",
        "repetitions": args.repetitions,
        "runs_per_block": args.runs,
        "cpu_per_turn_ms": samples,
        "median_cpu_per_turn_ms": {"off": off, "on": on},
        "ratio_on_to_off": on / off,
        "median_paired_ratio": paired,
        "traced_runs": tracer.recorded,
        "dropped_runs": tracer.dropped,
        "dropped_spans": sink.dropped,
        "spans_written": spans_written,
        "trace_file_bytes": file_bytes,
        "problems": problems,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    print(
        f"\n{scenario.name} scenario ({len(scenario.turns)} turns, {scenario.total_calls} tool "
        f"calls), profile zero, gateway in a subprocess; {args.repetitions} repetitions x "
        f"{args.runs} runs per mode, interleaved; {os.cpu_count()} CPUs"
    )
    print(f"{'tracing':10}{'median':>10}{'min':>10}{'max':>10}   client CPU per turn, ms")
    for mode in ("off", "on"):
        values = samples[mode]
        print(
            f"{mode:10}{statistics.median(values):>10.3f}{min(values):>10.3f}{max(values):>10.3f}"
        )
    print(
        f"ratio on/off: {on / off:.3f} of the medians, {paired:.3f} median of the paired "
        f"ratios (target ≤ 1.10); {tracer.recorded} runs traced, "
        f"{spans_written} spans, {file_bytes / 1e6:.1f} MB of JSONL; dropped: "
        f"{tracer.dropped} runs, {sink.dropped} spans"
    )
    if problems:
        print(f"PROBLEMS: {len(problems)} runs did not complete the scenario: {problems[0]}")
    return report


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="coding")
    parser.add_argument("--repetitions", type=int, default=9, help="interleaved pairs (≥ 7)")
    parser.add_argument("--runs", type=int, default=8, help="runs per block (≥ 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = _parse()
    outcome = asyncio.run(main(arguments))
    if arguments.json is not None:
        arguments.json.write_bytes(codec.dumps(outcome))
    sys.exit(1 if outcome["problems"] or outcome["dropped_runs"] or outcome["dropped_spans"] else 0)
