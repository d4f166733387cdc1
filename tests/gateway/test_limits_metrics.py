"""The connection limit, the models list and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hotloop.wire import codec


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
