"""The ``hotloop`` command and the demo, run for real."""

from __future__ import annotations

import argparse
import asyncio
import errno
import io
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from rich.console import Console

import hotloop
import hotloop.demo
from hotloop import Agent, Runner
from hotloop.cli import _bind_error, _parser, main
from hotloop.demo import check_run, run_demo
from hotloop.runtime.events import RunResult, StepRecord, ToolRecord
from hotloop.sim.scenario import load_scenario
from hotloop.testing import ExecutionLog
from hotloop.trace.timeline import timeline_from_result
from hotloop.transport import Transport
from hotloop.wire.responses import Usage

CODING = load_scenario("coding")
GATEWAY = (sys.executable, "-m", "hotloop.cli", "gateway")
UPSTREAM = ("--upstream", "http://127.0.0.1:9/v1")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_gateway_command_serves_the_sdk() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hotloop.cli",
            "gateway",
            "--scenario",
            "support",
            "--profile",
            "zero",
            "--port",
            str(port),
            "--api-key",
            "k1",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    health = await http.get(f"{base}/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway never answered /health")
            assert health.json()["status"] == "ok"
            assert "hotloop-sim:coding" in health.json()["models"]
            unauthorized = await http.get(f"{base}/v1/models")
            assert unauthorized.status_code == 401
            assert unauthorized.json()["error"]["code"] == "invalid_api_key"
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key="k1")
        models = [model.id async for model in client.models.list()]
        assert models[0] == "hotloop-sim" and "hotloop-sim:research" in models
        response = await client.responses.create(
            model="hotloop-sim", input="Where is my parcel?", tools=[]
        )
        assert response.status == "completed" and response.output_text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert b"hotloop gateway: http://127.0.0.1:" in output


def test_cli_reports_bad_arguments_clearly(capsys: object) -> None:
    assert main(["demo", "--scenario", "no-such-scenario", "--profile", "zero"]) == 2
    assert main(["demo", "--profile", "zero", "--latency", "ttft_s"]) == 2


async def test_demo_plays_the_scenario_naive_and_with_hotloop(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    report = tmp_path / "reports" / "demo.html"
    demo = await run_demo("coding", "zero", tool_time_scale=0, report_path=report, console=console)
    assert demo.ok and demo.report_path == report
    for run in demo.runs:
        assert run.result is not None and run.stats is not None and run.problems == ()
        assert run.result.turns == len(CODING.turns) == 15
        assert run.result.tool_calls == CODING.total_calls == 25
        assert run.result.final_output == CODING.turns[-1].text
    naive, fast = demo.naive, demo.hotloop
    assert naive.stats is not None and fast.stats is not None
    # The naive loop re-sends the history every turn; hotloop sends only the new items.
    assert naive.stats.full_resends == 15 and fast.stats.incremental_requests == 14
    assert fast.stats.bytes_sent * 3 < naive.stats.bytes_sent
    # The naive loop holds each call until the turn is over; hotloop starts them in the stream.
    assert naive.result is not None and fast.result is not None
    assert all(
        tool.args_complete_ns >= (step.response_done_ns or 0)
        for step in naive.result.steps
        for tool in step.tools
    )
    assert any(
        tool.args_complete_ns < (step.response_done_ns or 0)
        for step in fast.result.steps
        for tool in step.tools
    )
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "naive loop vs hotloop" in shown
    assert "✓ turn 15" in shown and "final answer" in shown
    assert "FAILED" not in shown
    # The report holds both waterfalls, every phase of every turn and call as a bar.
    page = report.read_text(encoding="utf-8")
    charts = dict(re.findall(r'<svg class="waterfall" data-run="(\w+)"(.*?)</svg>', page, re.S))
    assert list(charts) == ["naive", "hotloop"]
    for run in demo.runs:
        assert run.result is not None
        chart = charts[run.name]
        kinds = re.findall(r'<rect class="bar" data-kind="([\w.]+)"', chart)
        assert f'data-bars="{len(kinds)}"' in chart
        assert len(kinds) == len(timeline_from_result(run.result))
        assert kinds.count("tool.run") == 25
        assert kinds.count("model.wait") == kinds.count("model.generation") == 15


def test_demo_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "demo.html"
    argv = ["demo", "--profile", "zero", "--tool-time-scale", "0", "--no-live"]
    assert main([*argv, "--scenario", "support", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "naive loop vs hotloop" in printed and str(report) in printed
    assert report.read_text(encoding="utf-8").count('<svg class="waterfall"') == 2


def test_a_failed_run_is_reported_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    connect = hotloop.demo._connect

    def refuse_hotloop(strategy: hotloop.demo._Strategy, base_url: str) -> Transport:
        if strategy is hotloop.demo.HOTLOOP:
            # Nothing listens on port 9; a short deadline instead of 30 s of reconnecting.
            return hotloop.connect("http://127.0.0.1:9/v1", reconnect_timeout=0.2)
        return connect(strategy, base_url)

    monkeypatch.setattr(hotloop.demo, "_connect", refuse_hotloop)
    report = tmp_path / "demo.html"
    argv = ["demo", "--profile", "zero", "--tool-time-scale", "0", "--report", str(report)]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "FAILED: hotloop did not complete the scenario" in printed
    assert "the run raised" in printed and "hotloop: FAILED" in printed
    page = report.read_text(encoding="utf-8")
    assert "1 of 2 runs FAILED" in page and page.count('<svg class="waterfall"') == 1


def test_check_run_names_every_difference_from_the_scenario() -> None:
    step = StepRecord(turn=1, request_sent_ns=0)
    step.tools.append(ToolRecord("c1", "grep", "{}", 0, 0, 1, error="ValueError: boom"))
    result = RunResult("not it", (), Usage(), (step,), None, 1)
    problems = check_run(CODING, result, ExecutionLog())
    assert problems == (
        "1 model turns, the scenario has 15",
        "1 tool calls, the scenario has 25",
        "0 tool executions, the scenario has 25",
        "the final answer differs from the scenario's final text",
        "1 tool call(s) failed; the first: ValueError: boom",
    )


def test_python_dash_m_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hotloop", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"hotloop {hotloop.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", hotloop.__version__)


def _signalled_gateway(sig: signal.Signals) -> tuple[int, str]:
    """Start ``hotloop gateway``, send it ``sig`` once it serves: its status and stderr."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hotloop", "gateway", "--profile", "zero", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the gateway accepts requests
        assert f"127.0.0.1:{port}" in line
        process.send_signal(sig)
        _, errors = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, errors


def test_ctrl_c_ends_a_command_with_one_line() -> None:
    returncode, errors = _signalled_gateway(signal.SIGINT)
    assert returncode == 130
    assert errors.strip().splitlines()[-1] == "hotloop: interrupted"
    assert "Traceback" not in errors


async def test_run_sync_in_a_running_loop_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"inside a running event loop .* `await Runner\.run"):
        Runner.run_sync(Agent("hotloop-sim"), "hi", base_url="http://127.0.0.1:1/v1")


def test_gateway_hedging_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--hedge", "soon"])
    assert exited.value.code == 2
    assert "expected seconds (>= 0) or auto" in capsys.readouterr().err
    assert main(["gateway", "--hedge", "auto"]) == 2
    assert "--hedge needs --replicas 2 or more" in capsys.readouterr().err
    assert main(["gateway", "--hedge", "0.5", "--replicas", "2", "--hedge-budget", "-1"]) == 2
    assert "--hedge-budget must not be negative" in capsys.readouterr().err


def test_sigterm_ends_the_gateway_as_the_signal_does() -> None:
    returncode, errors = _signalled_gateway(signal.SIGTERM)
    # Shut down gracefully first (uvicorn's last line), then ended by the signal.
    assert returncode == -signal.SIGTERM
    assert "Traceback" not in errors


def test_gateway_on_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*GATEWAY, "--profile", "zero", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"hotloop: error: cannot listen on 127.0.0.1:{port}: ")
    assert "already in use" in done.stderr and "--port" in done.stderr
    assert done.stdout == ""  # no startup line: the gateway never served


def test_gateway_on_an_unknown_host_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--profile", "zero", "--host", "no-such-host.invalid"]) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("hotloop: error: cannot listen on no-such-host.invalid:8000: ")
    assert "--host" in errors and errors.count("\n") == 1 and "Traceback" not in errors


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), "already in use"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "not an address"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "cannot resolve"),
        (OSError(errno.EINVAL, "Invalid argument"), "invalid argument; check --host and --port"),
    ],
)
def test_every_bind_failure_names_the_address_and_what_to_change(
    error: OSError, expected: str
) -> None:
    message = _bind_error("example.test", 80, error)
    assert message.startswith("cannot listen on example.test:80: ")
    assert expected in message and "\n" not in message
    assert "--port" in message or "--host" in message


def test_a_port_out_of_range_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--port", "70000"])
    assert exited.value.code == 2
    assert "argument --port: expected a port number from 0 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            [*UPSTREAM, "--scenario", "support", "--profile", "frontier", "--latency", "ttft_s=3"],
            "--scenario, --profile and --latency configure the simulated model; "
            "drop them with --upstream/--config (a real upstream has its own)",
        ),
        (
            [*UPSTREAM, "--seed", "7"],
            "--seed configures the simulated model; drop it with --upstream/--config",
        ),
        (
            [*UPSTREAM, "--replicas", "2", "--replica-slots", "4"],
            "--replicas and --replica-slots configure the simulated model",
        ),
        (
            ["--config", "upstreams.toml", "--profile", "zero", "--model-profile", "a=fast"],
            "--profile and --model-profile configure the simulated model",
        ),
    ],
)
def test_gateway_refuses_simulated_model_options_with_a_real_upstream(
    options: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(["gateway", *options, "--port", "0"], expected, capsys)


def assert_refused(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``argv`` exits 2 with one line, ``hotloop: error: ...`` holding ``expected``."""
    assert main(argv) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("hotloop: error: ") and expected in errors
    assert errors.count("\n") == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--model", "a=b", "--chain"],
            "--model and --chain configure --upstream; give the upstream's URL with --upstream",
        ),
        (["--api", "responses"], "--api configures --upstream"),
        (
            ["--config", "upstreams.toml", "--websocket"],
            "--websocket configures --upstream; with --config, set them for each upstream",
        ),
    ],
)
def test_gateway_refuses_upstream_options_without_an_upstream(
    options: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(["gateway", *options, "--port", "0"], expected, capsys)


def test_a_store_that_cannot_be_opened_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no such directory" / "responses.sqlite"
    assert main(["gateway", "--store", str(missing), "--port", "0"]) == 2
    errors = capsys.readouterr().err
    assert (
        errors == f"hotloop: error: cannot open the store {missing}: unable to open database file\n"
    )


@pytest.mark.parametrize("command", ["demo", "bench"])
@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "inf", "fast"])
def test_tool_time_scale_must_be_a_number_at_least_zero(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, f"--tool-time-scale={value}"])
    assert exited.value.code == 2
    errors = capsys.readouterr().err
    assert f"argument --tool-time-scale: expected a number >= 0, got '{value}'" in errors
    assert _parser().parse_args([command, "--tool-time-scale", "0"]).tool_time_scale == 0


def _options(parser: argparse.ArgumentParser, path: str = "hotloop") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _options(command, f"{path} {name}")
        elif action.option_strings:
            yield path, action


def test_help_states_every_option_default() -> None:
    """``hotloop <command> --help`` is where a newcomer looks up a default: every option that
    has one (a value other than none, off or empty) says it."""
    missing = [
        f"{path} {action.option_strings[-1]}"
        for path, action in _options(_parser())
        if action.default not in (None, False, [], 0, argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "choices"), [([], "{gateway,demo,bench,trace,report}"), (["trace"], "{show}")]
)
def test_a_missing_subcommand_names_the_choices(
    argv: list[str], choices: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    errors = capsys.readouterr().err
    assert errors.splitlines()[-1].endswith(
        f"error: the following arguments are required: {choices}"
    )
    assert "command" not in errors.splitlines()[-1]  # not the internal dest


HEDGED = ("--replicas", "2", "--hedge", "auto", "--hedge-stall", "2", "--log-level", "warning")


def test_the_startup_line_names_the_hedging() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [*GATEWAY, "--profile", "zero", "--port", str(port), *HEDGED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=20)
    assert "profile 'zero', 2 replicas; hedge auto (budget 0.1, stall 2 s); models: " in line
    assert line.count("\n") == 1


@pytest.mark.parametrize(
    ("naive_s", "hotloop_s", "expected"),
    [
        (12.683, 3.961, "3.20x faster than the naive loop (12.68 s → 3.96 s)."),
        (1.118, 1.124, "1.01x slower than the naive loop (1.118 s → 1.124 s)."),
        (1.12, 1.12, "about as fast as the naive loop (1.12 s → 1.12 s)."),
        (1.1234, 1.1251, "about as fast as the naive loop (1.123 s → 1.125 s)."),
        (0.0823, 0.0282, "2.92x faster than the naive loop (0.0823 s → 0.0282 s)."),
        (0.1001, 0.1, "about as fast as the naive loop (0.10 s → 0.10 s)."),
    ],
)
def test_the_headline_never_contradicts_its_figures(
    naive_s: float, hotloop_s: float, expected: str
) -> None:
    headline = hotloop.demo._headline(naive_s, hotloop_s, "scenario")
    assert headline.plain == f"hotloop finished the scenario {expected}"
    verdict = {"faster": "bold green", "slower": "bold red"}.get(expected.split()[1], "bold")
    assert [span.style for span in headline.spans] == [verdict]
    # The comparison table shows the same figures, beside a ratio they agree with too.
    figures = re.findall(r"([\d.]+) s", headline.plain)
    assert tuple(figures) == hotloop.demo._wall_times(naive_s, hotloop_s)
    naive, fast = map(float, figures)
    assert hotloop.demo._ratio(naive, fast) == hotloop.demo._ratio(naive_s, hotloop_s)


def test_the_headline_is_one_line_whatever_the_width() -> None:
    """Printed as the demo prints it, rich never breaks the headline (between a number and its
    unit, say): the terminal wraps it, a file or a pipe gets it whole."""
    headline = hotloop.demo._headline(123.456, 11.503, "scenario")
    for width in (20, 40, 80):
        out = io.StringIO()
        Console(file=out, width=width).print(headline, soft_wrap=True, highlight=False)
        assert out.getvalue() == headline.plain + "\n"
