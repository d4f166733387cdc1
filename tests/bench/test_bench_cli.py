"""``hotloop bench`` run for real: a gateway subprocess, every strategy, the reports, failures."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

import hotloop.bench.strategies
import hotloop.testing
from hotloop.bench.command import print_tables
from hotloop.bench.report import (
    avoidance_table,
    default_report_stem,
    phase_table,
    strategy_table,
    summarize,
    to_markdown,
)
from hotloop.bench.runner import BenchConfig, Progress, gateway_subprocess, rotated, run_bench
from hotloop.bench.strategies import STRATEGIES, RunRecord, run_once, strategy_named
from hotloop.cli import main
from hotloop.errors import HotloopError
from hotloop.gateway import GatewayServer
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.wire import codec

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]
SUPPORT = load_scenario("support")
NAMES = [strategy.name for strategy in STRATEGIES]


def _table_rows(text: str, columns: int = 10, border: str = "|") -> dict[str, list[str]]:
    """The rows of a table (Markdown ``|``, or rich's ``│``) with ``columns`` cells, by name."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip(border).split(border)]
        if len(cells) == columns and cells[0] in NAMES:
            rows[cells[0]] = cells
    return rows


PHASES_CAPTION = "Where the time goes (medians, s)"


def test_bench_runs_every_strategy_and_writes_matching_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, md_path = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md"
    quick = ["bench", "--scenario", "support", "--profile", "zero", "--runs", "1"]
    status = main([*quick, "--json", str(json_path), "--markdown", str(md_path)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    for name in NAMES:
        assert re.search(rf"│ {re.escape(name)}\s+│\s+1/1 │", captured.out), name
    assert "lower bound 0.800 s" in captured.out
    assert "…" not in captured.out  # stdout is not a terminal: nothing is cut short
    assert "rep 1 hotloop" in captured.err  # the progress view's line per run
    # Every run's line puts its wall time in the same column, the longest names included.
    lines = [line for line in captured.err.splitlines() if line.lstrip().startswith("rep 1 ")]
    assert len(lines) == len(NAMES)
    assert len({line.index(" s  cpu") for line in lines}) == 1, lines

    report = codec.loads(json_path.read_bytes())
    assert list(report["strategies"]) == NAMES
    assert report["lower_bound_s"] == pytest.approx(0.8)
    rows = _table_rows(md_path.read_text())
    assert list(rows) == NAMES
    for name, entry in report["strategies"].items():
        assert entry["completed"] == entry["runs"] == 1
        assert entry["failures"] == []
        row = rows[name]
        assert row[2] == f"{entry['median_wall_s']:.3f}"
        assert row[5] == f"{entry['median_client_cpu_s']:.3f}"
        assert row[6] == f"{entry['requests']:.0f}" == "5"
        assert row[7] == f"{entry['bytes_sent']:,.0f}"
        assert row[8] == f"{entry['ratio_to_naive']:.3f}"
        assert row[9] == f"{entry['ratio_to_lower_bound']:.3f}"
        assert entry["ratio_to_lower_bound"] >= 1  # the bound holds (a property, not timing)
    naive, full = report["strategies"]["naive"], report["strategies"]["hotloop"]
    # Deterministic proxies: naive re-sends the whole history every turn.
    assert naive["bytes_sent"] > full["bytes_sent"]
    assert naive["ratio_to_naive"] == 1
    # Where the time goes: on the terminal too, after the strategies, the same cells as the file.
    markdown = md_path.read_text()
    terminal = captured.out[captured.out.index(PHASES_CAPTION) :]
    assert PHASES_CAPTION in markdown
    phases = _table_rows(terminal, columns=6, border="│")
    assert list(phases) == NAMES
    assert phases == _table_rows(markdown[markdown.index(PHASES_CAPTION) :], columns=6)
    for name, entry in report["strategies"].items():
        keys = ("model_s", "tool_wait_s", "loop_s", "tool_hidden_s")
        figures = [entry["median_wall_s"], *(entry["phases"][key] for key in keys)]
        assert phases[name][1:] == [f"{value:.3f}" for value in figures]
    details = report["runs_detail"]
    assert len(details) == len(NAMES)
    assert all(run["ok"] and run["turns"] == len(SUPPORT.turns) for run in details)


def _wide_report() -> dict[str, Any]:
    """A report of every strategy with wide figures, summarized from made-up runs."""
    config = BenchConfig(SUPPORT, get_profile("zero"), STRATEGIES, runs=1, tool_time_scale=0)
    records = [
        RunRecord(
            strategy.name,
            repetition=1,
            position=index,
            ok=True,
            wall_s=1234.5678 - index,
            client_cpu_s=98.765,
            turns=len(SUPPORT.turns),
            requests=1500,
            bytes_sent=123_456_789,
            phases=dict.fromkeys(("model_s", "tool_wait_s", "loop_s", "tool_hidden_s"), 999.9),
            cache_hits=1234,
            speculations_used=567,
            speculations_wasted=89,
            invalidations=4321,
            summaries=765,
            outputs_digest="same",
        )
        for index, strategy in enumerate(STRATEGIES)
    ]
    return summarize(config, records)


def test_no_header_or_cell_is_cut_short_when_stdout_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    report = _wide_report()
    console = print_tables(report)
    out = capsys.readouterr().out
    assert not console.is_terminal and console.width > 110
    assert "…" not in out
    tables = [strategy_table(report), phase_table(report), avoidance_table(report)]
    for table in tables:
        rows = _table_rows(out[out.index(table.caption) :], len(table.columns), border="│")
        assert list(rows) == [row[0] for row in table.rows]
        assert [tuple(cells) for cells in rows.values()] == list(table.rows)  # every cell whole
        header = next(line for line in out[out.index(table.caption) :].splitlines() if "┃" in line)
        assert [cell.strip() for cell in header.strip("┃").split("┃")] == list(table.columns)
    # A console given (a terminal, a test's) keeps its width.
    given = Console(file=io.StringIO(), width=100)
    assert print_tables(report, given) is given and given.width == 100


def test_an_unknown_latency_key_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "--scenario", "support", "--latency", "warp_speed=9", "--runs", "1"])
    assert status == 2
    assert "unknown latency parameter(s) ['warp_speed']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategies", "teleport"], "unknown strategy 'teleport'"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--rtt-ms", "-1"], "must be non-negative"),
        (["--latency", "ttft_s"], "--latency takes key=value"),
        (["--scenario", "no-such-scenario"], "no-such-scenario"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_run_is_reported_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent is missing the scenario's first tool: every call to it fails, and the run
    # does not play the scenario as scripted.
    missing = next(iter(SUPPORT.tools))

    def without_one_tool(scenario: Scenario, **options: Any) -> Any:
        names = [name for name in scenario.tools if name != missing]
        return hotloop.testing.scenario_tools(scenario, names=names, **options)

    monkeypatch.setattr(hotloop.bench.strategies, "scenario_tools", without_one_tool)
    monkeypatch.chdir(tmp_path)
    quick = ["bench", "--scenario", "support", "--profile", "zero", "--runs", "1", "--warmup", "1"]
    status = main([*quick, "--strategies", "hotloop", "--tool-time-scale", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 1
    assert re.search(r"│ hotloop\s+│\s+0/1 │", captured.out)
    assert "FAILED hotloop run 1:" in captured.out
    assert "FAILED hotloop warm-up run:" in captured.out
    assert "the scenario has" in captured.out
    assert "FAILED" in captured.err  # the per-run line
    stem = tmp_path / default_report_stem("support", "zero", 0)
    report = codec.loads(stem.with_suffix(".json").read_bytes())
    entry = report["strategies"]["hotloop"]
    assert (entry["runs"], entry["completed"], entry["failed"], entry["warmup_failed"]) == (
        1,
        0,
        1,
        1,
    )
    assert entry["median_wall_s"] is None
    assert [f["repetition"] for f in entry["failures"]] == [0, 1]
    assert "the scenario has" in entry["failures"][1]["error"]
    markdown = stem.with_suffix(".md").read_text()
    assert "* hotloop run 1:" in markdown
    assert "| hotloop | 0/1 | — |" in markdown


async def test_through_the_delay_proxy_with_warm_up(gateway_factory: GatewayFactory) -> None:
    seen: list[tuple[int, str]] = []
    turns: list[int] = []

    class Recorder(Progress):
        def run_started(self, repetition: int, strategy: str, turns_total: int) -> None:
            seen.append((repetition, strategy))

        def turn_finished(self, turn: int) -> None:
            turns.append(turn)

    config = BenchConfig(
        SUPPORT,
        get_profile("zero"),
        (strategy_named("ws-incremental"), strategy_named("hotloop")),
        runs=2,
        rtt_ms=20,
        tool_time_scale=0,
        warmup=1,
    )
    async with gateway_factory(scenario=SUPPORT) as server:
        records = await run_bench(config, Recorder(), base_url=server.base_url)
    # Interleaved and rotated: each repetition runs both, the order shifting by one.
    assert seen == [
        (0, "ws-incremental"),
        (0, "hotloop"),
        (1, "ws-incremental"),
        (1, "hotloop"),
        (2, "hotloop"),
        (2, "ws-incremental"),
    ]
    assert all(record.ok for record in records), [r.error for r in records]
    assert turns.count(len(SUPPORT.turns)) == len(records)
    # Every run across the proxy pays at least the RTT once per turn, plus the TCP handshake.
    assert all(r.wall_s >= (len(SUPPORT.turns) + 1) * 0.020 for r in records)
    report = summarize(config, records)
    assert report["strategies"]["hotloop"]["runs"] == 2  # the warm-up is not counted
    assert report["strategies"]["hotloop"]["ratio_to_naive"] is None  # no naive run
    assert report["lower_bound_with_rtt_s"] == pytest.approx(0.0 + 6 * 0.020)
    assert "with the RTT" in to_markdown(report)


def test_rotation() -> None:
    assert [s.name for s in rotated(STRATEGIES, 1)] == [*NAMES[1:], NAMES[0]]
    assert rotated(STRATEGIES, len(STRATEGIES)) == list(STRATEGIES)


async def test_the_gateway_subprocess_is_always_stopped() -> None:
    # On an error inside the block...
    with pytest.raises(RuntimeError, match="boom"):
        async with gateway_subprocess("support", "zero") as base_url:
            async with httpx.AsyncClient() as probe:
                assert (await probe.get(base_url.replace("/v1", "/health"))).status_code == 200
            raise RuntimeError("boom")
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as probe:
            await probe.get(base_url.replace("/v1", "/health"))

    # ... and on cancellation (what Ctrl-C does to the running benchmark).
    started = asyncio.Event()
    urls: list[str] = []

    async def hold() -> None:
        async with gateway_subprocess("support", "zero") as url:
            urls.append(url)
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as probe:
            await probe.get(urls[0].replace("/v1", "/health"))


async def test_a_gateway_that_cannot_start_is_a_clear_error() -> None:
    with pytest.raises(HotloopError, match="the gateway exited with status"):
        async with gateway_subprocess("no-such-scenario", "zero"):
            pass  # pragma: no cover


async def test_a_run_that_raises_is_a_failed_record() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = await run_once(
        strategy_named("naive"),
        SUPPORT,
        f"http://127.0.0.1:{port}/v1",
        time_scale=0,
        repetition=1,
        position=0,
        session="refused",
    )
    assert not record.ok
    assert record.error is not None and "Error" in record.error
    assert record.turns == 0
