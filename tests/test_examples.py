"""The examples run, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, **env: str) -> str:
    """Run ``examples/<name>`` on the ``zero`` profile as a user would; its output."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env={**os.environ, "HOTLOOP_PROFILE": "zero", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_coding_agent_example_runs() -> None:
    out = run_example("coding_agent.py")
    assert "15 model turns, 25 tool calls" in out
    assert "over 1 connection(s)" in out
    assert out.count("▶ apply_patch") == 4
    assert "✓ run_tests" in out
    assert "(error" not in out and ", error:" not in out


def test_trip_planner_example_runs() -> None:
    out = run_example("trip_planner.py")
    assert out.startswith("Your trip: AZ 331")
    assert "flights: 2 turns, 1 tool call(s) -> AZ 331" in out
    assert "hotels: 2 turns, 1 tool call(s) -> Hotel Artemide" in out
    assert "over 1 connection(s)" in out


def test_refund_approvals_example_runs() -> None:
    outputs = {
        limit: run_example("refund_approvals.py", HOTLOOP_TOOL_SCALE="0", REFUND_LIMIT=limit)
        for limit in ("300", "100")
    }
    assert "turn 3: issue_refund approved, ran" in outputs["300"]
    assert "turn 3: issue_refund denied, not run" in outputs["100"]
    assert "refunds over 100 need a supervisor" in outputs["100"]
    for out in outputs.values():
        assert "turn 4: update_ticket approved, ran" in out
        assert "get_order" not in out  # reads never wait for approval


def test_structured_output_example_runs() -> None:
    out = run_example("structured_output.py")
    first = out.splitlines()[0]
    assert first.startswith("Triage: category=") and "priority=" in first
    assert "raw answer: {" in out and "2 turns" in out


def test_support_agent_example_runs() -> None:
    out = run_example("support_agent.py", HOTLOOP_TOOL_SCALE="0.05")
    assert "the same 23 tool results both times" in out
    calls = [  # (turn, tool, how it was served) of the run that avoids work
        (int(words[1]), words[2], " ".join(words[3:]))
        for words in (line.split() for line in out.splitlines())
        if words and words[0] == "turn"
    ]
    assert len(calls) == 23
    assert [call for call in calls if call[2] == "from the cache"] == [
        (5, "crm_lookup", "from the cache"),
        (10, "web_search", "from the cache"),
        (10, "fetch_page", "from the cache"),  # the page prefetched for turn 2
    ]
    assert (2, "fetch_page", "prefetched") in calls
    writes = {"update_ticket", "reply_to_ticket", "update_webhook_endpoint", "replay_deliveries"}
    assert all(how == "ran" for _, name, how in calls if name in writes)
