"""Sinks and the tracer: JSONL round trips, ``hotloop trace show``, bounded buffers.

The buffer tests block a sink on a ``threading.Event``: if recording a run ever waited for the
sink, the test would hang (and the pytest timeout would fail it) instead of finishing.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from hotloop.cli import main
from hotloop.runtime import RunResult
from hotloop.trace import (
    JSONLSink,
    MemorySink,
    Span,
    Tracer,
    group_traces,
    read_spans,
    spans_from_result,
)
from support import ten_turn_scenario

RunTen = Callable[..., Awaitable[RunResult]]
SCENARIO = ten_turn_scenario()
GUARD = 10.0


class BlockedSink:
    """A sink whose export waits until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.traces: list[Sequence[Span]] = []

    def export(self, spans: Sequence[Span]) -> None:
        self.entered.set()
        assert self.gate.wait(GUARD), "the test never opened the gate"
        self.traces.append(spans)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


class FailingSink(MemorySink):
    def export(self, spans: Sequence[Span]) -> None:
        raise RuntimeError("the collector is down")


class SlowJSONLSink(JSONLSink):
    """A JSONL sink whose writer waits for the gate before each batch."""

    gate: threading.Event

    def _write(self, batch: list[Span]) -> None:
        assert self.gate.wait(GUARD)
        super()._write(batch)


async def test_jsonl_round_trip(run_ten: RunTen, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    memory = MemorySink()
    with Tracer([memory, JSONLSink(path)], run_name="hotloop") as tracer:
        await run_ten("websocket", trace=tracer)
        await run_ten("http", trace=tracer.named("naive"))
    assert tracer.recorded == 2 and tracer.dropped == 0
    spans = read_spans(path)
    assert spans == memory.spans
    traces = group_traces(spans)
    assert len(traces) == 2
    names = [trace[0].attributes["hotloop.run.name"] for trace in traces.values()]
    assert names == ["hotloop", "naive"]
    # The file appends: a second sink on the same path adds to it.
    sink = JSONLSink(path)
    sink.export(spans[:3])
    sink.close()
    assert read_spans(path) == [*spans, *spans[:3]]
    assert sink.written == 3 and sink.dropped == 0


async def test_trace_show_draws_each_run(
    run_ten: RunTen, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.jsonl"
    with Tracer([JSONLSink(path)]) as tracer:
        await run_ten("websocket", trace=tracer.named("hotloop"))
        await run_ten("http", trace=tracer.named("naive"))

    assert main(["trace", "show", str(path), "--width", "120"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    titles = [line for line in lines if line.startswith(("hotloop ", "naive "))]
    assert len(titles) == 2
    assert titles[0].startswith("hotloop") and titles[1].startswith("naive")
    assert "10 turns · 10 tool calls" in titles[0]
    for turn in range(1, 11):
        assert sum(line.startswith(f"turn {turn} · model ") for line in lines) == 2
    assert sum(line.startswith("turn 4 · get_weather") for line in lines) == 2
    assert out.count("model.generation") == 2  # one legend per run
    assert all(len(line) <= 120 for line in lines)
    model_rows = [line for line in lines if line.startswith("turn 1 · model ")]
    assert all("█" in line for line in model_rows)


def test_trace_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "show", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["trace", "show", str(empty)]) == 2
    assert "no spans" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"name": "run"}\n')
    assert main(["trace", "show", str(broken)]) == 2
    assert "broken.jsonl:1" in capsys.readouterr().err


async def test_a_full_tracer_drops_and_counts_and_never_blocks(run_ten: RunTen) -> None:
    result = await run_ten("websocket")
    blocked = BlockedSink()
    tracer = Tracer([blocked], max_queue=2)
    try:
        tracer(result)
        assert blocked.entered.wait(GUARD)  # the worker holds run 1 inside the sink
        for _ in range(9):
            tracer(result)  # returns at once although the sink is stuck
        assert tracer.dropped == 7  # 2 wait in the buffer; the rest is counted
        assert not tracer.flush(timeout=0.05)
        blocked.gate.set()
        assert tracer.flush(timeout=GUARD)
    finally:
        blocked.gate.set()
        tracer.close()
    assert tracer.recorded == 3 == len(blocked.traces)
    assert tracer.recorded + tracer.dropped == 10
    tracer(result)  # a closed tracer drops too
    assert tracer.dropped == 8


async def test_a_full_jsonl_sink_drops_and_counts(run_ten: RunTen, tmp_path: Path) -> None:
    spans = spans_from_result(await run_ten("websocket"))
    sink = SlowJSONLSink(tmp_path / "slow.jsonl", max_queue=len(spans), batch_size=len(spans))
    sink.gate = threading.Event()
    try:
        sink.export(spans)  # the writer takes this batch and waits at the gate
        assert sink.flush(timeout=0.05) is False
        sink.export(spans)  # fills the buffer
        sink.export(spans[:5])  # no room: dropped
        assert sink.dropped == 5
    finally:
        sink.gate.set()
        sink.close()
    assert sink.written == 2 * len(spans)
    assert read_spans(tmp_path / "slow.jsonl") == [*spans, *spans]


async def test_a_failing_sink_does_not_starve_the_others(run_ten: RunTen) -> None:
    result = await run_ten("websocket")
    memory = MemorySink()
    with Tracer([FailingSink(), memory]) as tracer:
        tracer(result)
        tracer(result)
    assert tracer.errors >= 1
    assert len(group_traces(memory.spans)) == 2


def test_buffers_must_hold_something(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Tracer([], max_queue=0)
    with pytest.raises(ValueError):
        JSONLSink(tmp_path / "x.jsonl", batch_size=0)
