"""The HTML waterfall report: runs on one time axis, in one self-contained file.

:func:`write_report` takes finished runs (:class:`ReportRun`: a name, the
:class:`~hotloop.runtime.RunResult`, the transport's counters, and any problems found when the
run was checked) and writes an HTML page that needs nothing but a browser: the styles are
inline, every waterfall is inline SVG, there is no script, font or image to fetch. Each bar
carries a ``<title>``, which browsers show on hover.

Two producers share it: ``hotloop demo`` (its naive and hotloop runs, with the scenario they
played) and ``hotloop report`` (any traced run). A trace is turned back into runs by
:func:`runs_from_spans`, so :func:`write_report` also takes spans, or the
:class:`~hotloop.trace.MemorySink` holding them, in place of runs::

    write_report("runs.html", sink)  # after tracer.flush()

Every waterfall is drawn from :func:`hotloop.trace.timeline_from_result`; this module only
lays the bars out. All waterfalls share one scale (pixels per second), so a faster run is a
visibly shorter picture. Tool calls of one turn that share a name share a row in the timeline;
when their bars overlap they are drawn in separate lanes of that row, so overlap stays visible.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from hotloop.errors import HotloopError
from hotloop.runtime.events import RunResult
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario
from hotloop.trace.sinks import MemorySink
from hotloop.trace.spans import Span, group_traces, steps_from_spans
from hotloop.trace.timeline import PHASES, Bar, phase_totals, timeline_from_result
from hotloop.transport.base import TransportStats
from hotloop.wire.responses import Usage

__all__ = [
    "PHASE_COLORS",
    "ReportRun",
    "connections_opened",
    "render_report",
    "runs_from_spans",
    "tick_step",
    "write_report",
]

#: Fill colour of each phase's bars (and of its legend swatch).
PHASE_COLORS = {
    "model.wait": "#9db8e8",
    "model.generation": "#2450b2",
    "tool.wait": "#f2b233",
    "tool.run": "#1f9d55",
    "tool.speculation": "#17a2b8",
    "model.aside": "#a05cc4",
}

_PHASE_NAMES = {
    "model.wait": "model wait",
    "model.generation": "generation",
    "tool.wait": "tool wait",
    "tool.run": "tool run",
    "tool.speculation": "speculation",
    "model.aside": "aside",
}

_PHASE_HELP = {
    "model.wait": "request sent → first token (network, server queue, prefill)",
    "model.generation": "first token → response complete",
    "tool.wait": "arguments complete → tool started (waiting for the turn or for a slot)",
    "tool.run": "tool started → tool finished",
    "tool.speculation": "a read run before the model asked (used or wasted)",
    "model.aside": "a request sent beside the turns (a summary)",
}

# Geometry of a waterfall, in SVG user units (pixels at 100 % zoom).
_LABEL_W = 190
_PLOT_W = 860
_RIGHT_W = 70
_ROW_H = 14
_BAR_H = 10
_AXIS_H = 24


@dataclass(frozen=True, slots=True)
class ReportRun:
    """One run as the report shows it.

    ``result`` is ``None`` when the run raised; ``problems`` lists what failed, either the
    exception or the checks of the run against its scenario. A run with problems is drawn (when
    it has a result) under a failure banner, never left out.
    """

    name: str
    title: str
    description: str
    result: RunResult | None
    stats: TransportStats | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems


def connections_opened(run: ReportRun) -> int | None:
    """How many connections the run's transport opened; ``None`` when nothing says.

    The transport's counter when it keeps one, else the turns whose request had to open a
    connection (the runner records when that happened).
    """
    counted = run.stats.connections_opened if run.stats is not None else 0
    if run.result is not None:
        counted = max(counted, sum(s.connect_start_ns is not None for s in run.result.steps))
    return counted or None


def _attribute_int(span: Span, key: str) -> int:
    value = span.attributes.get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


def runs_from_spans(spans: Iterable[Span]) -> list[ReportRun]:
    """Each trace among ``spans`` as a run to report, in the order the traces first appear.

    A trace keeps every time the waterfall needs (:func:`~hotloop.trace.steps_from_spans`), but
    not the conversation, the final answer or the transport's counters: those stay empty, and
    the report shows what the trace holds. A span seen twice (the same file read twice) counts
    once. Raises :class:`~hotloop.errors.HotloopError` for a trace without a root span.
    """
    unique: dict[tuple[str, str], Span] = {}
    for span in spans:
        unique.setdefault((span.trace_id, span.span_id), span)
    runs: list[ReportRun] = []
    for trace_id, trace in group_traces(unique.values()).items():
        root = next((span for span in trace if span.parent_id is None), None)
        if root is None:
            raise HotloopError(f"trace {trace_id} has no root span (was the file cut short?)")
        steps = steps_from_spans(trace)
        run_name = str(root.attributes.get("hotloop.run.name", root.name))
        result = RunResult(
            final_output="",
            items=(),
            usage=Usage(
                input_tokens=_attribute_int(root, "gen_ai.usage.input_tokens"),
                output_tokens=_attribute_int(root, "gen_ai.usage.output_tokens"),
            ),
            steps=tuple(steps),
            last_response_id=steps[-1].response_id if steps else None,
            wall_ns=root.duration_ns,
            started_ns=root.start_ns,
        )
        description = f"trace {trace_id}"
        started = root.attributes.get("hotloop.run.start_unix_ns")
        if isinstance(started, int):
            when = datetime.fromtimestamp(started / 1e9, UTC)
            description += f" · started {when:%Y-%m-%d %H:%M:%S} UTC"
        slug = re.sub(r"[^\w.-]+", "-", run_name).strip("-") or "run"
        runs.append(ReportRun(slug, run_name, description, result))
    return runs


def _distinct(runs: Sequence[ReportRun]) -> list[ReportRun]:
    """``runs`` with repeated names and titles numbered (``run #1``, ``run #2``, …).

    Names become element ids and titles column headings, so both must tell runs apart; a trace
    file of many runs of one agent repeats the same run name.
    """
    names = Counter(run.name for run in runs)
    titles = Counter(run.title for run in runs)
    seen_names: Counter[str] = Counter()
    seen_titles: Counter[str] = Counter()
    distinct = []
    for run in runs:
        seen_names[run.name] += 1
        seen_titles[run.title] += 1
        name = f"{run.name}-{seen_names[run.name]}" if names[run.name] > 1 else run.name
        title = f"{run.title} #{seen_titles[run.title]}" if titles[run.title] > 1 else run.title
        distinct.append(
            replace(run, name=name, title=title) if run.name != name or run.title != title else run
        )
    return distinct


def _as_runs(
    runs: Sequence[ReportRun] | Iterable[Span] | MemorySink,
) -> tuple[list[ReportRun], bool]:
    """The runs to draw, and whether they came from a trace (spans) rather than as runs."""
    items: list[object] = list(runs.spans if isinstance(runs, MemorySink) else runs)
    if not items:
        raise HotloopError("nothing to report: no runs (and no spans)")
    if all(isinstance(item, Span) for item in items):
        return runs_from_spans(item for item in items if isinstance(item, Span)), True
    if all(isinstance(item, ReportRun) for item in items):
        return [item for item in items if isinstance(item, ReportRun)], False
    raise TypeError("write_report takes ReportRun objects, or the spans of a trace, not a mix")


def tick_step(span_s: float, max_ticks: int = 12) -> float:
    """A round tick interval in seconds (1, 2 or 5 times a power of ten), at most ``max_ticks``."""
    if span_s <= 0:
        return 1.0
    raw = span_s / max_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * magnitude >= raw:
            return factor * magnitude
    raise AssertionError("unreachable: factor 10 always covers raw")  # pragma: no cover


def _color(kind: str) -> str:
    return PHASE_COLORS.get(kind, "#8a8f99")


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.2f} s"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _tick_label(seconds: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{seconds:.{decimals}f} s"


#: A bar of the second kind right after one of the first, on the same row, continues it.
_CONTINUES = {"model.generation": "model.wait", "tool.run": "tool.wait"}


def _lanes(bars: Sequence[Bar]) -> tuple[list[tuple[Bar, int]], list[str]]:
    """Each bar with its lane index, and the label of every lane, top to bottom.

    One lane per model turn and one per tool call: a turn's generation continues its wait, a
    call's run continues its wait, and every other bar opens a lane. (The timeline names a
    row after the tool, so two calls of one tool in one turn share a row; separate lanes keep
    both calls, and their overlap, visible.)
    """
    labels: list[str] = []
    placed: list[tuple[Bar, int]] = []
    previous: Bar | None = None
    for bar in bars:
        continued = (
            previous is not None
            and previous.row == bar.row
            and _CONTINUES.get(bar.kind) == previous.kind
        )
        if not continued:
            labels.append(bar.row)
        placed.append((bar, len(labels) - 1))
        previous = bar
    return placed, labels


def _row_label(row: str) -> tuple[str, bool]:
    """The label shown for a timeline row, and whether it is a model row."""
    turn, _, what = row.partition(" · ")
    if what == "model":
        return f"{turn} · model", True
    return what or row, False


def _waterfall_svg(run: ReportRun, bars: Sequence[Bar], span_ns: int) -> str:
    assert run.result is not None
    placed, labels = _lanes(bars)
    scale = _PLOT_W / span_ns  # user units per nanosecond, shared by every waterfall
    plot_h = max(1, len(labels)) * _ROW_H
    width = _LABEL_W + _PLOT_W + _RIGHT_W
    height = _AXIS_H + plot_h + _AXIS_H
    top = _AXIS_H
    parts = [
        f'<svg class="waterfall" data-run="{html.escape(run.name)}" data-bars="{len(bars)}" '
        f'data-rows="{len(labels)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(run.title)}: waterfall of {run.result.turns} model turns '
        f'and {run.result.tool_calls} tool calls">'
    ]
    # Turn bands: alternate shading so each turn's model row and tool rows read as a group.
    turn_of_lane = [label.partition(" · ")[0] for label in labels]
    band_start = 0
    for index in range(1, len(labels) + 1):
        if index == len(labels) or turn_of_lane[index] != turn_of_lane[band_start]:
            number = turn_of_lane[band_start].removeprefix("turn ")
            if number.isdigit() and int(number) % 2 == 0:
                parts.append(
                    f'<rect class="band" x="0" y="{top + band_start * _ROW_H}" width="{width}" '
                    f'height="{(index - band_start) * _ROW_H}" fill="#f3f4f7"/>'
                )
            band_start = index
    # Time grid and tick labels, above and below the plot.
    step_s = tick_step(span_ns / 1e9)
    ticks = int(span_ns / 1e9 / step_s + 1e-9)
    for tick in range(ticks + 1):
        seconds = tick * step_s
        x = _LABEL_W + seconds * 1e9 * scale
        label = _tick_label(seconds, step_s)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
            f'y2="{top + plot_h + 4}" stroke="#d5d8de" stroke-width="1"/>'
            f'<text class="tick" x="{x:.1f}" y="{top - 8}" text-anchor="middle">{label}</text>'
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{label}</text>'
        )
    parts.append(
        f'<text class="tick axis" x="6" y="{top + plot_h + 16}">time since the run started'
        " &#8594;</text>"
    )
    # Row labels.
    for lane, row in enumerate(labels):
        text, is_model = _row_label(row)
        y = top + lane * _ROW_H + _ROW_H - 3.5
        css = "row model" if is_model else "row tool"
        x = 6 if is_model else 22
        parts.append(f'<text class="{css}" x="{x}" y="{y:.1f}">{html.escape(text)}</text>')
    # Bars.
    for bar, lane in placed:
        x = _LABEL_W + bar.start_ns * scale
        w = max(1.5, bar.duration_ns * scale)
        y = top + lane * _ROW_H + (_ROW_H - _BAR_H) / 2
        tip = (
            f"{bar.row} — {_PHASE_NAMES.get(bar.kind, bar.kind)} {_ms(bar.duration_ns)} "
            f"({bar.start_ns / 1e9:.3f} s → {bar.end_ns / 1e9:.3f} s)"
        )
        if bar.label:
            tip += f" · {bar.label}"
        parts.append(
            f'<rect class="bar" data-kind="{bar.kind}" x="{x:.2f}" y="{y:.1f}" '
            f'width="{w:.2f}" height="{_BAR_H}" rx="1.5" '
            f'fill="{_color(bar.kind)}"><title>{html.escape(tip)}</title></rect>'
        )
    # The end of the run.
    end_x = _LABEL_W + run.result.wall_ns * scale
    # The label goes right of the line, or left of it when the run ends near the axis' end.
    label_x, anchor = (
        (end_x + 4, "start") if end_x < _LABEL_W + _PLOT_W - 60 else (end_x - 4, "end")
    )
    parts.append(
        f'<line class="end" x1="{end_x:.1f}" y1="{top - 4}" x2="{end_x:.1f}" '
        f'y2="{top + plot_h + 4}" stroke="#c62828" stroke-width="1.5" stroke-dasharray="4 3"/>'
        f'<text class="end" x="{label_x:.1f}" y="{top + 10}" text-anchor="{anchor}">'
        f"done {_seconds(run.result.wall_ns)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _phase_table(bars: Sequence[Bar], wall_ns: int) -> str:
    totals = phase_totals(bars)
    counts = {kind: sum(1 for bar in bars if bar.kind == kind) for kind in totals}
    rows = []
    for kind in totals:
        share = totals[kind] / wall_ns * 100 if wall_ns else 0.0
        rows.append(
            f'<tr><td><span class="swatch" style="background:{_color(kind)}"></span>'
            f"{_PHASE_NAMES.get(kind, kind)}</td><td>{counts.get(kind, 0)}</td>"
            f"<td>{_seconds(totals[kind])}</td><td>{share:.0f} %</td></tr>"
        )
    return (
        '<table class="phases"><thead><tr><th>phase</th><th>bars</th><th>total</th>'
        "<th>of wall time</th></tr></thead><tbody>"
        + "".join(rows)
        + f'<tr class="wall"><td>wall time</td><td></td><td>{_seconds(wall_ns)}</td>'
        "<td>100 %</td></tr></tbody></table>"
    )


def _problems(run: ReportRun) -> str:
    if run.ok:
        return ""
    items = "".join(f"<li>{html.escape(problem)}</li>" for problem in run.problems)
    if run.result is None and not items:
        items = "<li>the run produced no result</li>"
    return (
        f'<div class="failure" data-run="{html.escape(run.name)}"><strong>FAILED: '
        f"{html.escape(run.title)} did not complete the scenario.</strong><ul>{items}</ul></div>"
    )


def _run_section(run: ReportRun, span_ns: int) -> str:
    head = (
        f'<section class="run" id="run-{html.escape(run.name)}" data-run="{html.escape(run.name)}">'
        f"<h2>{html.escape(run.title)}</h2><p class='what'>{html.escape(run.description)}</p>"
        + _problems(run)
    )
    if run.result is None:
        return head + "</section>"
    bars = timeline_from_result(run.result)
    result = run.result
    facts = [
        f"{_seconds(result.wall_ns)} wall",
        f"{result.turns} model turns",
        f"{result.tool_calls} tool calls",
    ]
    if run.stats is not None:
        facts += [
            f"{run.stats.requests} requests",
            f"{run.stats.bytes_sent:,} bytes sent",
            f"{connections_opened(run) or 'n/a'} connection(s)",
        ]
    return (
        head
        + f'<p class="facts">{" · ".join(facts)}</p>'
        + f'<div class="chart">{_waterfall_svg(run, bars, span_ns)}</div>'
        + _phase_table(bars, result.wall_ns)
        + "</section>"
    )


def _speedup(speedup: float) -> str:
    """``speedup`` (baseline time / contender time) in words, whichever way it went."""
    if speedup >= 1:
        return f"{speedup:.2f}&times; faster"
    return f"{1 / speedup:.2f}&times; slower"


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}&times;" if old else "&ndash;"


def _comparison(runs: Sequence[ReportRun], versus: bool) -> str:
    """The headline figures, and a table of every run side by side.

    With ``versus`` the first run is the baseline and the last the contender (the demo): the
    headline and the last column compare those two. Runs read from traces have no such roles.
    """
    done = [run for run in runs if run.result is not None]
    headline = ""
    if versus and len(done) >= 2 and done[0].result is not None and done[-1].result is not None:
        base, best = done[0], done[-1]
        assert base.result is not None and best.result is not None
        speedup = base.result.wall_ns / max(1, best.result.wall_ns)
        headline = (
            f'<p class="headline"><strong>{html.escape(best.title)}</strong> finished in '
            f"<strong>{_seconds(best.result.wall_ns)}</strong>, "
            f"{html.escape(base.title)} in <strong>{_seconds(base.result.wall_ns)}</strong>: "
            f'<strong class="speedup">{_speedup(speedup)}</strong>.</p>'
        )
    metrics: list[tuple[str, list[float | None]]] = [
        ("wall time (s)", [r.result.wall_ns / 1e9 if r.result else None for r in runs]),
        ("model turns", [r.result.turns if r.result else None for r in runs]),
        ("tool calls", [r.result.tool_calls if r.result else None for r in runs]),
        ("bytes sent", [r.stats.bytes_sent if r.stats else None for r in runs]),
        ("requests", [r.stats.requests if r.stats else None for r in runs]),
        ("connections", [connections_opened(r) for r in runs]),
    ]
    header = "".join(f"<th>{html.escape(run.title)}</th>" for run in runs)
    ratio_head = (
        f"<th>{html.escape(runs[-1].title)} / {html.escape(runs[0].title)}</th>"
        if versus and len(runs) >= 2
        else ""
    )
    rows = []
    for name, values in metrics:
        cells = "".join(
            "<td>&ndash;</td>"
            if value is None
            else f"<td>{value:,.2f}</td>"
            if name.startswith("wall")
            else f"<td>{int(value):,}</td>"
            for value in values
        )
        ratio = ""
        if versus and len(values) >= 2:
            first, last = values[0], values[-1]
            comparable = runs[0].result is not None and runs[-1].result is not None
            shown = _ratio(last, first) if comparable and first and last is not None else None
            ratio = f"<td>{shown or '&ndash;'}</td>"
        rows.append(f"<tr><td>{name}</td>{cells}{ratio}</tr>")
    return (
        headline
        + '<div class="chart"><table class="compare">'
        + f"<thead><tr><th></th>{header}{ratio_head}</tr></thead>"
        + f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _legend() -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{_color(kind)}"></span>'
        f"<strong>{_PHASE_NAMES.get(kind, kind)}</strong> — "
        f"{html.escape(_PHASE_HELP.get(kind, kind))}</li>"
        for kind in PHASES
    )
    return (
        f'<ul class="legend">{items}<li><span class="swatch end"></span>'
        "<strong>done</strong> — the run returned its final answer</li></ul>"
    )


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
  sans-serif; color: #1d2330; background: #fff; margin: 24px auto; max-width: 1160px;
  padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 2px; }
p { margin: 4px 0; }
.sub, .what, .facts { color: #4a5262; }
.task { background: #f6f7f9; border-left: 3px solid #9aa3b2; padding: 6px 10px; margin: 8px 0;
  font-size: 13px; }
.headline { font-size: 16px; margin: 14px 0 8px; }
.speedup { color: #1f7a3f; }
table { border-collapse: collapse; margin: 8px 0 4px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 12px; border-bottom: 1px solid #e3e6eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #c9ced7; }
tr.wall td { font-weight: 600; border-bottom: none; }
.legend { list-style: none; padding: 0; margin: 12px 0 0; display: flex; flex-wrap: wrap;
  gap: 4px 22px; font-size: 13px; }
.swatch { display: inline-block; width: 14px; height: 10px; border-radius: 2px;
  margin-right: 6px; vertical-align: baseline; }
.swatch.end { width: 0; height: 12px; border-left: 2px dashed #c62828; border-radius: 0; }
.chart { overflow-x: auto; }
svg.waterfall { display: block; max-width: 100%; height: auto; margin: 6px 0;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
svg .tick { font-size: 10px; fill: #6b7280; }
svg .row { font-size: 10.5px; fill: #374151; }
svg .row.model { font-weight: 600; fill: #1d2330; }
svg text.end { font-size: 11px; font-weight: 600; fill: #c62828; }
.failure { background: #fdecea; border: 2px solid #c62828; color: #8e1c1c; padding: 8px 12px;
  margin: 10px 0; border-radius: 4px; }
.failure ul { margin: 4px 0 0; }
footer { margin-top: 28px; color: #6b7280; font-size: 12px; }
"""


def render_report(
    runs: Sequence[ReportRun] | Iterable[Span] | MemorySink,
    scenario: Scenario | None = None,
    profile: LatencyProfile | str | None = None,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    versus: bool | None = None,
) -> str:
    """The report as one HTML document (see :func:`write_report`)."""
    drawn, from_trace = _as_runs(runs)
    if versus is None:
        versus = not from_trace
    drawn = _distinct(drawn)
    spans = [run.result.wall_ns for run in drawn if run.result is not None]
    span_ns = max([1, *spans])
    # Round the shared axis up to a whole tick, so every waterfall ends on a labelled tick.
    step_ns = int(tick_step(span_ns / 1e9) * 1e9)
    span_ns = max(step_ns, math.ceil(span_ns / step_ns) * step_ns)
    failed = [run for run in drawn if not run.ok]
    status = (
        f'<div class="failure" id="status"><strong>{len(failed)} of {len(drawn)} runs FAILED'
        "</strong> — see below.</div>"
        if failed
        else ""
    )
    if scenario is not None:
        profile_name = (
            "" if profile is None else profile if isinstance(profile, str) else profile.name
        )
        title = title or f"hotloop demo — scenario {scenario.name}, profile {profile_name}"
        subtitle = subtitle or (
            f"{scenario.total_calls} tool calls over {len(scenario.turns)} model turns, played "
            "by the embedded simulated model; tools run at the scenario's latency. Both "
            "waterfalls share one time axis."
        )
        task = f'<div class="task">{html.escape(scenario.task)}</div>'
        producer = "hotloop demo"
    else:
        count = f"{len(drawn)} run" + ("s" if len(drawn) != 1 else "")
        title = title or f"hotloop report — {count}"
        subtitle = subtitle or f"{count}, drawn from traces. Every waterfall shares one time axis."
        task = ""
        producer = "hotloop report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">{html.escape(subtitle)}</p>'
        + task
        + status
        + _comparison(drawn, versus)
        + _legend()
        + "".join(_run_section(run, span_ns) for run in drawn)
        + f"<footer>Written by <code>{producer}</code>. Hover a bar for its timings. "
        "Bars of one phase may overlap; their totals add up and can exceed the wall time."
        "</footer></body></html>\n"
    )


def write_report(
    path: str | Path,
    runs: Sequence[ReportRun] | Iterable[Span] | MemorySink,
    scenario: Scenario | None = None,
    profile: LatencyProfile | str | None = None,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    versus: bool | None = None,
) -> Path:
    """Write the report of ``runs`` to ``path``; returns the path written.

    ``runs`` are :class:`ReportRun` objects (the demo: first the baseline, last the contender,
    compared in the headline), or the spans of one or more traces, or the
    :class:`~hotloop.trace.MemorySink` holding them (flush the tracer first): every trace is
    one run, drawn in the order the traces appear. ``versus`` says whether the headline and
    the last column compare the last run with the first (default: for runs, not for spans).
    ``scenario`` and ``profile`` describe what the demo played; ``title`` and ``subtitle``
    replace the default heading. Creates missing parent folders. Raises
    :class:`~hotloop.errors.HotloopError` when there is nothing to draw.
    """
    page = render_report(runs, scenario, profile, title=title, subtitle=subtitle, versus=versus)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
