"""Background compaction: the model's input stays bounded, and the summaries cost the loop nothing.

A gateway serves the embedded simulated model (``--profile``, default ``fast``: 1,000 tokens/s
decode, 200 ms to first token) in the generic mode: ``--turns`` tool turns (model id
``hotloop-sim:generic:N``), each calling the agent's one tool, which waits ``--tool-ms`` and
returns ``--output-bytes`` bytes, then an answer. So the history grows by about
``output-bytes / 4`` tokens a turn. Two strategies, interleaved (each repetition runs both,
each on its own conversation, so no run finds another's prompt in the model's prefix cache):

* ``off``: no policy: every turn's input is the whole history;
* ``compact``: ``Compact(threshold_tokens, keep_recent_tokens, summary_tokens=...)``: past the
  threshold, the older part is summarised (by the same model, ``--summary-tokens`` tokens)
  beside the turns, and switched to at the next turn boundary after the summary is in.

Per strategy it prints the median wall time, the model's input tokens per turn (the step
records' usage: the most on any turn, and the mean of the last quarter of the turns), the
uncached input tokens per run (what prefill had to process), and for ``compact``: the
summaries sent, the compactions switched to, the summaries' time, and the share of that time
off the critical path, from the trace: the part of each ``model.aside`` span during which a
``turn`` span was in progress (the loop doing its own work, not waiting for the summary),
over the summaries' spans. A summary still running when the run ended (cancelled: of no use
any more) counts up to the run's end. It also prints what the switch turns cost the loop:
tool results to the next request written (``loop.next_request``), and the time to first token
(a switch sends a new prefix, which the model must prefill), switch turns against the others.
It exits 1 when a run did not complete; it never gates on time.

    python bench/compaction.py                     # fast, 40 turns, 3 runs
    python bench/compaction.py --quick             # 20 turns, 1 run
    python bench/compaction.py --profile frontier --summary-tokens 300 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import hotloop
from hotloop.backends.sim import SimBackend, model_id
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Agent, Compact, Runner, RunResult, tool
from hotloop.sim.latency import get_profile
from hotloop.trace.spans import Span, spans_from_result

STRATEGIES = ("off", "compact")
_FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 256


def make_tool(output_bytes: int, tool_ms: float) -> Any:
    @tool(pure=True)
    async def fetch(query: str) -> str:
        """Fetch a page.

        Args:
            query: What to fetch.
        """
        await asyncio.sleep(tool_ms / 1000)
        return (f"[{query}] " + _FILLER * (output_bytes // len(_FILLER) + 1))[:output_bytes]

    return fetch


def _union(intervals: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def off_critical_path(spans: Sequence[Span]) -> tuple[int, int]:
    """(ns of the summaries' spans during which a turn was in progress, ns of their spans)."""
    turns = _union([(span.start_ns, span.end_ns) for span in spans if span.name == "turn"])
    covered = total = 0
    for span in spans:
        if span.name != "model.aside":
            continue
        total += span.duration_ns
        for start, end in turns:
            covered += max(0, min(end, span.end_ns) - max(start, span.start_ns))
    return covered, total


def measure_run(result: RunResult) -> dict[str, Any]:
    steps = result.steps
    tokens = [step.usage.input_tokens if step.usage else 0 for step in steps]
    uncached = sum(
        step.usage.input_tokens - step.usage.cached_tokens for step in steps if step.usage
    )
    spans = spans_from_result(result)
    covered, total = off_critical_path(spans)
    switches = {step.turn for step in steps[1:] if not step.incremental}
    gaps: dict[bool, list[int]] = {True: [], False: []}
    ttft: dict[bool, list[int]] = {True: [], False: []}
    for step in steps[1:]:
        if step.first_token_ns is not None:
            ttft[step.turn in switches].append(step.first_token_ns - step.request_sent_ns)
    for earlier, later in itertools.pairwise(steps):
        if earlier.tools_done_ns is not None and later.request_written_ns is not None:
            gaps[later.turn in switches].append(later.request_written_ns - earlier.tools_done_ns)
    quarter = tokens[-max(1, len(tokens) // 4) :]
    asides = result.asides
    return {
        "wall_s": result.wall_ns / 1e9,
        "turns": result.turns,
        "input_tokens": tokens,
        "max_input_tokens": max(tokens),
        "late_mean_input_tokens": statistics.fmean(quarter),
        "uncached_input_tokens": uncached,
        "summaries": len(asides),
        "summaries_finished": sum(aside.response_done_ns is not None for aside in asides),
        "switches": len(switches),
        "summary_s": total / 1e9,
        "summary_off_critical_s": covered / 1e9,
        "switch_gap_us": [gap / 1e3 for gap in gaps[True]],
        "other_gap_us": [gap / 1e3 for gap in gaps[False]],
        "switch_ttft_ms": [value / 1e6 for value in ttft[True]],
        "other_ttft_ms": [value / 1e6 for value in ttft[False]],
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = get_profile(args.profile)
    backend = SimBackend(profile=profile)
    model = model_id(None, f"generic:{args.turns}")
    fetch = make_tool(args.output_bytes, args.tool_ms)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in STRATEGIES}
    failures = 0
    stamp = f"{time.time_ns()}"
    async with GatewayServer(backend, GatewayConfig()) as server:
        for run in range(args.runs):
            for name in STRATEGIES[run % 2 :] + STRATEGIES[: run % 2]:
                policies = []
                if name == "compact":
                    policies = [
                        Compact(
                            args.threshold,
                            args.keep,
                            summary_tokens=args.summary_tokens,
                        )
                    ]
                agent = Agent(
                    model,
                    "Read what you are asked to.",
                    [fetch],
                    policies=policies,
                    max_turns=args.turns + 5,
                )
                task = f"Read every page. (session {stamp}-{name}-{run})"
                async with hotloop.connect(server.base_url) as client:
                    result = await Runner.run(agent, task, client=client)
                ok = result.turns == args.turns + 1 and result.final_output.startswith(
                    f"Done after {args.turns} "
                )
                failures += not ok
                sample = measure_run(result)
                sample["ok"] = ok
                samples[name].append(sample)
                print(
                    f"  run {run + 1} {name:8} {sample['wall_s']:7.3f} s  "
                    f"max input {sample['max_input_tokens']:6d} tokens  "
                    f"summaries {sample['summaries']}",
                    file=sys.stderr,
                )
    return {
        "profile": profile.name,
        "turns": args.turns,
        "output_bytes": args.output_bytes,
        "tool_ms": args.tool_ms,
        "threshold_tokens": args.threshold,
        "keep_recent_tokens": args.keep,
        "summary_tokens": args.summary_tokens,
        "runs": args.runs,
        "failures": failures,
        "samples": samples,
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(result: dict[str, Any]) -> str:
    lines = [
        f"profile {result['profile']}, {result['turns']} tool turns of "
        f"{result['output_bytes']} bytes ({result['tool_ms']:g} ms), Compact("
        f"{result['threshold_tokens']}, {result['keep_recent_tokens']}, summary_tokens="
        f"{result['summary_tokens']}), {result['runs']} runs",
        "",
        "| strategy | wall (median) | max input tokens / turn | mean, last quarter | "
        "uncached input tokens / run | summaries (finished) | switches | summary time | "
        "off the critical path |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in result["samples"].items():
        summary_s = sum(run["summary_s"] for run in runs)
        off = sum(run["summary_off_critical_s"] for run in runs)
        share = f"{off / summary_s:.1%}" if summary_s else "-"
        lines.append(
            f"| {name} | {_median([r['wall_s'] for r in runs]):.3f} s | "
            f"{max(r['max_input_tokens'] for r in runs):,} | "
            f"{_median([r['late_mean_input_tokens'] for r in runs]):,.0f} | "
            f"{_median([r['uncached_input_tokens'] for r in runs]):,.0f} | "
            f"{sum(r['summaries'] for r in runs)} ({sum(r['summaries_finished'] for r in runs)})"
            f" | {sum(r['switches'] for r in runs)} | {summary_s:.3f} s | {share} |"
        )
    compact = result["samples"]["compact"]
    switch = [gap for run in compact for gap in run["switch_gap_us"]]
    other = [gap for run in compact for gap in run["other_gap_us"]]
    switch_ttft = [value for run in compact for value in run["switch_ttft_ms"]]
    other_ttft = [value for run in compact for value in run["other_ttft_ms"]]
    off_ttft = [value for run in result["samples"]["off"] for value in run["other_ttft_ms"]]
    lines += [
        "",
        f"compact: tool results to next request written, median {_median(switch):.0f} us on "
        f"switch turns ({len(switch)}), {_median(other):.0f} us on the others ({len(other)})",
        f"compact: time to first token, median {_median(switch_ttft):.0f} ms on switch turns "
        f"(the compacted context is prefilled: it is a new prefix), {_median(other_ttft):.0f} ms "
        f"on the others; off: {_median(off_ttft):.0f} ms",
        "input tokens per turn, first run: "
        + ", ".join(
            f"{name} {result['samples'][name][0]['input_tokens'][::5]}" for name in STRATEGIES
        )
        + " (every 5th turn)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--output-bytes", type=int, default=4000)
    parser.add_argument("--tool-ms", type=float, default=100.0)
    parser.add_argument("--threshold", type=int, default=16_000)
    parser.add_argument("--keep", type=int, default=4_000)
    parser.add_argument("--summary-tokens", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 turns, 1 run")
    parser.add_argument("--json", help="write the report (with every sample) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.runs = 20, 1
    result = asyncio.run(measure(args))
    print(report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
