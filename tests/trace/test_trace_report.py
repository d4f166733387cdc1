"""``hotloop report``: the demo's HTML report for traced runs, from files and from memory.

The traces come from real runs of the ten-turn scenario over a loopback gateway (see
``conftest.py``), written by the same :class:`JSONLSink` a user would use.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hotloop.cli import main
from hotloop.errors import HotloopError
from hotloop.report import render_report, write_report
from hotloop.runtime import RunResult
from hotloop.trace import (
    JSONLSink,
    MemorySink,
    Tracer,
    group_traces,
    read_spans,
    span_to_dict,
    timeline_from_spans,
)
from hotloop.wire import codec
from hotloop.wire.responses import Usage

RunTen = Callable[..., Awaitable[RunResult]]


def waterfalls(page: str) -> dict[str, str]:
    """Each ``<svg class="waterfall">`` of the page, by its run's name, in page order."""
    return {
        match.group(1): match.group(0)
        for match in re.finditer(r'<svg class="waterfall" data-run="([^"]+)".*?</svg>', page, re.S)
    }


async def test_report_draws_a_waterfall_of_every_traced_run(
    run_ten: RunTen, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.jsonl"
    memory = MemorySink()
    with Tracer([JSONLSink(path), memory]) as tracer:
        await run_ten("websocket", trace=tracer.named("hotloop"), runs=2)
        await run_ten("http", trace=tracer.named("naive"))

    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    target = tmp_path / "runs.html"  # the default: next to the trace
    assert out.strip() == f"report: {target} (3 runs; opens offline)"
    page = target.read_text(encoding="utf-8")
    charts = waterfalls(page)
    # Two runs share a name: they are numbered, never merged or dropped.
    assert list(charts) == ["hotloop-1", "hotloop-2", "naive"]
    assert "<h2>hotloop #1</h2>" in page and "<h2>naive</h2>" in page
    for chart, spans in zip(charts.values(), group_traces(read_spans(path)).values(), strict=True):
        bars = timeline_from_spans(spans)
        kinds = re.findall(r'<rect class="bar" data-kind="([\w.]+)"', chart)
        assert len(kinds) == len(bars) == int(re.search(r'data-bars="(\d+)"', chart)[1])  # type: ignore[index]
        assert kinds.count("model.wait") == kinds.count("model.generation") == 10
        assert kinds.count("tool.run") == 10
        root = next(span for span in spans if span.parent_id is None)
        assert f"done {root.duration_ns / 1e9:.2f} s" in chart
        assert f"trace {root.trace_id}" in page
    assert page.count('<table class="phases">') == 3
    # Runs of a trace are not a baseline and a contender: no headline, no ratio column.
    assert "faster" not in page and "slower" not in page
    assert "FAILED" not in page
    assert "Written by <code>hotloop report</code>" in page
    assert not re.search(r"(src|href)=", page)

    # From memory, one call: the same waterfalls, drawn by the same code.
    written = write_report(tmp_path / "memory" / "report.html", memory)
    assert waterfalls(written.read_text(encoding="utf-8")) == charts


async def test_several_files_and_an_explicit_output(
    run_ten: RunTen, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, name in ((first, "first"), (second, "second")):
        with Tracer([JSONLSink(path)], run_name=name) as tracer:
            await run_ten("websocket", trace=tracer)
    target = tmp_path / "out" / "both.html"
    status = main(["report", str(first), str(second), str(first), "-o", str(target)])
    assert status == 0, capsys.readouterr().err
    page = target.read_text(encoding="utf-8")
    assert list(waterfalls(page)) == ["first", "second"]  # a file named twice counts once
    assert f"2 runs traced in {first}, {second}." in page
    assert not (tmp_path / "a.html").exists()


def _valid_lines() -> list[str]:
    """The JSONL lines of a run without turns (one root span)."""
    memory = MemorySink()
    result = RunResult("", (), usage=Usage(), steps=(), last_response_id=None, wall_ns=10)
    with Tracer([memory]) as tracer:
        tracer.record(result)
    return [codec.dumps(span_to_dict(span)).decode() for span in memory.spans]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{valid}", '{"name": "turn", "trace_id"'], r"runs\.jsonl:2: invalid JSON"),
        (["{valid}", "[1, 2]"], r"runs\.jsonl:2: expected a JSON object"),
        (['{"name": "run"}'], r"runs\.jsonl:1: not a span: 'trace_id'"),
        ([], r"runs\.jsonl holds no spans"),
        (["{child}"], r"runs\.jsonl: trace [0-9a-f]{32} has no root span"),
    ],
)
def test_a_malformed_trace_is_one_line_naming_the_file(
    lines: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = codec.loads(_valid_lines()[0])
    child = {**root, "span_id": "1" * 16, "parent_id": "2" * 16, "name": "turn"}
    text = {"{valid}": codec.dumps(root).decode(), "{child}": codec.dumps(child).decode()}
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(text.get(line, line) + "\n" for line in lines))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hotloop: error: ")
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs.html").exists()


def test_missing_files_and_overwriting_a_trace_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert f"cannot read {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err
    trace = tmp_path / "trace.html"
    trace.write_text("\n".join(_valid_lines()) + "\n")
    before = trace.read_text()
    assert main(["report", str(trace)]) == 2
    assert "would overwrite the trace file" in capsys.readouterr().err
    assert trace.read_text() == before


def test_nothing_to_report_is_an_error() -> None:
    with pytest.raises(HotloopError, match="nothing to report"):
        render_report(MemorySink())
