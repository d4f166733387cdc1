"""``hotloop bench``'s report: per-strategy figures, as terminal tables, JSON and Markdown.

All three are drawn from one :func:`summarize` dictionary, so their numbers always match. The
two tables (the strategies' figures, and where the time goes) are each defined once, as a
:class:`TextTable` of formatted cells (:func:`strategy_table`, :func:`phase_table`); the
terminal and the Markdown only lay those cells out, so a figure cannot be formatted one way
on screen and another in the file. Warm-up runs are left out of the figures; failed runs are
counted and their errors listed, never dropped.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hotloop.bench.lower_bound import room
from hotloop.bench.runner import BenchConfig, scaled_tools
from hotloop.bench.strategies import RunRecord
from hotloop.wire import codec

__all__ = [
    "percentile",
    "TextTable",
    "avoidance_table",
    "default_report_stem",
    "phase_table",
    "render_table",
    "strategy_table",
    "summarize",
    "to_markdown",
    "write_reports",
]

_PHASES = ("model_s", "tool_wait_s", "loop_s", "tool_hidden_s")


def default_report_stem(scenario: str, profile: str, rtt_ms: float) -> Path:
    """``reports/bench-<scenario>-<profile>-rtt<ms>`` (add ``.json`` / ``.md``)."""
    return Path("reports") / f"bench-{scenario}-{profile.rstrip('*')}-rtt{rtt_ms:g}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``nan`` when empty): the p99 of 200 values is
    the 198th smallest. Every benchmark's p50 / p99 tail figures are this one."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(config: BenchConfig, records: Sequence[RunRecord]) -> dict[str, Any]:
    """The report as plain data (what the JSON file holds)."""
    avoidable = room(scaled_tools(config.scenario, config.tool_time_scale), config.profile)
    bound = avoidable.bound
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
            "cache_hits": _median([r.cache_hits for r in good]),
            "speculations_used": _median([r.speculations_used for r in good]),
            "speculations_wasted": _median([r.speculations_wasted for r in good]),
            "invalidations": _median([r.invalidations for r in good]),
            "summaries": _median([r.summaries for r in good]),
            "digests": sorted({r.outputs_digest for r in good}),
        }
    naive = strategies.get("naive", {}).get("median_wall_s")
    plain = strategies.get("hotloop", {})
    for entry in strategies.values():
        # The share of the room recovered, against plain hotloop's median (None without it).
        wall, base = entry["median_wall_s"], plain.get("median_wall_s")
        entry["room_recovered"] = (
            (base - wall) / avoidable.room_s
            if wall is not None and base is not None and avoidable.room_s > 0
            else None
        )
        entry["speedup_vs_hotloop"] = base / wall if wall and base is not None else None
        # Every good run got the tool results plain hotloop's runs got (None: nothing to compare).
        reference = plain.get("digests") or []
        entry["outputs_identical_to_hotloop"] = (
            entry["digests"] == reference if len(reference) == 1 and entry["digests"] else None
        )
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
        "room": avoidable.describe(),
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


@dataclass(frozen=True, slots=True)
class TextTable:
    """A table as formatted cells: what both the terminal and the Markdown show.

    ``styles`` holds one rich style per row (``None``: plain), for the terminal only; the first
    column is left-aligned, the others right-aligned, in both renderings.
    """

    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    styles: tuple[str | None, ...]


def _row_style(name: str, entry: dict[str, Any]) -> str | None:
    """Failures in red, hotloop in green: the rows to look at first."""
    if entry["failed"] or entry["warmup_failed"] or not entry["runs"]:
        return "bold red"
    return "bold green" if name == "hotloop" else None


def _title(report: dict[str, Any]) -> str:
    warm = f", {report['warmup_runs']} warm-up" if report["warmup_runs"] else ""
    return (
        f"{report['scenario']} ({report['scenario_turns']} turns, "
        f"{report['scenario_tool_calls']} tool calls) · profile {report['profile']} · "
        f"RTT {report['rtt_ms']:g} ms · tools x{report['tool_time_scale']:g} · "
        f"{report['runs']} interleaved runs{warm} · lower bound {report['lower_bound_s']:.3f} s"
        + (f" ({report['lower_bound_with_rtt_s']:.3f} s with the RTT)" if report["rtt_ms"] else "")
    )


def strategy_table(report: dict[str, Any]) -> TextTable:
    """Each strategy's runs, wall times, CPU, traffic, and ratios to naive and to the bound."""
    rows = []
    styles = []
    for name, entry in report["strategies"].items():
        rows.append(
            (
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
            )
        )
        styles.append(_row_style(name, entry))
    columns = (
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
    return TextTable(_title(report), columns, tuple(rows), tuple(styles))


def avoidance_table(report: dict[str, Any]) -> TextTable:
    """The strategies with work-avoidance policies, against plain hotloop and the room."""
    rows = []
    styles = []
    for name, entry in report["strategies"].items():
        if not entry.get("policies") and name != "hotloop":
            continue
        identical = entry.get("outputs_identical_to_hotloop")
        rows.append(
            (
                name,
                _fmt(entry["median_wall_s"], ".3f"),
                _fmt(entry.get("speedup_vs_hotloop"), ".3f"),
                _fmt(entry.get("room_recovered"), ".1%"),
                _fmt(entry.get("cache_hits"), ".0f"),
                _fmt(entry.get("speculations_used"), ".0f")
                + "/"
                + _fmt(entry.get("speculations_wasted"), ".0f"),
                _fmt(entry.get("invalidations"), ".0f"),
                _fmt(entry.get("summaries"), ".0f"),
                "—" if identical is None else ("yes" if identical else "NO"),
            )
        )
        styles.append(_row_style(name, entry))
    room = report["room"]
    caption = (
        f"Avoidable work (medians): room {room['room_s']:.3f} s = lower bound "
        f"{room['lower_bound_s']:.3f} s - {room['without_repeats_and_predicted_s']:.3f} s "
        f"without {room['repeats']} cacheable repeats ({room['without_repeats_s']:.3f} s without "
        f"those alone) and {room['predicted_reads']} predicted reads; recovered = (hotloop - "
        "strategy) / room; same results = every tool result the model got equals hotloop's."
    )
    return TextTable(
        caption,
        (
            "strategy",
            "median s",
            "speed-up",
            "recovered",
            "hits",
            "spec used/wasted",
            "invalidated",
            "summaries",
            "same results",
        ),
        tuple(rows),
        tuple(styles),
    )


def phase_table(report: dict[str, Any]) -> TextTable:
    """Where each strategy's median run spent its time; strategies without a good run are
    left out (they have no phases to split)."""
    rows = []
    styles = []
    for name, entry in report["strategies"].items():
        p = entry["phases"]
        if p:
            rows.append(
                (
                    name,
                    _fmt(entry["median_wall_s"], ".3f"),
                    f"{p['model_s']:.3f}",
                    f"{p['tool_wait_s']:.3f}",
                    f"{p['loop_s']:.3f}",
                    f"{p['tool_hidden_s']:.3f}",
                )
            )
            styles.append(_row_style(name, entry))
    return TextTable(
        "Where the time goes (medians, s): model = request sent → response done; tool wait = "
        "response done → last tool result; loop = the rest; hidden = tool time overlapping "
        "the model's stream.",
        ("strategy", "wall", "model", "tool wait", "loop", "hidden"),
        tuple(rows),
        tuple(styles),
    )


def _run_label(repetition: int) -> str:
    return "warm-up run" if repetition == 0 else f"run {repetition}"


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{name} {_run_label(failure['repetition'])}: {failure['error']}"
        for name, entry in report["strategies"].items()
        for failure in entry["failures"]
    ]


def _rich_table(table: TextTable) -> Table:
    """``table`` for a console: in one narrower than the table, headers wrap and long cells
    fold onto a second line (the first column, the row's name, stays whole); nothing is cut."""
    rich = Table()
    for index, column in enumerate(table.columns):
        if index == 0:
            rich.add_column(column, no_wrap=True)
        else:
            rich.add_column(column, justify="right", overflow="fold")
    for row, style in zip(table.rows, table.styles, strict=True):
        rich.add_row(*row, style=style)
    return rich


def render_table(report: dict[str, Any], console: Console) -> None:
    """Print the report's tables (and any failures, last, where they are seen) to ``console``.

    The same tables as :func:`to_markdown` writes; where the time goes is left out when no
    strategy completed a run.
    """
    summary = strategy_table(report)
    console.print(summary.caption, style="bold", highlight=False, soft_wrap=True)
    console.print(_rich_table(summary))
    phases = phase_table(report)
    if phases.rows:
        console.print(phases.caption, highlight=False, soft_wrap=True)
        console.print(_rich_table(phases))
    avoided = avoidance_table(report)
    if len(avoided.rows) > 1:
        console.print(avoided.caption, highlight=False, soft_wrap=True)
        console.print(_rich_table(avoided))
    for line in _failures(report):
        console.print(f"[bold red]FAILED[/] {line}", highlight=False, soft_wrap=True)


def _markdown_table(table: TextTable) -> list[str]:
    return [
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(table.columns) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in table.rows),
    ]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section (a heading line, the table, failures, phases)."""
    summary = strategy_table(report)
    lines = [f"**{summary.caption}**", "", *_markdown_table(summary)]
    failures = _failures(report)
    if failures:
        lines += ["", "Failed runs:", ""] + [f"* {line}" for line in failures]
    phases = phase_table(report)
    lines += ["", phases.caption, "", *_markdown_table(phases)]
    avoided = avoidance_table(report)
    if len(avoided.rows) > 1:
        lines += ["", avoided.caption, "", *_markdown_table(avoided)]
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
