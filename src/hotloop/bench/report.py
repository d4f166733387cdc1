"""``hotloop bench``'s report: per-strategy figures, as a terminal table, JSON and Markdown.

All three are drawn from one :func:`summarize` dictionary, so their numbers always match.
Warm-up runs are left out of the figures; failed runs are counted and their errors listed,
never dropped.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hotloop.bench.lower_bound import lower_bound
from hotloop.bench.runner import BenchConfig, scaled_tools
from hotloop.bench.strategies import RunRecord
from hotloop.wire import codec

__all__ = ["default_report_stem", "render_table", "summarize", "to_markdown", "write_reports"]

_PHASES = ("model_s", "tool_wait_s", "loop_s", "tool_hidden_s")


def default_report_stem(scenario: str, profile: str, rtt_ms: float) -> Path:
    """``reports/bench-<scenario>-<profile>-rtt<ms>`` (add ``.json`` / ``.md``)."""
    return Path("reports") / f"bench-{scenario}-{profile.rstrip('*')}-rtt{rtt_ms:g}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(config: BenchConfig, records: Sequence[RunRecord]) -> dict[str, Any]:
    """The report as plain data (what the JSON file holds)."""
    bound = lower_bound(scaled_tools(config.scenario, config.tool_time_scale), config.profile)
    measured = [r for r in records if r.repetition > 0]
    warmups = [r for r in records if r.repetition == 0]
    strategies: dict[str, dict[str, Any]] = {}
    for strategy in config.strategies:
        runs = [r for r in measured if r.strategy == strategy.name]
        good = [r for r in runs if r.ok]
        walls = [r.wall_s for r in good]
        strategies[strategy.name] = {
            **strategy.describe(),
            "runs": len(runs),
            "completed": len(good),
            "failed": len(runs) - len(good),
            "warmup_failed": sum(not r.ok for r in warmups if r.strategy == strategy.name),
            # Warm-up runs are left out of the figures, but not their failures.
            "failures": [
                {"repetition": r.repetition, "error": r.error}
                for r in [*warmups, *runs]
                if r.strategy == strategy.name and not r.ok
            ],
            "median_wall_s": _median(walls),
            "min_wall_s": min(walls) if walls else None,
            "max_wall_s": max(walls) if walls else None,
            "median_client_cpu_s": _median([r.client_cpu_s for r in good]),
            "requests": _median([r.requests for r in good]),
            "bytes_sent": _median([r.bytes_sent for r in good]),
            "connections_opened": _median([r.connections_opened for r in good]),
            "phases": {key: _median([r.phases[key] for r in good]) for key in _PHASES}
            if good
            else {},
        }
    naive = strategies.get("naive", {}).get("median_wall_s")
    for entry in strategies.values():
        wall = entry["median_wall_s"]
        entry["ratio_to_naive"] = wall / naive if wall is not None and naive else None
        entry["ratio_to_lower_bound"] = (
            wall / bound.total_s if wall is not None and bound.total_s > 0 else None
        )
    return {
        "benchmark": "hotloop bench",
        "scenario": config.scenario.name,
        "scenario_turns": len(config.scenario.turns),
        "scenario_tool_calls": config.scenario.total_calls,
        "profile": config.profile.name,
        "latency_overrides": list(config.latency),
        "rtt_ms": config.rtt_ms,
        "tool_time_scale": config.tool_time_scale,
        "runs": config.runs,
        "warmup_runs": config.warmup,
        "lower_bound_s": bound.total_s,
        "lower_bound_model_s": bound.model_s,
        # Across a network every turn costs at least one more round trip, and the first one a
        # TCP handshake: the bound plus (turns + 1) RTTs (still a bound for any transport).
        "lower_bound_with_rtt_s": bound.total_s
        + (len(config.scenario.turns) + 1) * config.rtt_ms / 1000,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "strategies": strategies,
        "runs_detail": [asdict(r) for r in records],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


_COLUMNS = (
    "strategy",
    "ok",
    "median s",
    "min s",
    "max s",
    "CPU s",
    "requests",
    "bytes sent",
    "/naive",
    "/bound",
)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, entry in report["strategies"].items():
        rows.append(
            [
                name,
                f"{entry['completed']}/{entry['runs']}",
                _fmt(entry["median_wall_s"], ".3f"),
                _fmt(entry["min_wall_s"], ".3f"),
                _fmt(entry["max_wall_s"], ".3f"),
                _fmt(entry["median_client_cpu_s"], ".3f"),
                _fmt(entry["requests"], ".0f"),
                _fmt(entry["bytes_sent"], ",.0f"),
                _fmt(entry["ratio_to_naive"], ".3f"),
                _fmt(entry["ratio_to_lower_bound"], ".3f"),
            ]
        )
    return rows


def _title(report: dict[str, Any]) -> str:
    warm = f", {report['warmup_runs']} warm-up" if report["warmup_runs"] else ""
    return (
        f"{report['scenario']} ({report['scenario_turns']} turns, "
        f"{report['scenario_tool_calls']} tool calls) · profile {report['profile']} · "
        f"RTT {report['rtt_ms']:g} ms · tools x{report['tool_time_scale']:g} · "
        f"{report['runs']} interleaved runs{warm} · lower bound {report['lower_bound_s']:.3f} s"
        + (f" ({report['lower_bound_with_rtt_s']:.3f} s with the RTT)" if report["rtt_ms"] else "")
    )


def _run_label(repetition: int) -> str:
    return "warm-up run" if repetition == 0 else f"run {repetition}"


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{name} {_run_label(failure['repetition'])}: {failure['error']}"
        for name, entry in report["strategies"].items()
        for failure in entry["failures"]
    ]


def render_table(report: dict[str, Any], console: Console) -> None:
    """Print the report's table (and any failures) to ``console``."""
    console.print(_title(report), style="bold", highlight=False, soft_wrap=True)
    table = Table()
    for index, column in enumerate(_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row, entry in zip(_rows(report), report["strategies"].values(), strict=True):
        style = "bold green" if row[0] == "hotloop" else None
        if entry["failed"] or entry["warmup_failed"] or not entry["runs"]:
            style = "bold red"
        table.add_row(*row, style=style)
    console.print(table)
    for line in _failures(report):
        console.print(f"[bold red]FAILED[/] {line}", highlight=False, soft_wrap=True)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section (a heading line, the table, failures, phases)."""
    lines = [f"**{_title(report)}**", ""]
    lines.append("| " + " | ".join(_COLUMNS) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(_COLUMNS) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    failures = _failures(report)
    if failures:
        lines += ["", "Failed runs:", ""] + [f"* {line}" for line in failures]
    lines += [
        "",
        "Where the time goes (medians, s): model = request sent → response done; tool wait = "
        "response done → last tool result; loop = the rest; hidden = tool time overlapping "
        "the model's stream.",
        "",
        "| strategy | wall | model | tool wait | loop | hidden |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["strategies"].items():
        p = entry["phases"]
        if p:
            lines.append(
                f"| {name} | {_fmt(entry['median_wall_s'], '.3f')} | {p['model_s']:.3f} | "
                f"{p['tool_wait_s']:.3f} | {p['loop_s']:.3f} | {p['tool_hidden_s']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def write_reports(
    report: dict[str, Any], json_path: Path | None, markdown_path: Path | None
) -> list[Path]:
    """Write the JSON and Markdown files (creating their directories); return the paths."""
    written: list[Path] = []
    for path, data in (
        (json_path, codec.dumps(report) if json_path else b""),
        (markdown_path, to_markdown(report).encode() if markdown_path else b""),
    ):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
