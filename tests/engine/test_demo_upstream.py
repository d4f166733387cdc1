"""``hotloop demo --upstream``: the demo against a real llama.cpp server, end to end.

The tiny model calls one of the offered tools (with placeholder arguments) until it has two
tool results, then answers ``All done.``: it does not follow the scenario's script, and the
demo must report what it did rather than fail the runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotloop.cli import main
from hotloop.testing.llamacpp import ANSWER_TEXT, LlamaServer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_demo_runs_both_strategies_against_a_real_model(
    llama_server: LlamaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "reports" / "demo.html"
    argv = [
        "demo",
        "--upstream",
        f"{llama_server.base_url}/v1",
        "--scenario",
        "support",  # small tool outputs: two of them fit the tiny model's context
        "--no-live",
        "--tool-time-scale",
        "0",
        "--report",
        str(report),
    ]
    status = main(argv)
    printed = ANSI.sub("", capsys.readouterr().out)
    assert status == 0, printed
    # Without --model, the demo runs the upstream's only model.
    assert "model 'hotloop-tiny'" in printed
    # Both runs reached the model's answer, after its two tool calls and three turns.
    assert printed.count(f"answer: {ANSWER_TEXT}") == 2, printed
    assert printed.count("3 model turns, 2 tool calls") == 2, printed
    assert "naive loop: done in" in printed and "hotloop: done in" in printed
    # The comparison names both strategies; nothing failed.
    assert "naive loop vs hotloop" in printed
    table = printed[printed.index("naive loop vs hotloop") :]
    assert "naive loop" in table.splitlines()[2] and "hotloop" in table.splitlines()[2]
    assert re.search(r"model turns\W+3\W+3\W+1\.00x", table), table
    assert "FAILED" not in printed and "warm-up request failed" not in printed
    # The report: both waterfalls, and it says a real model played the runs.
    page = report.read_text(encoding="utf-8")
    assert page.count('<svg class="waterfall"') == 2
    assert "played by the real model hotloop-tiny" in page
    assert "FAILED" not in page


def test_demo_refuses_the_sim_latency_options_with_an_upstream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["demo", "--upstream", "http://127.0.0.1:9/v1", "--profile", "zero"]
    assert main(argv) == 2
    assert "a real upstream has its own" in capsys.readouterr().err
