"""The demo's HTML report: its content, and how it looks in a real (headless) Chromium.

The runs here are synthetic step records laid out from the ``coding`` scenario (a naive run:
tools after the turn, one at a time; a hotloop run: tools as soon as their arguments are
complete, all at once), so every figure is deterministic. The browser test needs
``/usr/bin/chromium``, which ``make test`` installs (``make browser``: Debian's ``chromium``),
driven through the ``playwright`` package; it never downloads a browser of its own.
"""

from __future__ import annotations

import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotloop.report import PHASE_COLORS, ReportRun, render_report, tick_step, write_report
from hotloop.runtime.events import RunResult, StepRecord, ToolRecord
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.trace.timeline import timeline_from_result
from hotloop.transport.base import TransportStats
from hotloop.wire.responses import Usage

CODING = load_scenario("coding")
MS = 1_000_000
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def synthetic_run(scenario: Scenario, *, eager: bool) -> RunResult:
    """A run of ``scenario`` with fixed timings: 200 ms to the first token, tools at their
    declared latency; ``eager`` starts each call during generation and runs all at once."""
    now = 0
    steps = []
    for number, turn in enumerate(scenario.turns, 1):
        step = StepRecord(turn=number, request_sent_ns=now)
        first = now + 200 * MS
        step.first_event_ns = step.first_token_ns = first
        generation = 20 * MS + 15 * MS * len(turn.calls)
        step.response_done_ns = done = first + generation
        cursor, ends = done, [done]
        for index, call in enumerate(turn.calls):
            ready = first + (index + 1) * generation // (len(turn.calls) + 1) if eager else done
            start = ready if eager else max(cursor, ready)
            end = start + int(scenario.tools[call.name].latency_ms * MS)
            cursor = end
            ends.append(end)
            step.tools.append(
                ToolRecord(f"call_{number}_{index}", call.name, call.arguments, ready, start, end)
            )
        now = max(ends) + 5 * MS
        step.tools_done_ns = now if turn.calls else None
        steps.append(step)
    return RunResult(
        final_output=scenario.turns[-1].text or "",
        items=(),
        usage=Usage(),
        steps=tuple(steps),
        last_response_id="resp_last",
        wall_ns=now,
    )


def demo_runs() -> list[ReportRun]:
    naive = synthetic_run(CODING, eager=False)
    fast = synthetic_run(CODING, eager=True)
    return [
        ReportRun(
            "naive",
            "naive loop",
            "stateless HTTP",
            naive,
            TransportStats(connections_opened=1, requests=15, bytes_sent=654_904),
        ),
        ReportRun(
            "hotloop",
            "hotloop",
            "WebSocket + eager",
            fast,
            TransportStats(connections_opened=1, requests=15, bytes_sent=114_774),
        ),
    ]


def waterfalls(page: str) -> dict[str, str]:
    return {
        match.group(1): match.group(0)
        for match in re.finditer(r'<svg class="waterfall" data-run="(\w+)".*?</svg>', page, re.S)
    }


# -- content ------------------------------------------------------------------------------------


def test_tick_steps_are_round() -> None:
    assert tick_step(12.3) == 2.0
    assert tick_step(0.06) == 0.005
    assert tick_step(100) == 10.0
    assert tick_step(0) == 1.0


def test_report_draws_every_phase_of_both_runs_on_one_axis(tmp_path: Path) -> None:
    runs = demo_runs()
    path = write_report(tmp_path / "nested" / "demo.html", runs, CODING, get_profile("fast"))
    page = path.read_text(encoding="utf-8")
    charts = waterfalls(page)
    assert list(charts) == ["naive", "hotloop"]
    ends = {}
    for run in runs:
        assert run.result is not None
        chart = charts[run.name]
        bars = timeline_from_result(run.result)
        kinds = re.findall(r'<rect class="bar" data-kind="([\w.]+)"', chart)
        assert len(kinds) == len(bars) == int(re.search(r'data-bars="(\d+)"', chart)[1])  # type: ignore[index]
        assert kinds.count("tool.run") == CODING.total_calls == 25
        assert kinds.count("model.wait") == kinds.count("model.generation") == 15
        # One lane per model turn and one per tool call, even for two calls of one tool.
        assert int(re.search(r'data-rows="(\d+)"', chart)[1]) == 15 + 25  # type: ignore[index]
        ends[run.name] = float(re.search(r'<line class="end" x1="([\d.]+)"', chart)[1])  # type: ignore[index]
        assert f"done {run.result.wall_ns / 1e9:.2f} s" in chart
    naive, fast = (run.result for run in runs)
    assert naive is not None and fast is not None
    # The naive loop waits for tools one after another; hotloop never holds a call back.
    assert 'data-kind="tool.wait"' in charts["naive"]
    assert 'data-kind="tool.wait"' not in charts["hotloop"]
    # One scale: each run's end marker sits in proportion to its wall time.
    label_w = 190
    assert (ends["hotloop"] - label_w) / (ends["naive"] - label_w) == pytest.approx(
        fast.wall_ns / naive.wall_ns, rel=1e-3
    )
    speedup = naive.wall_ns / fast.wall_ns
    assert f"{speedup:.2f}&times; faster" in page
    assert page.count('<table class="phases">') == 2
    assert "654,904" in page and "114,774" in page
    # Self-contained: nothing to fetch (the SVG namespace is a name, not a download).
    assert not re.search(r"(src|href)=", page)
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "FAILED" not in page


def test_a_failed_run_is_shown_loudly_not_dropped() -> None:
    naive, fast = demo_runs()
    broken = ReportRun(
        "hotloop", "hotloop", "WebSocket", None, None, ("the run raised TransportError: refused",)
    )
    mismatched = ReportRun(
        "naive", naive.title, naive.description, naive.result, naive.stats, ("14 model turns",)
    )
    page = render_report([mismatched, broken], CODING, "fast")
    assert "2 of 2 runs FAILED" in page
    assert "FAILED: hotloop did not complete the scenario." in page
    assert "the run raised TransportError: refused" in page
    assert "FAILED: naive loop did not complete the scenario." in page
    # The run with a result is still drawn; the one without has its section and no waterfall.
    assert list(waterfalls(page)) == ["naive"]
    assert 'id="run-hotloop"' in page
    assert "faster" not in page
    assert fast.ok and not broken.ok and not mismatched.ok


def test_report_says_when_the_contender_is_slower() -> None:
    naive, fast = demo_runs()
    page = render_report([fast, naive], CODING, get_profile("fast"))
    assert "&times; slower" in page


# -- in a browser -------------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return (
        width,
        height,
        [bytes(row[i] for i in range(len(row)) if i % channels < 3) for row in rows],
    )


def colors_in(png: bytes) -> set[tuple[int, int, int]]:
    _, _, rows = png_pixels(png)
    found: set[tuple[int, int, int]] = set()
    for row in rows:
        for x in range(0, len(row), 3):
            found.add((row[x], row[x + 1], row[x + 2]))
    return found


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@pytest.fixture
def browser_dir() -> Iterator[Path]:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: `make browser` installs it (Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="hotloop-chromium-") as profile:
        yield Path(profile)


def test_report_renders_both_waterfalls_in_headless_chromium(
    tmp_path: Path, browser_dir: Path
) -> None:
    from playwright.sync_api import sync_playwright

    runs = demo_runs()
    report = write_report(tmp_path / "demo.html", runs, CODING, get_profile("fast"))
    screenshot = tmp_path / "demo.png"
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(browser_dir),
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1240, "height": 900},
            offline=True,
        )
        try:
            page = context.new_page()
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            for run in runs:
                assert run.result is not None
                section = page.locator(f"section#run-{run.name}")
                assert section.is_visible()
                chart = section.locator("svg.waterfall")
                assert chart.count() == 1 and chart.is_visible()
                box = chart.bounding_box()
                assert box is not None and box["width"] > 800 and box["height"] > 400
                bars = chart.locator("rect.bar")
                assert bars.count() == len(timeline_from_result(run.result)) > 0
                # The longest tool (run_tests, 2.4 s) is a wide, visible bar in both runs.
                widths = [b["width"] for b in (bars.nth(i).bounding_box() for i in range(5)) if b]
                assert widths and max(widths) > 1
                # Each waterfall, as pixels, shows the bar palette.
                shown = colors_in(chart.screenshot())
                for kind in ("model.wait", "model.generation", "tool.run"):
                    assert hex_rgb(PHASE_COLORS[kind]) in shown, (run.name, kind)
            assert "tool.wait" not in page.locator("svg[data-run=hotloop]").inner_html()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert problems == []
    assert requests == [report.as_uri()]
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    # The whole page: the header, both waterfalls (40 rows each) and their tables.
    assert width == 1240 and height > 1500
    assert len(data) > 50_000
