"""The ``hotloop`` command and the demo, run for real."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import httpx
from openai import AsyncOpenAI

from hotloop.cli import main
from hotloop.demo import run_demo


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


async def test_demo_plays_the_coding_scenario_both_ways() -> None:
    lines: list[str] = []
    websocket, http = await run_demo("coding", "zero", say=lines.append, tool_time_scale=0)
    for session in (websocket, http):
        assert session.turns == 15
        assert session.tool_calls == 25
        assert session.final_text.startswith("Fixed.")
        assert len(session.gateway_ns) == 15
    assert websocket.final_text == http.final_text
    # Only new items travel over the socket; the stateless loop re-sends the history.
    assert websocket.bytes_sent * 3 < http.bytes_sent
    assert any("→ call run_tests" in line for line in lines)
    assert lines[-1].strip().startswith("WebSocket mode took")
