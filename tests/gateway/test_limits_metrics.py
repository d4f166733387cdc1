"""The connection limit, the models list and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hotloop.wire import codec
from support import WEATHER_TOOL


async def test_connection_limit_refuses_the_upgrade(gateway_factory: Any) -> None:
    async with gateway_factory(max_connections=1) as server:
        async with connect(server.websocket_url) as first:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.websocket_url):
                    pass
            assert refused.value.response.status_code == 429
            body = codec.loads(refused.value.response.body)
            assert body["error"]["code"] == "too_many_connections"
            assert body["status"] == 429
            # The connection that got in still works.
            await first.send(
                codec.dumps(
                    {
                        "type": "response.create",
                        "model": "hotloop-sim",
                        "input": "hi",
                        "store": False,
                    }
                ).decode()
            )
            kinds = []
            while not kinds or kinds[-1] != "response.completed":
                kinds.append(codec.loads(await first.recv())["type"])
        # Once it is gone, a new connection is accepted.
        async with connect(server.websocket_url) as again:
            assert again.protocol.state.name == "OPEN"


async def test_models_and_metrics(gateway: Any) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        models = (await http.get("/v1/models")).json()
        assert models["object"] == "list"
        assert {"hotloop-sim", "hotloop-sim:coding", "hotloop-sim:ten"} <= {
            entry["id"] for entry in models["data"]
        }
        reply = await http.post("/v1/responses", json={"model": "hotloop-sim", "input": "hi"})
        assert reply.status_code == 200
        await http.post("/v1/responses", json={"model": "nope", "input": "hi"})
        metrics = (await http.get("/metrics")).text
    assert 'hotloop_responses_total{status="completed",transport="http"} 1.0' in metrics
    assert 'hotloop_errors_total{code="model_not_found",transport="http"} 1.0' in metrics
    assert "hotloop_gateway_processing_seconds_count" in metrics
    assert "hotloop_active_responses 0.0" in metrics


async def _turn(socket: Any, **fields: Any) -> dict[str, Any]:
    frame = {"type": "response.create", "model": "hotloop-sim", "store": False, **fields}
    await socket.send(codec.dumps(frame).decode())
    while True:
        event = codec.loads(await socket.recv())
        if event["type"] in ("response.completed", "response.failed", "error"):
            return event


async def test_full_context_frames_over_16_mib_are_served(gateway: Any) -> None:
    # uvicorn's default would close the socket with 1009; the default limit
    # is 64 MiB.
    big = "x" * (17 * 1024 * 1024)
    async with connect(gateway.websocket_url, max_size=None) as socket:
        event = await _turn(socket, input=big)
        assert event["type"] == "response.completed"
        assert event["response"]["usage"]["input_tokens"] > 4_000_000


async def test_guard_hooks_see_only_new_items(gateway_factory: Any) -> None:
    from hotloop.errors import APIError

    seen: list[int] = []

    def guard(items: Any) -> None:
        seen.append(len(items))
        for item in items:
            if getattr(item, "text", "") == "forbidden":
                raise APIError("blocked by policy", code="content_blocked", param="input")

    async with gateway_factory(input_guards=(guard,)) as server:
        async with connect(server.websocket_url) as socket:
            first = await _turn(socket, input="start", tools=[WEATHER_TOOL.to_responses_tool()])
            call = first["response"]["output"][-1]
            blocked = await _turn(socket, input="forbidden")
            assert blocked["type"] == "error"
            assert blocked["error"]["code"] == "content_blocked"
            second = await _turn(
                socket,
                previous_response_id=first["response"]["id"],
                input=[
                    {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}
                ],
            )
            assert second["type"] == "response.completed"
    # One item per request: the history is never run through the pipeline again.
    assert seen == [1, 1, 1]
