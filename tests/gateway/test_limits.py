"""Limits a client cannot get around: request heads, slow requests, queued creates, refusals.

Raw sockets play the misbehaving clients; each test then checks that the gateway still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hotloop.wire import codec

HEAD = b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def _open(server: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _reply(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes the connection (or resets it)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionError:
        pass
    return data


async def _still_serves(server: Any) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        assert (await http.get("/health")).status_code == 200


@pytest.mark.parametrize("size", [100 * 1024, 8 * 1024 * 1024])
async def test_an_oversized_request_head_gets_431_and_is_closed(
    gateway_factory: Any, size: int
) -> None:
    async with gateway_factory(max_header_bytes=64 * 1024) as server:
        reader, writer = await _open(server)
        writer.write(HEAD + b"x-big: " + b"a" * size + b"\r\ncontent-length: 2\r\n\r\n{}")
        with contextlib.suppress(ConnectionError):
            # The gateway stops reading at the limit: the rest may never be taken.
            await writer.drain()
        reply = await _reply(reader)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
        if size < 1024 * 1024:
            assert reply.startswith(b"HTTP/1.1 431 ")
        writer.close()
        await _still_serves(server)


async def test_headers_under_the_limit_are_served(gateway_factory: Any) -> None:
    async with gateway_factory(max_header_bytes=64 * 1024) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            reply = await http.get("/health", headers={"x-pad": "a" * 60 * 1024})
            assert reply.status_code == 200


async def test_partial_headers_are_cut_after_the_header_timeout(gateway_factory: Any) -> None:
    async with gateway_factory(header_timeout=0.3) as server:
        silent_reader, silent = await _open(server)  # never sends a byte
        reader, writer = await _open(server)
        writer.write(HEAD + b"x-slow: ")
        await writer.drain()
        started = time.monotonic()
        reply = await _reply(reader)
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3
        assert (await _reply(silent_reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
        silent.close()
        await _still_serves(server)


async def test_a_keep_alive_connection_is_not_cut_by_the_header_timeout(
    gateway_factory: Any,
) -> None:
    async with gateway_factory(header_timeout=0.3) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            for _ in range(3):
                assert (await http.get("/health")).status_code == 200
                await asyncio.sleep(0.5)


async def test_a_stalled_chunked_body_gets_408_and_is_closed(gateway_factory: Any) -> None:
    async with gateway_factory(body_timeout=0.3) as server:
        reader, writer = await _open(server)
        writer.write(HEAD + b'transfer-encoding: chunked\r\n\r\n5\r\n{"mod\r\n')
        await writer.drain()
        reply = await _reply(reader)
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b"request_timeout" in reply
        writer.close()
        await _still_serves(server)


async def _events_until(socket: Any, done: int, errors: int) -> tuple[int, list[dict[str, Any]]]:
    """Read until ``done`` responses completed and ``errors`` errors arrived."""
    completed, refused = 0, []
    async with asyncio.timeout(20):
        while completed < done or len(refused) < errors:
            event = codec.loads(await socket.recv())
            if event["type"] == "response.completed":
                completed += 1
            elif event["type"] == "error":
                refused.append(event)
    return completed, refused


async def test_a_flooded_socket_gets_queue_full_and_keeps_serving(
    gateway_factory: Any,
) -> None:
    create = codec.dumps(
        {"type": "response.create", "model": "hotloop-sim", "input": "hi", "store": False}
    ).decode()
    async with (
        gateway_factory(profile="fast", max_queued_creates=3) as server,
        connect(server.websocket_url) as socket,
    ):
        # One runs, three wait, the rest are refused; all sent before the first one ends.
        for _ in range(10):
            await socket.send(create)
        completed, refused = await _events_until(socket, 4, 6)
        assert completed == 4
        assert {event["error"]["code"] for event in refused} == {"websocket_queue_full"}
        assert {event["status"] for event in refused} == {429}
        # The queue drained: the socket serves again.
        await socket.send(create)
        assert await _events_until(socket, 1, 0) == (1, [])
        metrics = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{server.port}/metrics")
        assert (
            'hotloop_errors_total{code="websocket_queue_full",transport="websocket"} 6.0'
            in metrics.text
        )


async def test_refused_upgrades_are_counted_and_logged_at_a_bounded_rate(
    gateway_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's own loggers do not propagate to the root, where caplog listens.
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        async with gateway_factory(api_keys=frozenset({"sk-good"})) as server:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                for _ in range(50):
                    with pytest.raises(InvalidStatus) as refused:
                        async with connect(server.websocket_url):
                            pass
                    assert refused.value.response.status_code == 401
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                metrics = (await http.get("/metrics")).text
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert "invalid_api_key" in lines[0].getMessage()
    assert 'hotloop_websocket_refused_total{reason="invalid_api_key"} 50.0' in metrics
