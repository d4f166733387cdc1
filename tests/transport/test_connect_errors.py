"""Connecting to the wrong place says what is wrong and what to try.

A base URL without ``/v1``, a server that does not serve the Responses API (or not in
WebSocket mode), an API key the server refuses: each error names the URL, carries the server's
own message (never raw bytes) and the usual fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Agent, Runner
from hotloop.transport import TransportError, connect

MODEL = "hotloop-sim"


@pytest.fixture
async def chat_only_server() -> AsyncIterator[str]:
    """A server that answers every request as llama.cpp does a path it does not serve."""
    body = b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


async def failure(base_url: str, **options: Any) -> TransportError:
    client = connect(base_url, **options)
    try:
        with pytest.raises(TransportError) as caught:
            await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=client)
    finally:
        await client.close()
    return caught.value


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_a_base_url_without_v1_says_so(gateway: GatewayServer, transport: Any) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    error = await failure(base, transport=transport)
    message = str(error)
    assert f"127.0.0.1:{gateway.port}/responses" in message
    assert "/v1" in message and "http://host:port/v1" in message
    assert "b'" not in message


async def test_a_chat_only_server_over_websocket_points_to_the_chat_transport(
    chat_only_server: str,
) -> None:
    error = await failure(chat_only_server)
    message = str(error)
    assert error.status == 404
    assert chat_only_server.replace("http://", "ws://") + "/responses" in message
    assert "File Not Found" in message and "b'" not in message
    assert 'transport="chat"' in message and 'transport="http"' in message


async def test_a_chat_only_server_over_http_points_to_the_chat_transport(
    chat_only_server: str,
) -> None:
    error = await failure(chat_only_server, transport="http")
    message = str(error)
    assert error.status == 404
    assert f"{chat_only_server}/responses" in message
    assert "File Not Found" in message and 'transport="chat"' in message


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_a_refused_api_key_gets_the_servers_message_and_the_fix(
    gateway_factory: Any, transport: Any
) -> None:
    async with gateway_factory(config=GatewayConfig(api_keys=frozenset({"right"}))) as server:
        error = await failure(server.base_url, api_key="wrong", transport=transport)
    message = str(error)
    assert error.status == 401 and error.code == "invalid_api_key"
    assert server.base_url.split("//")[1] in message
    assert "invalid_api_key" in message and "b'" not in message
    assert "OPENAI_API_KEY" in message
