"""What fuzzing found, pinned: each case failed before its fix.

* a mistyped or out-of-range field was answered with ``code: null``; it is now
  ``invalid_type`` / ``invalid_value``, with ``param`` naming the field;
* a body or frame that is JSON but not an object was refused with a Python type name
  (``got NoneType``); the message names the JSON type;
* a client that disconnected while sending a body left a ``ClientDisconnect`` traceback in
  the log; it is one INFO line;
* every malformed HTTP request logged uvicorn's warning; it is logged at a bounded rate;
* a frame over twice the size limit, while a create ran on the same socket, made the
  transport close the socket (1009) and the running create's next send logged a
  ``RuntimeError`` as a gateway failure; the socket is now simply gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hotloop.gateway.websocket import Connection
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, Turn

MODEL = "hotloop-sim"
TIMEOUT = 10.0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]

    def failures(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
def logs() -> Iterator[Records]:
    """Everything the gateway and uvicorn log (uvicorn's loggers do not propagate)."""
    handler = Records()
    loggers = [logging.getLogger("hotloop"), logging.getLogger("uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def error_of(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    error: dict[str, Any] = reply.json()["error"]
    return error


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"store": "yes"}, "store", "invalid_type"),
        ({"instructions": ["x"]}, "instructions", "invalid_type"),
        ({"tools": {"a": 1}}, "tools", "invalid_type"),
        ({"tools": [3]}, "tools[0]", "invalid_type"),
        ({"tools": [{"type": "function", "name": ""}]}, "tools[0].name", "invalid_value"),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tool_choice": 7}, "tool_choice", "invalid_type"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_value"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"max_output_tokens": "10"}, "max_output_tokens", "invalid_type"),
        ({"max_output_tokens": True}, "max_output_tokens", "invalid_type"),
        ({"previous_response_id": ""}, "previous_response_id", "invalid_value"),
        ({"previous_response_id": 5}, "previous_response_id", "invalid_type"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "invalid_type"),
    ],
)
async def test_a_mistyped_field_has_a_code(
    gateway: Any, fields: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": MODEL, "input": "hi", **fields}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        error = error_of(await http.post("/responses", json=body))
    assert (error["code"], error["param"]) == (code, param)
    async with connect(gateway.websocket_url) as ws:
        await ws.send(json.dumps({"type": "response.create", **body}))
        event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert event["type"] == "error"
    assert (event["error"]["code"], event["error"]["param"]) == (code, param)


@pytest.mark.parametrize(
    ("body", "json_type"),
    [(b"null", "null"), (b"[1]", "an array"), (b"3", "a number"), (b'"x"', "a string")],
)
async def test_a_non_object_is_refused_in_json_terms(
    gateway: Any, body: bytes, json_type: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        reply = await http.post("/responses", content=body)
    error = error_of(reply)
    assert error["code"] == "invalid_json"
    assert error["message"].endswith(f"expected a JSON object, got {json_type}")
    async with connect(gateway.websocket_url) as ws:
        await ws.send(body.decode())
        event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert event["error"]["message"].endswith(f"got {json_type}")
    for python_name in ("NoneType", "list", "int", "str"):
        assert f"got {python_name}" not in event["error"]["message"]
        assert f"got {python_name}" not in error["message"]


async def test_a_client_leaving_mid_body_is_one_quiet_line(gateway: Any, logs: Records) -> None:
    for path in ("/v1/responses", "/v1/chat/completions"):
        _, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            "content-length: 1000\r\n\r\n".encode()
            + b'{"model": "hotloop-sim", "in'
        )
        await writer.drain()
        await asyncio.sleep(0.1)  # the endpoint is reading the body
        writer.close()
        await writer.wait_closed()
    for _ in range(200):
        if len(logs.matching("disconnected while sending")) == 2:
            break
        await asyncio.sleep(0.01)
    lines = logs.matching("disconnected while sending")
    assert len(lines) == 2
    assert all(r.levelno == logging.INFO and not r.exc_info for r in lines)
    assert logs.failures() == []
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        reply = await http.post("/responses", json={"model": MODEL, "input": "hi"})
    assert reply.status_code == 200


async def test_malformed_http_requests_are_logged_at_a_bounded_rate(
    gateway: Any, logs: Records
) -> None:
    for _ in range(20):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(64), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 400")
        writer.close()
        await writer.wait_closed()
    assert len(logs.matching("Invalid HTTP request received.")) == 1
    assert logs.failures() == []


async def test_a_socket_closed_by_the_transport_mid_response_ends_quietly(
    gateway_factory: Any, logs: Records
) -> None:
    endless = get_profile("zero").override(decode_tokens_per_s=200)
    scenario = Scenario(name="long", turns=(Turn(text="abcd" * 2000),))
    async with gateway_factory(
        scenario=scenario, profile=endless, max_message_bytes=16 * 1024
    ) as server:
        async with connect(server.websocket_url, max_size=None) as bystander:
            ws = await connect(server.websocket_url, max_size=None)
            await ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "go"}))
            while json.loads(await ws.recv())["type"] != "response.output_text.delta":
                pass
            await ws.send("x" * (40 * 1024))  # over twice the limit: closed with 1009
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            registry = server.gateway.metrics.registry
            for _ in range(500):
                if registry.get_sample_value("hotloop_active_responses") == 0:
                    break
                await asyncio.sleep(0.01)
            assert registry.get_sample_value("hotloop_active_responses") == 0
            assert logs.failures() == []
            await bystander.send(
                json.dumps(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "input": "hi",
                        "max_output_tokens": 2,
                    }
                )
            )
            while (event := json.loads(await bystander.recv()))["type"] != "response.incomplete":
                assert event["type"] not in ("error", "response.failed"), event


class ClosedByTransport:
    """A WebSocket that uvicorn has closed itself: every send is refused as uvicorn does."""

    headers: dict[str, str] = {}  # noqa: RUF012

    async def send_text(self, data: str) -> None:
        raise RuntimeError(
            "Unexpected ASGI message 'websocket.send', after sending 'websocket.close'."
        )


async def test_a_send_refused_by_the_transport_is_a_disconnect(gateway: Any) -> None:
    """What the running create above meets when it sends just after the 1009 close: a
    disconnect (which ends the create quietly), not an error of the gateway."""
    connection = Connection(gateway.gateway, ClosedByTransport())  # type: ignore[arg-type]
    with pytest.raises(WebSocketDisconnect):
        await connection.send(b"{}")
    await connection.shutdown()
