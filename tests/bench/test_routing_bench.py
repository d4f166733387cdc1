"""``bench/routing.py`` runs end to end (never gated on time: only on counts and bytes)."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_bench


def test_routing_compares_strategies_and_prices_a_switch(tmp_path: Path) -> None:
    report_path = tmp_path / "routing.json"
    done = run_bench(
        "routing.py",
        *("--runs", "1", "--turns", "2", "--rounds", "2", "--json", str(report_path)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert all(len(walls) == 1 for walls in report["walls_s"].values())
    ws = report["websocket"]
    # Round 1: 2 tool turns + an answer; round 2: 2 more + an answer (the generic mode counts
    # the conversation's tool results). Routed: each round's first turn and its answer on the
    # large model (the small model's answer is given up), unless the small one answers.
    assert ws["large"]["turns_per_rollout"] == {"large": 6}
    assert ws["small"]["turns_per_rollout"] == {"small": 6}
    for name in ("routed", "routed-no-chains"):
        assert ws[name]["turns_per_rollout"] == {"large": 4, "small": 2}, name
        assert ws[name]["escalations_per_rollout"] == 2, name
        assert ws[name]["escalated_ms"] > 0, name
        # Two rollouts: one over WebSocket, one over HTTP.
        assert report["escalations"][name] == 4, name
        kinds = ws[name]["kinds"]
        assert kinds["to small"]["per_rollout"] == 2 and kinds["to large"]["per_rollout"] == 2
        # Back to the large model: it prefills what the small one digested.
        assert kinds["to large"]["uncached_tokens"] > kinds["unswitched"]["uncached_tokens"]
    small_answer = ws["routed-small-answer"]
    assert small_answer["turns_per_rollout"] == {"large": 2, "small": 4}
    assert small_answer["escalations_per_rollout"] == 0
    assert small_answer["escalated_ms"] is None
    assert report["escalations"]["routed-small-answer"] == 0
    assert small_answer["kinds"]["to large"]["per_rollout"] == 1
    for transport in ("websocket", "http"):
        chains = report[transport]["routed"]["kinds"]["to small"]
        no_chains = report[transport]["routed-no-chains"]["kinds"]["to small"]
        # With chains a switch continues the last response; without, the whole history goes.
        assert chains["incremental"] == 1 and no_chains["incremental"] == 0, transport
        assert no_chains["bytes"] > chains["bytes"], transport
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1 runs per strategy; 2 rounds of 2 tool turns")
    assert any(line.startswith("routed/large: ") for line in lines)
    assert any(line.startswith("escalations: routed 2 per rollout") for line in lines)
    assert any(line.startswith("switching cost over websocket") for line in lines)
