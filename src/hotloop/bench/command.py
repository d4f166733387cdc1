"""``hotloop bench``: the strategies side by side on the embedded model, with a live progress bar.

    hotloop bench --scenario coding --profile fast --runs 5 [--rtt-ms 40]

Prints the tables on stdout (the strategies' figures, then where the time goes), progress on
stderr, and writes the report as JSON and Markdown (default
``reports/bench-<scenario>-<profile>-rtt<ms>.{json,md}``). Exits 1 when a run did not complete
the scenario (the run is in the table and the files), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from hotloop.bench.report import default_report_stem, render_table, summarize, write_reports
from hotloop.bench.runner import BenchConfig, Progress, run_bench
from hotloop.bench.strategies import STRATEGIES, RunRecord, strategy_named
from hotloop.errors import HotloopError
from hotloop.sim.latency import PROFILES, LatencyProfile, get_profile
from hotloop.sim.scenario import bundled_scenarios, load_scenario

__all__ = ["add_arguments", "non_negative", "print_tables", "run_command"]

#: The tables' console width when stdout is not a terminal (a file, a pipe): wider than any.
_FILE_WIDTH = 10_000


def non_negative(value: str) -> float:
    """An argparse type: a finite number >= 0 (``--tool-time-scale``: 0 = instant tools)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (number >= 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument(
        "--scenario",
        default="coding",
        help=f"bundled scenario ({', '.join(bundled_scenarios())}; default: coding) or a path "
        "to a JSON file",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="fast",
        help="the simulated model's latency profile, one without tails (default: fast)",
    )
    parser.add_argument("--runs", type=int, default=5, help="repetitions per strategy (default: 5)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="uncounted warm-up repetitions (default: 0)"
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="route client-gateway traffic through a delay proxy with this round-trip time "
        "(default: 0, no proxy)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=[s.name for s in STRATEGIES],
        metavar="NAME",
        help=f"which strategies to run (default all: {', '.join(s.name for s in STRATEGIES)})",
    )
    parser.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one latency parameter of the profile, e.g. --latency ttft_s=0.5",
    )
    parser.add_argument(
        "--tool-time-scale",
        type=non_negative,
        default=1.0,
        help="multiply the scenario's tool latencies (0 = instant tools; default: 1)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the JSON report (default: "
        "reports/bench-<scenario>-<profile>-rtt<ms>.json)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the Markdown report (default: "
        "reports/bench-<scenario>-<profile>-rtt<ms>.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


#: The strategy column of the lines per run: as wide as the longest name, so the figures align.
_NAME_WIDTH = max(len(strategy.name) for strategy in STRATEGIES)


def _run_line(record: RunRecord) -> str:
    status = "[green]ok[/]" if record.ok else f"[bold red]FAILED[/] {record.error}"
    label = "warm-up" if record.repetition == 0 else f"rep {record.repetition}"
    return (
        f"{label:>7} {record.strategy:{_NAME_WIDTH}} {record.wall_s:8.3f} s  "
        f"cpu {record.client_cpu_s:6.3f} s  {status}"
    )


class _RunLines(Progress):
    """No bar: one line per finished run on stderr (``--no-progress``, logs)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def run_finished(self, record: RunRecord) -> None:
        self.console.print(_run_line(record), highlight=False)


class _ProgressView(Progress):
    """A rich progress bar on stderr: repetition, strategy, turn; a line per finished run."""

    def __init__(self, console: Console, total_runs: int, runs: int) -> None:
        self.console = console
        self.runs = runs
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("· {task.fields[strategy]} · turn {task.fields[turn]}/{task.fields[turns]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,  # redrawn at turn boundaries only: no CPU taken from the runs
            transient=True,
        )
        self.task = self.bar.add_task("runs", total=total_runs, strategy="", turn=0, turns=0)

    def run_started(self, repetition: int, strategy: str, turns: int) -> None:
        label = "warm-up" if repetition == 0 else f"rep {repetition}/{self.runs}"
        self.bar.update(self.task, description=label, strategy=strategy, turn=0, turns=turns)
        self.bar.refresh()

    def turn_finished(self, turn: int) -> None:
        self.bar.update(self.task, turn=turn)
        self.bar.refresh()

    def run_finished(self, record: RunRecord) -> None:
        self.bar.update(self.task, advance=1)
        self.bar.console.print(_run_line(record), highlight=False)
        self.bar.refresh()


def _profile(args: argparse.Namespace) -> LatencyProfile:
    overrides: dict[str, str] = {}
    for pair in args.latency:
        key, sep, value = pair.partition("=")
        if not sep:
            raise HotloopError(f"--latency takes key=value, got {pair!r}")
        overrides[key.strip()] = value
    profile = get_profile(args.profile, overrides)
    if profile.has_tails:
        # The report compares each run with a lower bound computed from the profile's
        # constants; with drawn latencies and failures that bound would not bound anything.
        raise HotloopError(
            f"profile {profile.name!r} draws tails (random latencies or failures); "
            "hotloop bench compares runs with a lower bound and needs a constant profile"
        )
    return profile


def _config(args: argparse.Namespace) -> BenchConfig:
    if args.runs < 1:
        raise HotloopError("--runs must be at least 1")
    if args.rtt_ms < 0 or args.tool_time_scale < 0 or args.warmup < 0:
        raise HotloopError("--rtt-ms, --tool-time-scale and --warmup must be non-negative")
    try:
        strategies = tuple(strategy_named(name) for name in args.strategies)
    except KeyError as exc:
        raise HotloopError(str(exc.args[0])) from None
    return BenchConfig(
        scenario=load_scenario(args.scenario),
        profile=_profile(args),
        strategies=strategies,
        runs=args.runs,
        rtt_ms=args.rtt_ms,
        tool_time_scale=args.tool_time_scale,
        warmup=args.warmup,
        latency=tuple(args.latency),
        scenario_ref=args.scenario,
    )


def print_tables(report: dict[str, Any], console: Console | None = None) -> Console:
    """Print the report's tables on stdout (or ``console``); returns the console used.

    Not on a terminal (a file, a pipe, a CI log) the console has no width to speak of, so
    that no header or cell is cut short or wrapped: rich lays each table out at its natural
    width (and pads nothing), and the output holds the same cells as the Markdown report. A
    terminal keeps its own width.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=_FILE_WIDTH)
    render_table(report, console)
    return console


def run_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``hotloop bench`` from parsed arguments; returns the exit status."""
    config = _config(args)  # raises HotloopError (exit 2) before anything starts
    errors = Console(stderr=True)
    view: _ProgressView | None = None
    if not args.no_progress:
        total = (config.runs + config.warmup) * len(config.strategies)
        view = _ProgressView(errors, total, config.runs)
    errors.print(
        f"hotloop bench: {config.scenario.name} · {config.profile.name} · RTT {config.rtt_ms:g} ms"
        f" · {len(config.strategies)} strategies x {config.runs} runs (gateway in a subprocess)",
        highlight=False,
    )
    if view is not None:
        with view.bar:
            records = asyncio.run(run_bench(config, view))
    else:
        records = asyncio.run(run_bench(config, _RunLines(errors)))
    report = summarize(config, records)
    console = print_tables(report, console)
    stem = default_report_stem(config.scenario.name, config.profile.name, config.rtt_ms)
    written = write_reports(
        report, args.json or stem.with_suffix(".json"), args.markdown or stem.with_suffix(".md")
    )
    console.print(
        "report: " + ", ".join(str(path) for path in written), highlight=False, soft_wrap=True
    )
    return 1 if any(entry["failures"] for entry in report["strategies"].values()) else 0
