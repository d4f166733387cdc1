"""Malformed input and hostile clients.

Every malformed input gets a specific error, and both the connection that sent it and every
other session keep working: each WebSocket case then completes a turn on the same socket and
on a second socket that was open the whole time. Disconnects cancel the generation and leak
nothing (``GET /metrics`` and the gateway's own gauges return to zero).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import httpx
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import hotloop
from hotloop.runtime import Agent, Runner
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, Turn
from hotloop.transport import TransportError

MODEL = "hotloop-sim"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: A guard against hangs only; no assertion depends on how long anything takes.
RECV_TIMEOUT = 20.0
KiB = 1024

#: 10 tokens/s over 10,000 tokens: a generation that never ends on its own during a test.
ENDLESS = get_profile("zero").override(decode_tokens_per_s=10)
#: 5 ms per token.
SLOW = get_profile("zero").override(decode_tokens_per_s=200)


def text_scenario(tokens: int) -> Scenario:
    return Scenario(name="long", turns=(Turn(text="abcd" * tokens),))


# -- helpers --------------------------------------------------------------------------------


def ws_connect(server: Any, **kwargs: Any) -> Any:
    return connect(server.websocket_url, max_size=None, **kwargs)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
    return event


async def send_create(ws: ClientConnection, **fields: Any) -> None:
    await ws.send(json.dumps({"type": "response.create", "model": MODEL, **fields}))


async def collect(ws: ClientConnection) -> list[dict[str, Any]]:
    events = [await recv(ws)]
    while events[-1]["type"] not in TERMINAL:
        events.append(await recv(ws))
    return events


async def complete_turn(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await send_create(ws, **{"input": "Are you still there?", **fields})
    events = await collect(ws)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    return response


async def prove_alive(*sockets: ClientConnection) -> None:
    """Every socket completes a turn, concurrently, and continues it."""
    responses = await asyncio.gather(*(complete_turn(ws, store=False) for ws in sockets))
    await asyncio.gather(
        *(
            complete_turn(ws, previous_response_id=r["id"], input="and again", store=False)
            for ws, r in zip(sockets, responses, strict=True)
        )
    )


def assert_ws_error(
    event: dict[str, Any],
    code: str,
    *,
    status: int = 400,
    param: str | None = None,
    stream_id: str | None = None,
) -> None:
    """The WS ``error`` envelope: nested error object, lane echo only if valid."""
    assert event["type"] == "error", event
    assert event["status"] == status
    error = event["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    assert "code" not in event and "message" not in event  # never the SSE shape
    if stream_id is None:
        assert "stream_id" not in event
    else:
        assert event["stream_id"] == stream_id


def assert_http_error(reply: httpx.Response, status: int, code: str, param: str | None) -> None:
    """OpenAI's error body: exactly ``{"error": {message, type, param, code}}``."""
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def metrics_text(server: Any) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://{server.host}:{server.port}/metrics")).text


async def wait_for_metrics(server: Any, **expected: float) -> None:
    """Poll ``GET /metrics`` until every named gauge has its expected value."""
    for _ in range(1000):
        text = await metrics_text(server)
        if all(metric(text, name) == value for name, value in expected.items()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"metrics never reached {expected}: {text}")


def gauge(server: Any, name: str) -> float | None:
    value: float | None = server.gateway.metrics.registry.get_sample_value(name)
    return value


async def first_delta(events: AsyncIterator[str]) -> None:
    async for line in events:
        if "response.output_text.delta" in line:
            return
    raise AssertionError("the stream ended before its first delta")


@pytest.fixture
async def sockets(gateway: Any) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """The socket under test and a bystander session, both open for the whole test."""
    async with ws_connect(gateway) as ws, ws_connect(gateway) as bystander:
        yield ws, bystander


# -- malformed WebSocket frames -------------------------------------------------------------

_FC_NO_CALL_ID = [{"type": "function_call_output", "output": "42"}]

WS_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("invalid-json", "{not json", {"code": "invalid_json"}),
    ("json-not-object", "[1, 2, 3]", {"code": "invalid_json"}),
    ("binary-invalid-json", b"\xff\xfe", {"code": "invalid_json"}),
    (
        "unknown-type",
        {"type": "response.pause", "model": MODEL},
        {"code": "unknown_event_type", "param": "type"},
    ),
    (
        "missing-type",
        {"model": MODEL, "input": "hi"},
        {"code": "missing_required_parameter", "param": "type"},
    ),
    (
        "missing-model",
        {"type": "response.create", "input": "hi"},
        {"code": "missing_required_parameter", "param": "model"},
    ),
    (
        "missing-input",
        {"type": "response.create", "model": MODEL},
        {"code": "missing_required_parameter", "param": "input"},
    ),
    (
        "item-without-call-id",
        {"type": "response.create", "model": MODEL, "input": _FC_NO_CALL_ID},
        {"code": "invalid_input", "param": "input[0].call_id"},
    ),
    (
        "input-not-a-list",
        {"type": "response.create", "model": MODEL, "input": 42},
        {"code": "invalid_input", "param": "input"},
    ),
    (
        "unknown-model",
        {"type": "response.create", "model": "gpt-nope", "input": "hi"},
        {"code": "model_not_found", "param": "model", "status": 404},
    ),
    (
        "unknown-model-on-a-lane",
        {"type": "response.create", "model": "gpt-nope", "input": "hi", "stream_id": "lane-1"},
        {"code": "model_not_found", "param": "model", "status": 404, "stream_id": "lane-1"},
    ),
    (
        "bad-stream-id",
        {"type": "response.create", "model": MODEL, "input": "hi", "stream_id": "no spaces!"},
        {"code": "invalid_stream_id", "param": "stream_id"},
    ),
    (
        "empty-stream-id",
        {"type": "response.create", "model": MODEL, "input": "hi", "stream_id": ""},
        {"code": "invalid_stream_id", "param": "stream_id"},
    ),
    (
        "long-stream-id",
        {"type": "response.create", "model": MODEL, "input": "hi", "stream_id": "x" * 257},
        {"code": "invalid_stream_id", "param": "stream_id"},
    ),
    (
        "non-string-stream-id",
        {"type": "response.create", "model": MODEL, "input": "hi", "stream_id": 7},
        {"code": "invalid_stream_id", "param": "stream_id"},
    ),
    (
        "unknown-previous-response",
        {
            "type": "response.create",
            "model": MODEL,
            "input": "hi",
            "previous_response_id": "resp_does_not_exist",
        },
        {"code": "previous_response_not_found", "param": "previous_response_id"},
    ),
    (
        "background",
        {"type": "response.create", "model": MODEL, "input": "hi", "background": True},
        {"param": "background", "code": "unsupported_parameter"},
    ),
    (
        "bad-tool-choice",
        {"type": "response.create", "model": MODEL, "input": "hi", "tool_choice": "sometimes"},
        {"param": "tool_choice", "code": ANY},
    ),
]


@pytest.mark.parametrize(
    ("frame", "expected"), [c[1:] for c in WS_CASES], ids=[c[0] for c in WS_CASES]
)
async def test_malformed_frame_gets_a_specific_error_and_nothing_breaks(
    sockets: tuple[ClientConnection, ClientConnection], frame: Any, expected: dict[str, Any]
) -> None:
    ws, bystander = sockets
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    event = await recv(ws)
    assert_ws_error(
        event,
        expected["code"],
        status=expected.get("status", 400),
        param=expected.get("param"),
        stream_id=expected.get("stream_id"),
    )
    await prove_alive(ws, bystander)


async def test_steer_is_answered_with_steer_failed(
    sockets: tuple[ClientConnection, ClientConnection],
) -> None:
    ws, bystander = sockets
    response = await complete_turn(ws)
    steer = {"type": "response.steer", "previous_response_id": response["id"], "input": "a cat"}
    await ws.send(json.dumps(steer))
    event = await recv(ws)
    assert event["type"] == "response.steer.failed"
    assert event["error"]["type"] == "invalid_request_error"
    assert event["error"]["code"] == "steering_not_supported"
    assert event["steer"]["previous_response_id"] == response["id"]
    assert event["steer"]["input"] == "a cat"  # the original input is echoed
    assert "stream_id" not in event
    await prove_alive(ws, bystander)


async def test_the_33rd_named_lane_is_refused(
    sockets: tuple[ClientConnection, ClientConnection],
) -> None:
    ws, bystander = sockets
    for index in range(32):
        await complete_turn(ws, stream_id=f"lane-{index}", store=False)
    await send_create(ws, input="one too many", stream_id="lane-32")
    assert_ws_error(
        await recv(ws), "websocket_stream_limit_reached", param="stream_id", stream_id="lane-32"
    )
    # Existing lanes and the default lane (which does not count) keep working.
    await complete_turn(ws, stream_id="lane-0", store=False)
    await complete_turn(ws, stream_id="lane-31", store=False)
    await prove_alive(ws, bystander)


async def test_oversized_frame_is_refused_and_the_socket_stays_open(
    gateway_factory: Any,
) -> None:
    async with gateway_factory(max_message_bytes=64 * KiB) as server:
        async with ws_connect(server) as ws, ws_connect(server) as bystander:
            big = {"type": "response.create", "model": MODEL, "input": "x" * (100 * KiB)}
            await ws.send(json.dumps(big))
            assert_ws_error(await recv(ws), "message_too_large", status=413)
            await prove_alive(ws, bystander)
            # The limit counts bytes, not characters: 40,000 three-byte characters.
            wide = {"type": "response.create", "model": MODEL, "input": "€" * 40_000}
            assert len(json.dumps(wide, ensure_ascii=False)) < 64 * KiB
            await ws.send(json.dumps(wide, ensure_ascii=False))
            assert_ws_error(await recv(ws), "message_too_large", status=413)
            await prove_alive(ws, bystander)
            # A frame just under the limit is served.
            fits = {"type": "response.create", "model": MODEL, "input": "y" * (60 * KiB)}
            await ws.send(json.dumps(fits))
            assert (await collect(ws))[-1]["type"] == "response.completed"
            # Beyond twice the limit the transport closes that socket (1009) and only it.
            await ws.send(json.dumps({**big, "input": "z" * (200 * KiB)}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await prove_alive(bystander)


async def test_a_run_whose_turn_is_over_the_frame_limit_fails_at_once(
    gateway_factory: Any,
) -> None:
    # The gateway cannot read the frame, so its error names no lane; the client knows the
    # only turn waiting for an answer sent it, and the run fails now, not at its deadline.
    async with gateway_factory(max_message_bytes=64 * KiB) as server:
        client = hotloop.connect(server.base_url)
        started = time.perf_counter()
        try:
            with pytest.raises(TransportError) as caught:
                await Runner.run(Agent(MODEL), "x" * (100 * KiB), client=client)
            # The transport goes on serving the next run.
            result = await Runner.run(Agent(MODEL), "Check the weather.", client=client)
        finally:
            await client.close()
    assert (caught.value.code, caught.value.status) == ("message_too_large", 413)
    assert time.perf_counter() - started < 10
    assert result.turns >= 1


# -- authentication -------------------------------------------------------------------------


async def test_bad_api_key_is_rejected_on_every_transport(gateway_factory: Any) -> None:
    async with gateway_factory(api_keys=frozenset({"good"})) as server:
        body = {"model": MODEL, "input": "hi"}
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for headers in ({"authorization": "Bearer bad"}, {}):
                reply = await http.post("/responses", json=body, headers=headers)
                assert_http_error(reply, 401, "invalid_api_key", None)
            ok = await http.post("/responses", json=body, headers={"authorization": "Bearer good"})
            assert ok.status_code == 200

        # The upgrade is refused with an HTTP 401 and a JSON body, never 101-then-close.
        for headers in ({"Authorization": "Bearer bad"}, {}):
            with pytest.raises(InvalidStatus) as denied:
                async with ws_connect(server, additional_headers=headers):
                    pass
            assert denied.value.response.status_code == 401
            denied_body = json.loads(denied.value.response.body)
            assert denied_body["status"] == 401
            assert denied_body["error"]["code"] == "invalid_api_key"

        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="bad", max_retries=0
        ) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.responses.create(model=MODEL, input="hi")
            assert caught.value.status_code == 401
            assert caught.value.code == "invalid_api_key"

        # Sessions with the right key are unaffected.
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="good", max_retries=0
        ) as client:
            response = await client.responses.create(model=MODEL, input="hi")
            assert response.status == "completed"
        good = {"Authorization": "Bearer good"}
        async with ws_connect(server, additional_headers=good) as a:
            async with ws_connect(server, additional_headers=good) as b:
                await prove_alive(a, b)


# -- disconnects cancel the generation ------------------------------------------------------


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-1000", "tcp-drop"])
async def test_ws_disconnect_mid_stream_cancels_the_generation(
    gateway_factory: Any, abrupt: bool
) -> None:
    async with gateway_factory(scenario=text_scenario(10_000), profile=ENDLESS) as server:
        async with ws_connect(server) as bystander:
            # The bystander's generation runs on while the other socket goes away.
            await send_create(bystander, input="keep going", store=False)
            while (await recv(bystander))["type"] != "response.output_text.delta":
                pass
            ws = await ws_connect(server)
            await send_create(ws, input="tell me everything", store=False)
            await send_create(ws, input="queued behind it", store=False)
            await send_create(ws, input="on another lane", store=False, stream_id="b")
            seen: set[str | None] = set()
            while len(seen) < 2:
                event = await recv(ws)
                if event["type"] == "response.output_text.delta":
                    seen.add(event.get("stream_id"))
            assert gauge(server, "hotloop_active_responses") == 3
            assert gauge(server, "hotloop_websocket_connections") == 2
            if abrupt:
                ws.transport.abort()
            else:
                await ws.close()
            await wait_for_metrics(
                server, hotloop_active_responses=1.0, hotloop_websocket_connections=1.0
            )
            assert (await recv(bystander))["type"] == "response.output_text.delta"
        await wait_for_metrics(
            server, hotloop_active_responses=0.0, hotloop_websocket_connections=0.0
        )
        assert gauge(server, "hotloop_active_responses") == 0
        assert gauge(server, "hotloop_websocket_connections") == 0
        # Nothing finished: the generations were cancelled, not run to completion.
        assert "hotloop_responses_total{" not in await metrics_text(server)
        async with ws_connect(server) as a, ws_connect(server) as b:
            await send_create(a, input="short", max_output_tokens=1, store=False)
            await send_create(b, input="short", max_output_tokens=1, store=False)
            for sock in (a, b):
                assert (await collect(sock))[-1]["type"] == "response.incomplete"


async def test_sse_disconnect_mid_stream_cancels_the_generation(gateway_factory: Any) -> None:
    async with gateway_factory(scenario=text_scenario(10_000), profile=ENDLESS) as server:
        body = {"model": MODEL, "input": "tell me everything", "stream": True}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=RECV_TIMEOUT) as http:
            async with http.stream("POST", "/responses", json=body) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                await first_delta(reply.aiter_lines())
                assert gauge(server, "hotloop_active_responses") == 1
            # Leaving the block closes the connection mid-stream.
            await wait_for_metrics(server, hotloop_active_responses=0.0)
            assert gauge(server, "hotloop_active_responses") == 0
            assert server.gateway.store.writes == 0  # it never completed, so never stored
            # Chat Completions streaming is cancelled the same way.
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "stream": True}
            async with http.stream("POST", "/chat/completions", json=chat) as reply:
                async for line in reply.aiter_lines():
                    if '"content":"abcd"' in line:
                        break
                assert gauge(server, "hotloop_active_responses") == 1
            await wait_for_metrics(server, hotloop_active_responses=0.0)
            # The gateway still serves HTTP and WebSocket clients.
            short = await http.post(
                "/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 1}
            )
            assert short.status_code == 200
            assert short.json()["status"] == "incomplete"
        async with ws_connect(server) as ws:
            await send_create(ws, input="short", max_output_tokens=1)
            assert (await collect(ws))[-1]["type"] == "response.incomplete"


# -- connection limits ----------------------------------------------------------------------


async def test_connection_lifetime_limit(gateway_factory: Any) -> None:
    async with gateway_factory(connection_lifetime=0.0) as server:
        async with ws_connect(server) as ws:
            await send_create(ws, input="hi", stream_id="lane-a")
            event = await recv(ws)
            assert event["type"] == "error"
            assert event["error"]["code"] == "websocket_connection_limit_reached"
            assert event["stream_id"] == "lane-a"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        # No work ran on that socket; new sessions are refused the same way, HTTP is not.
        assert server.gateway.store.writes == 0
        async with ws_connect(server) as other:
            await send_create(other, input="hi")
            assert (await recv(other))["error"]["code"] == "websocket_connection_limit_reached"
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            reply = await http.post("/responses", json={"model": MODEL, "input": "hi"})
            assert reply.status_code == 200
        await wait_for_metrics(server, hotloop_websocket_connections=0.0)


async def test_idle_socket_is_closed_with_1001(gateway_factory: Any) -> None:
    async with gateway_factory(idle_timeout=0.2) as server:
        async with ws_connect(server) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        # A socket that served a turn is idle again once the turn is over.
        async with ws_connect(server) as ws:
            await complete_turn(ws)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await wait_for_metrics(server, hotloop_websocket_connections=0.0)


async def test_busy_socket_is_not_idle(gateway_factory: Any) -> None:
    """A generation longer than the idle timeout (about 0.5 s against 0.2 s) completes."""
    async with gateway_factory(
        scenario=text_scenario(100), profile=SLOW, idle_timeout=0.2
    ) as server:
        async with ws_connect(server) as ws, ws_connect(server) as bystander:
            await prove_alive(ws, bystander)


# -- malformed HTTP bodies ------------------------------------------------------------------


async def test_malformed_http_bodies(gateway_factory: Any) -> None:
    async with gateway_factory(max_message_bytes=64 * KiB) as server:
        async with (
            ws_connect(server) as bystander,
            httpx.AsyncClient(base_url=server.base_url) as http,
        ):
            json_headers = {"content-type": "application/json"}
            reply = await http.post("/responses", content=b"{not json", headers=json_headers)
            assert_http_error(reply, 400, "invalid_json", None)
            reply = await http.post("/responses", content=b"[1, 2]", headers=json_headers)
            assert_http_error(reply, 400, "invalid_json", None)

            big = {"model": MODEL, "input": "x" * (100 * KiB)}
            reply = await http.post("/responses", json=big)
            assert_http_error(reply, 413, "message_too_large", None)

            async def chunks() -> AsyncIterator[bytes]:  # no content-length: chunked
                yield b'{"model": "hotloop-sim", "input": "'
                for _ in range(100):
                    yield b"x" * KiB
                yield b'"}'

            reply = await http.post("/responses", content=chunks(), headers=json_headers)
            assert_http_error(reply, 413, "message_too_large", None)

            reply = await http.post("/responses", json={"model": "gpt-nope", "input": "hi"})
            assert_http_error(reply, 404, "model_not_found", "model")
            reply = await http.post("/responses", json={"input": "hi"})
            assert_http_error(reply, 400, "missing_required_parameter", "model")
            reply = await http.post("/responses", json={"model": MODEL})
            assert_http_error(reply, 400, "missing_required_parameter", "input")
            reply = await http.post("/responses", json={"model": MODEL, "input": _FC_NO_CALL_ID})
            assert_http_error(reply, 400, "invalid_input", "input[0].call_id")
            reply = await http.post(
                "/responses",
                json={"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"},
            )
            assert_http_error(reply, 400, "previous_response_not_found", "previous_response_id")

            # Every session still works: HTTP JSON, SSE and the open socket.
            ok = await http.post("/responses", json={"model": MODEL, "input": "hi"})
            assert ok.status_code == 200 and ok.json()["status"] == "completed"
            streamed = await http.post(
                "/responses", json={"model": MODEL, "input": "hi", "stream": True}
            )
            assert streamed.status_code == 200
            assert "event: response.completed" in streamed.text
            await prove_alive(bystander)

        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", max_retries=0
        ) as client:
            with pytest.raises(openai.NotFoundError) as not_found:
                await client.responses.create(model="gpt-nope", input="hi")
            assert not_found.value.code == "model_not_found"
            assert not_found.value.param == "model"


CHAT_CASES: list[tuple[str, Any, str]] = [
    ("not-a-list", "hello", "messages"),
    ("empty", [], "messages"),
    ("not-an-object", ["hello"], "messages[0]"),
    ("unknown-role", [{"role": "wizard", "content": "x"}], "messages[0].role"),
    (
        "tool-without-call-id",
        [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}],
        "messages[1].tool_call_id",
    ),
]


async def test_chat_completions_with_malformed_messages(gateway: Any) -> None:
    async with (
        ws_connect(gateway) as bystander,
        httpx.AsyncClient(base_url=gateway.base_url) as http,
    ):
        for name, messages, param in CHAT_CASES:
            reply = await http.post(
                "/chat/completions", json={"model": MODEL, "messages": messages}
            )
            assert reply.status_code == 400, name
            error = reply.json()["error"]
            assert error["param"] == param, name
            assert error["type"] == "invalid_request_error"
        reply = await http.post("/chat/completions", content=b"{", headers={})
        assert_http_error(reply, 400, "invalid_json", None)
        reply = await http.post(
            "/chat/completions",
            json={"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]},
        )
        assert_http_error(reply, 404, "model_not_found", "model")
        ok = await http.post(
            "/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["finish_reason"] == "stop"
        await prove_alive(bystander)
