"""The examples run, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_coding_agent_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "coding_agent.py")],
        env={**os.environ, "HOTLOOP_PROFILE": "zero"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "15 model turns, 25 tool calls" in out
    assert "over 1 connection(s)" in out
    assert out.count("▶ apply_patch") == 4
    assert "✓ run_tests" in out
    assert "(error" not in out and ", error:" not in out


def test_trip_planner_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "trip_planner.py")],
        env={**os.environ, "HOTLOOP_PROFILE": "zero"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Your trip: AZ 331")
    assert "flights: 2 turns, 1 tool call(s) -> AZ 331" in out
    assert "hotels: 2 turns, 1 tool call(s) -> Hotel Artemide" in out
    assert "over 1 connection(s)" in out


def test_refund_approvals_example_runs() -> None:
    outputs = {}
    for limit in ("300", "100"):
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "refund_approvals.py")],
            env={
                **os.environ,
                "HOTLOOP_PROFILE": "zero",
                "HOTLOOP_TOOL_SCALE": "0",
                "REFUND_LIMIT": limit,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs[limit] = done.stdout
    assert "turn 3: issue_refund approved, ran" in outputs["300"]
    assert "turn 3: issue_refund denied, not run" in outputs["100"]
    assert "refunds over 100 need a supervisor" in outputs["100"]
    for out in outputs.values():
        assert "turn 4: update_ticket approved, ran" in out
        assert "get_order" not in out  # reads never wait for approval


def test_structured_output_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "structured_output.py")],
        env={**os.environ, "HOTLOOP_PROFILE": "zero"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("Triage: category=") and "priority=" in first
    assert "raw answer: {" in done.stdout and "2 turns" in done.stdout
