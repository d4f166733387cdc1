"""The benchmark scripts in ``bench/`` run end to end (never gated on time: only on working)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hotloop.bench.report import percentile
from support import run_bench


def test_runtime_cpu_measures_every_mode(tmp_path: Path) -> None:
    report_path = tmp_path / "cpu.json"
    done = run_bench("runtime_cpu.py", "--runs", "2", "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert report["turns"] == 15 and report["events_per_turn"] > 100
    for mode, entry in report["modes"].items():
        assert len(entry["samples_ms"]) == 2, mode
        assert all(sample > 0 for sample in entry["samples_ms"]), mode
    assert "end to end above the socket floor" in done.stdout


def test_hedging_compares_plain_and_hedged_rollouts() -> None:
    done = run_bench(
        "hedging.py",
        *("--rollouts", "4", "--turns", "2", "--concurrency", "2", "--budget", "1.0"),
        *("--profile", "fast-tail"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("4 rollouts per strategy, 3 turns each, profile fast-tail")
    assert lines[1].lstrip().startswith("plain") and lines[2].lstrip().startswith("hedged")
    assert "hedged/plain: p50 " in lines[3] and "extra model requests" in lines[3]


def test_every_benchmark_takes_its_percentiles_by_nearest_rank() -> None:
    values = [float(n) for n in range(200, 0, -1)]
    assert percentile(values, 0.99) == 198.0  # the 198th smallest of 200
    assert percentile(values, 0.5) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))
