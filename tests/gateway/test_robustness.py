"""Failures inside a response: every one gets its documented error, and nothing else stops.

Each case runs against the real gateway over loopback sockets and then proves that the socket
or lane that failed, and a bystander conversation open the whole time, keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.gateway.store import MemoryStore
from hotloop.sim.synth import MAX_ARGUMENT_BYTES, MAX_ITEMS
from hotloop.wire.codec import MAX_NESTING_DEPTH
from support import ten_turn_scenario

MODEL = "hotloop-sim"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: A guard against hangs only (a lane that never answers fails here, not by hanging).
RECV_TIMEOUT = 10.0


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def ws_connect(server: GatewayServer) -> Any:
    return connect(server.websocket_url, max_size=None)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
    return event


async def collect(ws: ClientConnection) -> list[dict[str, Any]]:
    events = [await recv(ws)]
    while events[-1]["type"] not in TERMINAL:
        events.append(await recv(ws))
    return events


async def create(ws: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    await ws.send(json.dumps({"type": "response.create", "model": MODEL, **fields}))
    return await collect(ws)


async def prove_alive(*sockets: ClientConnection, **fields: Any) -> None:
    """Every socket completes a turn and continues it (on the lane ``fields`` names)."""
    for ws in sockets:
        first = await create(ws, input="still there?", store=False, **fields)
        assert first[-1]["type"] == "response.completed", first[-1]
        again = await create(
            ws,
            input="and again",
            store=False,
            previous_response_id=first[-1]["response"]["id"],
            **fields,
        )
        assert again[-1]["type"] == "response.completed", again[-1]


def assert_error(body: dict[str, Any], code: str) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


# -- JSON nested too deep to echo ------------------------------------------------------------

#: Every place a create echoes back, each holding JSON nested deeper than orjson encodes.
DEEP_FIELDS: dict[str, str] = {
    "metadata": f'"metadata":{{"k":{deep(300)}}}',
    "text": f'"text":{{"format":{deep(300)}}}',
    "reasoning": f'"reasoning":{deep(300)}',
    "user": f'"user":{deep(300)}',
    "tool parameters": (
        f'"tools":[{{"type":"function","name":"f","parameters":{{"x":{deep(300)}}}}}]'
    ),
    "input item extra key": (
        f'"input":[{{"type":"message","role":"user","content":"hi","x":{deep(300)}}}]'
    ),
    "forced tool const": (
        '"tools":[{"type":"function","name":"f","parameters":{"type":"object",'
        f'"properties":{{"a":{{"const":{deep(300)}}}}}}}}}],'
        '"tool_choice":{"type":"function","name":"f"}'
    ),
}


def deep_body(field: str) -> str:
    body = DEEP_FIELDS[field]
    head = '{"model":"hotloop-sim","store":false'
    if not body.startswith('"input"'):
        head += ',"input":"hi"'
    return f"{head},{body}}}"


@pytest.mark.parametrize("field", sorted(DEEP_FIELDS))
async def test_deep_json_is_refused_on_a_socket_that_keeps_serving(
    gateway: GatewayServer, field: str
) -> None:
    async with ws_connect(gateway) as ws, ws_connect(gateway) as bystander:
        frame = '{"type":"response.create",' + deep_body(field)[1:]
        await ws.send(frame)
        # The same on a named lane: the lane serves the next create too.
        await ws.send(frame[:-1] + ',"stream_id":"lane-a"}')
        errors = [await recv(ws), await recv(ws)]
        for error in errors:
            assert error["type"] == "error"
            assert error["status"] == 400
            assert_error(error, "nesting_too_deep")
        await prove_alive(ws, bystander)
        await prove_alive(ws, stream_id="lane-a")


async def test_nesting_up_to_the_limit_is_accepted_and_echoed(gateway: GatewayServer) -> None:
    # The frame is level 1, metadata 2, the value 3: the deepest array is the limit.
    levels = MAX_NESTING_DEPTH - 2
    async with ws_connect(gateway) as ws:
        await ws.send(
            '{"type":"response.create","model":"hotloop-sim","input":"hi","store":false,'
            f'"metadata":{{"k":{deep(levels)}}}}}'
        )
        events = await collect(ws)
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["metadata"]["k"] == json.loads(deep(levels))
        await ws.send(
            '{"type":"response.create","model":"hotloop-sim","input":"hi","store":false,'
            f'"metadata":{{"k":{deep(levels + 1)}}}}}'
        )
        assert_error(await recv(ws), "nesting_too_deep")


@pytest.mark.parametrize("stream", [False, True])
async def test_deep_json_over_http_is_a_400(gateway: GatewayServer, stream: bool) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=RECV_TIMEOUT) as http:
        body = deep_body("metadata")[:-1] + f',"stream":{json.dumps(stream)}}}'
        reply = await http.post(
            "/responses", content=body, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 400
        assert reply.headers["content-type"] == "application/json"
        assert_error(reply.json(), "nesting_too_deep")
        chat = await http.post(
            "/chat/completions",
            content=f'{{"model":"hotloop-sim","messages":[{{"role":"user","content":"hi",'
            f'"x":{deep(300)}}}]}}',
            headers={"content-type": "application/json"},
        )
        assert chat.status_code == 400
        assert_error(chat.json(), "nesting_too_deep")
        ok = await http.post("/responses", json={"model": MODEL, "input": "hi"})
        assert ok.status_code == 200 and ok.json()["status"] == "completed"


# -- a store that refuses -------------------------------------------------------------------


class LockedStore(MemoryStore):
    """A store whose writes fail like a locked SQLite database and whose reads of ``resp_x``
    fail with a bare RuntimeError (not a disconnect)."""

    async def save(self, *args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    async def load(self, response_id: str, *args: Any, **kwargs: Any) -> Any:
        if response_id.startswith("resp_x"):
            raise RuntimeError("the store is broken")
        return await super().load(response_id, *args, **kwargs)


@pytest.fixture
async def locked() -> Any:
    backend = SimBackend(ten_turn_scenario(), "zero")
    async with GatewayServer(backend, GatewayConfig(), store=LockedStore()) as server:
        yield server


def failure_logs(caplog: pytest.LogCaptureFixture, response_id: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.ERROR and response_id in record.getMessage()
    ]


async def test_a_refused_store_write_fails_the_response_and_the_lane_goes_on(
    locked: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with ws_connect(locked) as ws, ws_connect(locked) as bystander:
        for lane in (None, "lane-a"):
            fields: dict[str, Any] = {"stream_id": lane} if lane else {}
            events = await create(ws, input="hi", store=True, **fields)
            failed = events[-1]
            assert failed["type"] == "response.failed", failed
            assert failed["response"]["error"]["code"] == "server_error"
            assert "locked" not in json.dumps(failed)
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            assert len(failure_logs(caplog, failed["response"]["id"])) == 1
            await prove_alive(ws, **fields)
        await prove_alive(bystander)


async def test_a_failing_store_read_is_an_error_event_not_a_dead_lane(
    locked: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with ws_connect(locked) as ws, ws_connect(locked) as bystander:
        for lane in (None, "lane-a"):
            fields: dict[str, Any] = {"stream_id": lane} if lane else {}
            events = await create(ws, input="hi", previous_response_id="resp_x1", **fields)
            assert len(events) == 1
            error = events[0]
            assert error["type"] == "error" and error["status"] == 500
            assert error.get("stream_id") == lane
            assert_error(error, "server_error")
            assert "broken" not in error["error"]["message"]
            await prove_alive(ws, **fields)
        await prove_alive(bystander)
    assert any("failed" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_store_failures_over_http_and_sse(locked: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=locked.base_url, timeout=RECV_TIMEOUT) as http:
        reply = await http.post("/responses", json={"model": MODEL, "input": "hi"})
        assert reply.status_code == 500
        assert_error(reply.json(), "server_error")
        read = await http.post(
            "/responses", json={"model": MODEL, "input": "hi", "previous_response_id": "resp_x1"}
        )
        assert read.status_code == 500
        assert read.headers["content-type"] == "application/json"
        assert_error(read.json(), "server_error")
        async with http.stream(
            "POST", "/responses", json={"model": MODEL, "input": "hi", "stream": True}
        ) as stream:
            assert stream.status_code == 200
            events = [
                json.loads(line[6:]) async for line in stream.aiter_lines() if line[:6] == "data: "
            ]
        assert events[-1]["type"] == "response.failed"
        assert events[-1]["response"]["error"]["code"] == "server_error"
        ok = await http.post("/responses", json={"model": MODEL, "input": "hi", "store": False})
        assert ok.status_code == 200 and ok.json()["status"] == "completed"


# -- schemas that ask for unbounded work ----------------------------------------------------


def forced(parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": "go",
        "store": False,
        "tools": [{"type": "function", "name": "f", "parameters": parameters}],
        "tool_choice": {"type": "function", "name": "f"},
        **fields,
    }


HUGE = 10**9
GREEDY_SCHEMAS: dict[str, dict[str, Any]] = {
    "long string": {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": HUGE}},
    },
    "long array": {
        "type": "object",
        "properties": {"a": {"type": "array", "minItems": HUGE, "items": {"type": "integer"}}},
    },
    "nested arrays": {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "minItems": HUGE,
                "items": {
                    "type": "array",
                    "minItems": HUGE,
                    "items": {"type": "string", "minLength": HUGE},
                },
            }
        },
    },
}


@pytest.mark.parametrize("name", sorted(GREEDY_SCHEMAS))
async def test_synthesized_arguments_are_capped(gateway: GatewayServer, name: str) -> None:
    async with ws_connect(gateway) as ws, ws_connect(gateway) as bystander:
        started = time.monotonic()
        events = await create(ws, **forced(GREEDY_SCHEMAS[name]))
        elapsed = time.monotonic() - started
        assert events[-1]["type"] == "response.completed", events[-1]
        call = events[-1]["response"]["output"][-1]
        assert call["type"] == "function_call"
        assert len(call["arguments"].encode()) <= MAX_ARGUMENT_BYTES
        arguments = json.loads(call["arguments"])
        for value in arguments.values():
            if isinstance(value, list):
                assert 1 <= len(value) <= MAX_ITEMS
        assert len(events) < MAX_ARGUMENT_BYTES // 4 + 32
        assert elapsed < 5.0  # a guard: unbounded synthesis took seconds and gigabytes
        await prove_alive(ws, bystander)


BAD_SCHEMAS: list[tuple[dict[str, Any], str]] = [
    (
        {"type": "object", "properties": {"x": {"type": "array", "minItems": "x"}}},
        "tools[0].parameters.properties.x.minItems",
    ),
    (
        {"type": "object", "properties": {"x": {"type": "string", "minLength": -1}}},
        "tools[0].parameters.properties.x.minLength",
    ),
    (
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": "big"}}},
        "tools[0].parameters.properties.n.minimum",
    ),
    ({"type": "object", "properties": [1]}, "tools[0].parameters.properties"),
    (
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": 5}}}},
        "tools[0].parameters.properties.a.items.type",
    ),
]


@pytest.mark.parametrize(("schema", "param"), BAD_SCHEMAS)
async def test_an_invalid_schema_is_a_400_naming_its_path(
    gateway: GatewayServer, schema: dict[str, Any], param: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=RECV_TIMEOUT) as http:
        reply = await http.post("/responses", json=forced(schema))
        assert reply.status_code == 400
        error = assert_error(reply.json(), "invalid_function_parameters")
        assert error["param"] == param
        assert "Error" not in error["message"] and "invalid literal" not in error["message"]
        required = await http.post("/responses", json={**forced(schema), "tool_choice": "required"})
        assert required.status_code == 400
        assert assert_error(required.json(), "invalid_function_parameters")["param"] == param
    async with ws_connect(gateway) as ws:
        events = await create(ws, **forced(schema))
        failed = events[-1]
        assert failed["type"] == "response.failed"
        assert failed["response"]["error"]["code"] == "invalid_function_parameters"
        await prove_alive(ws)


# -- error shapes -----------------------------------------------------------------------------


async def test_unknown_paths_and_methods_are_openai_errors(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://{gateway.host}:{gateway.port}") as http:
        missing = await http.get("/v1/nowhere")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert assert_error(missing.json(), "not_found")["type"] == "invalid_request_error"
        wrong = await http.get("/v1/responses")
        assert wrong.status_code == 405
        assert "POST" in wrong.headers["allow"]
        assert_error(wrong.json(), "method_not_allowed")
        wrong_chat = await http.delete("/v1/chat/completions")
        assert wrong_chat.status_code == 405
        assert_error(wrong_chat.json(), "method_not_allowed")
        ok = await http.get("/v1/models")
        assert ok.status_code == 200
