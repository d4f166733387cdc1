"""The terminal waterfall, drawn from hand-made bars: rows, glyphs, axis, totals."""

from __future__ import annotations

import pytest
from rich.console import Console, RenderableType

from hotloop.errors import HotloopError
from hotloop.trace import Bar, Span, format_ns, render_trace, render_waterfall


def text(renderable: RenderableType, width: int = 60) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text().splitlines()


def test_bars_land_in_their_rows_and_columns() -> None:
    bars = [
        Bar("turn 1 · model", "model.wait", 0, 4_000_000, turn=1),
        Bar("turn 1 · model", "model.generation", 4_000_000, 6_000_000, turn=1),
        Bar("turn 1 · read_file", "tool.wait", 5_000_000, 6_000_000, turn=1),
        Bar("turn 1 · read_file", "tool.run", 6_000_000, 10_000_000, turn=1),
    ]
    lines = text(render_waterfall(bars, width=60), width=120)  # the legend on one line
    axis, model, tool, legend = lines
    label = len("turn 1 · read_file") + 1
    track = 60 - label
    assert axis.strip().startswith("│0")
    assert axis.rstrip().endswith("10.0 ms│")
    assert model.startswith("turn 1 · model ")
    cells = model[label:]
    assert cells[: int(track * 0.4)] == "░" * int(track * 0.4)
    assert set(cells[int(track * 0.4) + 1 : int(track * 0.6) - 1]) == {"█"}
    tool_cells = tool[label:]
    assert tool_cells[: int(track * 0.5)].strip() == ""
    assert "·" in tool_cells and tool_cells.rstrip().endswith("▓")
    assert "model.wait 4.0 ms" in legend and "tool.run 4.0 ms" in legend


def test_a_tiny_bar_still_shows_and_long_labels_are_cut() -> None:
    bars = [
        Bar("x" * 50, "tool.run", 0, 1_000, turn=1),
        Bar("short", "model.generation", 0, 10_000_000, turn=1),
    ]
    lines = text(render_waterfall(bars, width=60))
    assert lines[1].startswith("x" * 31 + "…")
    assert "▓" in lines[1]


def test_nothing_to_draw() -> None:
    assert text(render_waterfall([])) == ["(no phases to show)"]
    with pytest.raises(HotloopError):
        render_trace([Span("turn", "t", "s", "p", 0, 1)])  # no root span: not a trace


def test_durations_for_people() -> None:
    assert format_ns(0) == "0"
    assert format_ns(860_000) == "0.9 ms"
    assert format_ns(85_000) == "85 µs"
    assert format_ns(12_345_678) == "12.3 ms"
    assert format_ns(1_420_000_000) == "1.42 s"
