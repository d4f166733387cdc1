"""Waterfalls in the terminal: a run's bars on a character time axis, drawn with rich.

:func:`render_waterfall` draws any :mod:`~hotloop.trace.timeline` bars (one line per row, one
glyph per phase so the picture reads without colour too) with an axis and per-phase totals;
:func:`render_trace` adds a title from a trace's root span. ``hotloop trace show FILE`` prints
one per run found in a JSONL trace file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.text import Text

from hotloop.trace.spans import Span, timeline_from_spans
from hotloop.trace.timeline import Bar, phase_totals

__all__ = ["format_ns", "render_trace", "render_waterfall"]

#: Glyph and colour of each phase kind of :data:`~hotloop.trace.timeline.PHASES`.
_STYLES: dict[str, tuple[str, str]] = {
    "model.wait": ("░", "yellow"),
    "model.generation": ("█", "blue"),
    "tool.wait": ("·", "bright_black"),
    "tool.run": ("▓", "green"),
    "tool.speculation": ("▒", "cyan"),
    "model.aside": ("▒", "magenta"),
}
_DEFAULT_STYLE = ("▒", "magenta")
#: Kinds of work beside the turns: in the legend only when the run did some.
_BESIDE = ("tool.speculation", "model.aside")
_MAX_LABEL = 32
_MIN_TRACK = 10


def format_ns(ns: int | float) -> str:
    """A duration for people: ``85 µs``, ``12.3 ms``, ``1.42 s``."""
    if ns == 0:
        return "0"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e5:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.0f} µs"


def _axis(span_ns: int, track: int) -> str:
    """Tick labels at the end, then 0, ¼, ½ and ¾ of the track, where they fit."""
    line = [" "] * track
    end = format_ns(span_ns) + "│"
    ticks = [(track - len(end), end)]
    for fraction in (0.0, 0.25, 0.5, 0.75):
        ticks.append((int(fraction * (track - 1)), "│" + format_ns(span_ns * fraction)))
    for at, label in ticks:
        if at < 0 or any(c != " " for c in line[max(0, at - 1) : at + len(label) + 1]):
            continue  # no room: skip this tick rather than overwrite another
        line[at : at + len(label)] = label
    return "".join(line[:track])


def render_waterfall(bars: Sequence[Bar], width: int = 100) -> RenderableType:
    """The bars as a waterfall ``width`` characters wide (rows in order of appearance)."""
    if not bars:
        return Text("(no phases to show)", style="italic")
    rows: dict[str, list[Bar]] = {}
    for bar in bars:
        rows.setdefault(bar.row, []).append(bar)
    label_width = min(_MAX_LABEL, max(len(row) for row in rows))
    track = max(_MIN_TRACK, width - label_width - 1)
    start = min(bar.start_ns for bar in bars)
    end = max(bar.end_ns for bar in bars)
    span_ns = max(1, end - start)
    per_cell = span_ns / track
    lines: list[Text] = [Text(" " * (label_width + 1) + _axis(span_ns, track), "dim")]
    for row, row_bars in rows.items():
        cells: list[tuple[str, str] | None] = [None] * track
        for bar in row_bars:
            first = min(track - 1, int((bar.start_ns - start) / per_cell))
            last = min(track, max(first + 1, math.ceil((bar.end_ns - start) / per_cell)))
            style = _STYLES.get(bar.kind, _DEFAULT_STYLE)
            for index in range(first, last):
                cells[index] = style
        label = row if len(row) <= label_width else row[: label_width - 1] + "…"
        line = Text(label.ljust(label_width) + " ")
        for cell in cells:
            if cell is None:
                line.append(" ")
            else:
                line.append(cell[0], style=cell[1])
        lines.append(line)
    legend = Text()
    drawn = {bar.kind for bar in bars}
    for kind, total in phase_totals(bars).items():
        if kind in _BESIDE and kind not in drawn:
            continue  # work beside the turns is listed only when there was some
        glyph, colour = _STYLES.get(kind, _DEFAULT_STYLE)
        if legend:
            legend.append("   ")
        legend.append(glyph * 2, style=colour)
        legend.append(f" {kind} {format_ns(total)}")
    lines.append(legend)
    return Group(*lines)


def render_trace(spans: Sequence[Span], width: int = 100) -> RenderableType:
    """One trace (one run) as a waterfall under a title; raises ``HotloopError`` without root."""
    bars = timeline_from_spans(spans)
    root = next(span for span in spans if span.parent_id is None)
    attributes = root.attributes
    title = Text()
    title.append(str(attributes.get("hotloop.run.name", root.name)), style="bold")
    details = [
        format_ns(root.duration_ns),
        f"{attributes.get('hotloop.run.turns', '?')} turns",
        f"{attributes.get('hotloop.run.tool_calls', '?')} tool calls",
        f"trace {root.trace_id[:12]}",
    ]
    title.append("  " + " · ".join(details), style="dim")
    return Group(title, render_waterfall(bars, width), Text(""))
