"""The transports as drivers of the client session: the session's decisions, on the wire.

A scripted WebSocket-mode server answers each ``response.create`` as a test says (complete it,
answer an error, close the socket with a code), and records every frame, so each test checks
what went out: whole history or only the new items, on which lane, on which connection. The
HTTP transports are checked against the gateway (a store-backed loop whose previous response
the server does not know) and against httpx's mock transport (error statuses, broken
requests).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from hotloop.gateway import GatewayServer
from hotloop.transport import (
    ChatTransport,
    HTTPTransport,
    ModelRequest,
    TransportError,
    WebSocketTransport,
)
from hotloop.wire import codec
from hotloop.wire.events import Event, ResponseCompleted, ResponseCreated
from hotloop.wire.items import Item, items_from_input
from hotloop.wire.responses import ResponseObject

MODEL = "scripted"
HISTORY: list[Item] = [*items_from_input("first"), *items_from_input("second")]

#: What the scripted server does with one ``response.create``.
#: ("laneless-error:..." is an error that names no lane, as for a frame the server cannot read.)
Reply = str  # "complete", "error:<code>:<status>[:<retry-after>]", "close:<code>"


class ScriptedServer:
    """A WebSocket-mode server that answers each create with the next scripted reply.

    ``frames[c]`` are the creates received on connection ``c`` (decoded); once the script is
    used up, every create is completed.
    """

    def __init__(self, script: list[Reply]) -> None:
        self.script = list(script)
        self.frames: list[list[dict[str, Any]]] = []
        self.made = 0
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        self._server = await serve(self.handle, "127.0.0.1", 0, compression=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/responses"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def handle(self, socket: ServerConnection) -> None:
        frames: list[dict[str, Any]] = []
        self.frames.append(frames)
        async for message in socket:
            body = json.loads(message)
            frames.append(body)
            lane = body.get("stream_id")
            reply = self.script.pop(0) if self.script else "complete"
            if reply == "complete":
                self.made += 1
                response = ResponseObject(
                    id=f"resp_{self.made}", created_at=0, model=MODEL, status="completed"
                )
                await socket.send(
                    codec.encode_event(
                        ResponseCreated(response=response.with_status("in_progress")), lane
                    ).decode()
                )
                await socket.send(codec.encode_event(ResponseCompleted(response=response), lane))
            elif reply == "hold":
                continue  # no answer at all
            elif reply.startswith("start+"):
                # The default lane's response starts (and never ends), then the rest.
                self.made += 1
                response = ResponseObject(
                    id=f"resp_{self.made}", created_at=0, model=MODEL, status="in_progress"
                )
                await socket.send(codec.encode_event(ResponseCreated(response=response)).decode())
                reply = reply.removeprefix("start+")
                kind, code, status = reply.split(":")
                error = {"type": "error", "status": int(status)}
                error["error"] = {"type": "invalid_request_error", "code": code, "message": code}
                await socket.send(json.dumps(error))
            elif reply.startswith(("error:", "laneless-error:")):
                kind, code, status, *wait = reply.split(":")
                if kind == "laneless-error":
                    lane = None
                error = {"type": "error", "status": int(status)}
                error["error"] = {"type": "invalid_request_error", "code": code, "message": code}
                if wait:  # as OpenAI's envelope carries an HTTP error's headers
                    error["error"]["headers"] = {"Retry-After": wait[0]}
                if lane is not None:
                    error["stream_id"] = lane
                await socket.send(json.dumps(error))
            elif reply.startswith("close:"):
                await socket.close(int(reply.removeprefix("close:")), "scripted")
                return


def turn(previous: str | None = None, new_from: int = 0) -> ModelRequest:
    return ModelRequest(MODEL, HISTORY, new_from=new_from, previous_response_id=previous)


async def completed_id(client: WebSocketTransport | HTTPTransport, request: ModelRequest) -> str:
    events: list[Event] = []
    await client.stream_to(request, events.append)
    last = events[-1]
    assert isinstance(last, ResponseCompleted)
    return last.response.id


# -- WebSocket ----------------------------------------------------------------------------


async def test_going_away_before_the_first_event_reconnects_and_resends_full() -> None:
    async with ScriptedServer(["complete", "close:1001"]) as server:
        client = WebSocketTransport(server.url)
        try:
            first = await completed_id(client, turn())
            await completed_id(client, turn(first, new_from=1))
        finally:
            await client.close()

    old, new = server.frames
    assert old[1]["previous_response_id"] == first and len(old[1]["input"]) == 1
    # The new socket's cache holds nothing: the same turn, whole history, no previous id.
    assert "previous_response_id" not in new[0] and len(new[0]["input"]) == len(HISTORY)
    stats = client.stats
    assert (stats.connections_opened, stats.reconnects) == (2, 1)
    assert (stats.requests, stats.incremental_requests, stats.full_resends) == (3, 1, 2)
    assert stats.cache_misses == 0


async def refused(server: ScriptedServer) -> tuple[TransportError, WebSocketTransport]:
    """What a first turn to ``server`` raised, and the client (closed) that sent it."""
    client = WebSocketTransport(server.url)
    try:
        with pytest.raises(TransportError) as caught:
            await client.stream_to(turn(), lambda event: None)
    finally:
        await client.close()
    return caught.value, client


async def test_a_connection_limit_that_persists_is_raised_after_three_sends() -> None:
    limit = "error:websocket_connection_limit_reached:400"
    async with ScriptedServer([limit] * 5) as server:
        error, client = await refused(server)

    assert error.code == "websocket_connection_limit_reached"
    assert not error.replay_safe
    assert [len(frames) for frames in server.frames] == [1, 1, 1]  # one send per new socket
    assert client.stats.requests == 3 and client.stats.connections_opened == 3


async def test_a_refused_same_lane_continuation_is_sent_full_the_next_time() -> None:
    async with ScriptedServer(["complete", "error:rate_limit_exceeded:429"]) as server:
        client = WebSocketTransport(server.url)
        try:
            first = await completed_id(client, turn())
            with pytest.raises(TransportError) as caught:
                await client.stream_to(turn(first, new_from=1), lambda event: None)
            # The runner sends a replay-safe turn again: the server evicted its parent.
            await completed_id(client, turn(first, new_from=1))
        finally:
            await client.close()

    assert caught.value.replay_safe and caught.value.status == 429
    (frames,) = server.frames
    assert [frame.get("previous_response_id") for frame in frames] == [None, first, None]
    assert client.stats.cache_misses == 0


async def test_a_websocket_rate_limit_says_how_long_to_wait_in_its_error_headers() -> None:
    async with ScriptedServer(["error:rate_limit_exceeded:429:1.5"]) as server:
        error, _ = await refused(server)
    assert error.replay_safe and error.status == 429 and error.retry_after == 1.5


async def test_an_error_naming_no_lane_fails_the_only_turn_waiting_for_an_answer() -> None:
    # A frame the server could not read (over its size limit) gets an error without a
    # stream_id; the only turn with no event yet sent it, on a named lane.
    async with ScriptedServer(["laneless-error:message_too_large:413"]) as server:
        started = time.perf_counter()
        error, _ = await refused(server)
    assert (error.code, error.status, error.replay_safe) == ("message_too_large", 413, False)
    assert time.perf_counter() - started < 5
    (frames,) = server.frames
    assert frames[0]["stream_id"] == "hl-1"


async def test_an_error_naming_no_lane_waits_until_its_turn_is_the_only_one_left() -> None:
    # Two turns wait when the error comes: which one sent the unreadable frame, nobody can
    # tell yet. Once the other one got its own answer, the error is the first one's.
    async with ScriptedServer(["laneless-error:message_too_large:413"]) as server:
        client = WebSocketTransport(server.url)
        try:
            refused, completed = await asyncio.gather(
                client.stream_to(turn(), lambda event: None),
                completed_id(client, turn()),
                return_exceptions=True,
            )
        finally:
            await client.close()
    assert isinstance(refused, TransportError) and refused.code == "message_too_large"
    assert completed == "resp_1"


async def test_an_error_naming_no_lane_after_the_default_lanes_response_started() -> None:
    # One named lane: the first turn takes it (and gets no answer), the second the default
    # lane, whose response starts. An error naming no lane then cannot be the default lane's
    # (its errors come before its response starts): it is the waiting named lane's.
    script = ["hold", "start+laneless-error:message_too_large:413"]
    async with ScriptedServer(script) as server:
        client = WebSocketTransport(server.url, max_lanes=1)
        seen: list[Event] = []
        try:
            named = asyncio.create_task(client.stream_to(turn(), lambda event: None))
            while not server.frames or not server.frames[0]:
                await asyncio.sleep(0.01)
            default = asyncio.create_task(client.stream_to(turn(), seen.append))
            with pytest.raises(TransportError) as caught:
                await asyncio.wait_for(named, 5)
            assert caught.value.code == "message_too_large"
            assert [event.type for event in seen] == ["response.created"]
            assert not default.done()
            default.cancel()
        finally:
            await client.close()
    (frames,) = server.frames
    assert [frame.get("stream_id") for frame in frames] == ["hl-1", None]


async def test_a_continuation_runs_on_the_lane_of_its_parent() -> None:
    async with ScriptedServer([]) as server:
        client = WebSocketTransport(server.url)
        try:
            a, b = await asyncio.gather(completed_id(client, turn()), completed_id(client, turn()))
            # Each continues on its own lane, whichever lane was freed last.
            for previous in (b, a):
                await completed_id(client, turn(previous, new_from=1))
        finally:
            await client.close()

    (frames,) = server.frames
    lane_of = {f"resp_{n}": frame.get("stream_id") for n, frame in enumerate(frames[:2], 1)}
    assert set(lane_of.values()) == {"hl-1", "hl-2"}
    assert [(f["previous_response_id"], f["stream_id"]) for f in frames[2:]] == [
        (b, lane_of[b]),
        (a, lane_of[a]),
    ]


# -- HTTP ---------------------------------------------------------------------------------


async def test_store_backed_http_falls_back_to_full_on_previous_response_not_found(
    gateway: GatewayServer,
) -> None:
    client = HTTPTransport(gateway.base_url, incremental=True)
    request = ModelRequest(
        "hotloop-sim",
        items_from_input("Check the weather."),
        previous_response_id="resp_nobody_stored",
    )
    try:
        events = [event async for event in client.stream(request)]
    finally:
        await client.close()
    assert events[-1].type == "response.completed"
    stats = client.stats
    assert (stats.requests, stats.cache_misses) == (2, 1)
    assert (stats.incremental_requests, stats.full_resends) == (1, 1)


Handler = Callable[[httpx.Request], httpx.Response]


def mocked(client: HTTPTransport | ChatTransport, handler: Handler) -> None:
    client._client = httpx.AsyncClient(
        base_url="http://mocked/v1", transport=httpx.MockTransport(handler)
    )


def status(
    code: int, error_code: str | None = None, headers: dict[str, str] | None = None
) -> Handler:
    body = {"error": {"message": "no", "type": "x", "param": None, "code": error_code}}
    return lambda request: httpx.Response(code, json=body, headers=headers)


@pytest.mark.parametrize("kind", ["http", "chat"])
@pytest.mark.parametrize(
    ("code", "replay_safe"),
    [(408, True), (409, True), (429, True), (500, True), (503, True), (400, False), (404, False)],
)
async def test_http_error_statuses_are_replay_safe_only_when_transient(
    kind: str, code: int, replay_safe: bool
) -> None:
    client = HTTPTransport("http://mocked/v1") if kind == "http" else ChatTransport("http://x")
    mocked(client, status(code, "some_code"))
    try:
        with pytest.raises(TransportError) as caught:
            await client.stream_to(turn(), lambda event: None)
    finally:
        await client.close()
    assert (caught.value.status, caught.value.code) == (code, "some_code")
    assert caught.value.replay_safe is replay_safe
    assert client.stats.requests == 1


@pytest.mark.parametrize("kind", ["http", "chat"])
async def test_a_429_says_how_long_to_wait_in_its_headers(kind: str) -> None:
    client = HTTPTransport("http://mocked/v1") if kind == "http" else ChatTransport("http://x")
    mocked(client, status(429, "rate_limit_exceeded", {"retry-after-ms": "200"}))
    try:
        with pytest.raises(TransportError) as caught:
            await client.stream_to(turn(), lambda event: None)
    finally:
        await client.close()
    assert caught.value.replay_safe and caught.value.retry_after == 0.2


class _BreaksAfter(httpx.AsyncByteStream):
    """A response body that sends ``chunks`` and then breaks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset")


@pytest.mark.parametrize("kind", ["http", "chat"])
@pytest.mark.parametrize("events_first", [False, True])
async def test_a_broken_http_request_is_replay_safe_with_its_cause(
    kind: str, events_first: bool
) -> None:
    response = ResponseObject(id="resp_1", created_at=0, model=MODEL, status="in_progress")
    chunks = []
    if events_first:
        created = codec.encode_event(ResponseCreated(response=response))
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        chunk["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]
        data = created if kind == "http" else codec.dumps(chunk)
        chunks.append(b"data: " + data + b"\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        # The reply starts, then breaks (before or after its first event).
        return httpx.Response(200, stream=_BreaksAfter(chunks))

    client = HTTPTransport("http://mocked/v1") if kind == "http" else ChatTransport("http://x")
    mocked(client, handler)
    seen: list[Event] = []
    try:
        with pytest.raises(TransportError) as caught:
            await client.stream_to(turn(), seen.append)
    finally:
        await client.close()
    assert caught.value.replay_safe and caught.value.code == "connection_lost"
    assert isinstance(caught.value.__cause__, httpx.HTTPError)
    assert bool(seen) is events_first


@pytest.mark.parametrize("kind", ["http", "chat"])
async def test_an_unreachable_http_server_is_retried_with_backoff_then_connect_failed(
    kind: str,
) -> None:
    attempts = 0
    failures = [
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response"),
        httpx.ReadError("reset before any reply"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise failures[attempts % len(failures)]

    cls = HTTPTransport if kind == "http" else ChatTransport
    client = cls("http://mocked/v1", reconnect_timeout=0.3)
    mocked(client, handler)
    try:
        with pytest.raises(TransportError) as caught:
            await client.stream_to(turn(), lambda event: None)
    finally:
        await client.close()
    assert caught.value.code == "connect_failed" and not caught.value.replay_safe
    assert "http://mocked" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    # 25-50 ms, 50-100 ms, 100-200 ms, ...: several attempts within 0.3 s, never a busy loop.
    assert 3 <= attempts <= 8
    assert client.stats.requests == 0  # nothing was sent


async def test_an_http_server_that_comes_back_within_the_deadline_serves_the_turn() -> None:
    attempts = 0
    response = ResponseObject(id="resp_1", created_at=0, model=MODEL, status="completed")
    body = b"data: " + codec.encode_event(ResponseCompleted(response=response)) + b"\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, content=body)

    client = HTTPTransport("http://mocked/v1", reconnect_timeout=30)
    mocked(client, handler)
    seen: list[Event] = []
    try:
        await client.stream_to(turn(), seen.append)
    finally:
        await client.close()
    assert attempts == 4 and [event.type for event in seen] == ["response.completed"]
    assert client.stats.requests == 1
