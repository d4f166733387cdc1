"""``bench/soak.py`` (``make soak``) for a few seconds: real gateway, real sessions, the summary."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support import BENCH


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # On sys.path (inherited by the spawned generator processes), so they can import it too.
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("soak")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the gateway's RSS from /proc")
@pytest.mark.timeout(60)
def test_a_short_soak_completes_turns_without_errors(
    soak: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "soak.json"
    code = soak.main(
        [
            "--duration", "4",
            "--sessions", "20",
            "--think", "0.3",
            "--ramp", "0.5",
            "--turns-per-conversation", "3",
            "--progress-interval", "2",
            # A few seconds are all warm-up: RSS flatness is the long run's business.
            "--rss-tolerance", "10",
            "--json", str(report),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    summary = json.loads(report.read_text())
    assert summary["errors"] == {}, summary["error_samples"]
    assert code == 0, out
    # 20 sessions, ~0.55 s per turn and think: well over 60 turns in 4 s, chained and fresh.
    assert summary["turns"] >= 60, summary
    assert summary["incremental_requests"] > 0
    assert summary["connections_opened"] > 20  # a new connection per fresh conversation
    assert summary["full_resends"] == summary["connections_opened"]  # first turns only
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] < 5000
    assert summary["rss"]["start"]["bytes"] > 0 and summary["passed"]
    assert "=== soak summary (20 sessions, 4 s) ===" in out
    assert "errors         0" in out and "p50" in out and "drift" in out
    assert "RESULT         PASS" in out
    assert "turns" in out.split("===")[0]  # a progress line came before the summary


def test_rss_drift_beyond_the_tolerance_fails(soak: ModuleType) -> None:
    mib = 1 << 20
    flat = [soak.RssSample(t, (100 + t % 3) * mib) for t in range(0, 100, 2)]
    verdict = soak.rss_summary(flat, warmup=10, tolerance=0.10)
    assert verdict["ok"] and verdict["start"]["at_s"] == 10
    assert abs(verdict["drift_pct"]) < 3
    growing = [soak.RssSample(t, (100 + t // 4) * mib) for t in range(0, 100, 2)]
    verdict = soak.rss_summary(growing, warmup=10, tolerance=0.10)
    assert not verdict["ok"] and verdict["drift_pct"] > 10
    assert not soak.rss_summary(growing, warmup=200, tolerance=0.10)["ok"]  # no sample


def test_percentile_is_nearest_rank(soak: ModuleType) -> None:
    values = [float(v) for v in range(1, 101)]
    assert soak.percentile(values, 0.50) == 50.0
    assert soak.percentile(values, 0.99) == 99.0
    assert soak.percentile([], 0.5) != soak.percentile([], 0.5)  # nan
