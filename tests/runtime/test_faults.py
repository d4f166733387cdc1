"""Whole agent runs with write tools survive ~100 injected faults, and no write runs twice.

The scaled-down ``make faults``: every kind of network fault at random byte offsets through
:class:`~hotloop.testing.faults.FaultProxy`, plus gateway restarts on a SQLite store, over
WebSocket mode and HTTP/SSE. Writes are counted inside the tools, per run and order id, so a
write executed twice is measured. Nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from hotloop import Agent, HotloopError, connect
from hotloop.testing import run_resuming
from hotloop.testing.fault_runs import (
    RESTART,
    FaultRunConfig,
    FaultRunReport,
    _GatewayErrors,
    run_fault_campaign,
)
from hotloop.testing.faults import Fault


async def test_runs_survive_a_hundred_faults_without_a_double_write(tmp_path: Path) -> None:
    report = await run_fault_campaign(FaultRunConfig(faults=100, seed=11), store_dir=tmp_path)

    assert report.total_faults >= 100
    # Every kind was injected, and the gateway was restarted with runs in flight.
    assert set(report.faults) == {kind.value for kind in Fault} | {RESTART}
    assert report.faulty_runs > 0 and report.clean_runs > 0
    assert report.lost == 0, report.lost_reasons
    assert report.completed == report.runs
    assert report.writes_twice == 0
    assert report.writes_missing == 0
    assert report.wrong_answers == 0
    assert report.ok
    assert report.overhead_per_fault is not None
    assert (tmp_path / "faults.sqlite").exists()


async def test_run_resuming_gives_up_after_max_resumes() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there any more
    client = connect(f"http://127.0.0.1:{port}/v1", transport="http", reconnect_timeout=0)
    seen: list[HotloopError] = []
    try:
        with pytest.raises(HotloopError) as raised:
            await run_resuming(
                Agent("hotloop-sim"), "hi", client=client, max_resumes=2, on_error=seen.append
            )
    finally:
        await client.close()
    assert len(seen) == 3 and seen[-1] is raised.value
    assert getattr(raised.value, "code", None) == "connect_failed"


def test_gateway_tracebacks_are_counted_not_printed() -> None:
    report = FaultRunReport()
    errors = _GatewayErrors(report)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "x", (), sys.exc_info())
    info = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "x", (), None)
    assert errors.filter(info) is True
    assert errors.filter(failed) is False
    assert report.gateway_errors == {"ValueError": 1}
