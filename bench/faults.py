"""``make faults``: whole agent runs with write tools through injected faults.

Runs the ``orders`` scenario (reads, and writes with an order id unique within each run)
against an in-process gateway on the simulated model with a SQLite store, through
:class:`hotloop.testing.faults.FaultProxy`, until ``--faults`` faults were injected: drops,
resets, truncated streams, stalls, half-open connections, added delay, and gateway restarts
on the same port. Fault-free runs alternate with the faulty ones, phase by phase.

Prints runs, runs completed and lost, faults by kind, writes executed twice (counted inside
the tools) and the wall-time overhead per fault: (median faulty run - median fault-free
run) / faults per faulty run. Exits 1 if a run was lost or a write executed twice.

    python bench/faults.py                   # 1,000 faults
    python bench/faults.py --faults 200 --seed 3 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable

from hotloop.testing.fault_runs import FaultRunConfig, FaultRunReport, run_fault_campaign


def _progress(target: int) -> Callable[[FaultRunReport], None]:
    def show(report: FaultRunReport) -> None:
        print(
            f"  {report.total_faults:>5}/{target} faults  {report.runs:>4} runs "
            f"({report.completed} completed, {report.lost} lost)  "
            f"writes twice: {report.writes_twice}  {report.wall_seconds:6.1f} s",
            flush=True,
        )

    return show


def summary(report: FaultRunReport) -> str:
    overhead = report.overhead_per_fault
    lines = [
        f"runs:                  {report.runs} ({report.faulty_runs} with faults, "
        f"{report.clean_runs} fault-free)",
        f"runs completed:        {report.completed}",
        f"runs lost:             {report.lost}",
        f"faults injected:       {report.total_faults} "
        f"({report.faults_per_run:.2f} per faulty run)",
    ]
    lines += [f"  {kind:<20} {count}" for kind, count in sorted(report.faults.items())]
    lines += [
        f"writes:                {report.writes}",
        f"writes executed twice: {report.writes_twice}",
        f"writes never executed: {report.writes_missing} (lost runs' writes included)",
        f"wrong final answers:   {report.wrong_answers}",
    ]
    if report.clean_seconds and report.faulty_seconds:
        lines.append(
            f"median run:            {statistics.median(report.clean_seconds) * 1000:.0f} ms "
            f"fault-free, {statistics.median(report.faulty_seconds) * 1000:.0f} ms with faults"
        )
    lines.append(
        "overhead per fault:    "
        + ("n/a" if overhead is None else f"{overhead * 1000:.0f} ms (wall time)")
    )
    lines.append(f"errors runs recovered from ({sum(report.errors.values())}):")
    lines += [f"  {count:>5}  {what}" for what, count in report.errors.most_common()]
    if report.lost_reasons:
        lines.append("why runs were lost:")
        lines += [f"  {count:>5}  {what}" for what, count in report.lost_reasons.most_common()]
    if report.gateway_errors:
        lines.append("tracebacks the gateway logged:")
        lines += [f"  {count:>5}  {what}" for what, count in report.gateway_errors.most_common()]
    lines.append(f"total time:            {report.wall_seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=1_000, help="faults to inject (1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="runs per phase (4)")
    parser.add_argument("--per-run", type=float, default=2.0, help="proxy faults per run (2)")
    parser.add_argument("--profile", default="zero", help="latency profile (zero)")
    args = parser.parse_args(argv)
    config = FaultRunConfig(
        faults=args.faults,
        seed=args.seed,
        concurrency=args.concurrency,
        faults_per_run=args.per_run,
        profile=args.profile,
    )
    print(f"injecting {config.faults} faults (seed {config.seed}) ...", flush=True)
    report = asyncio.run(run_fault_campaign(config, progress=_progress(config.faults)))
    print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
