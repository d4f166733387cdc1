"""``hotloop.connect`` as users of the OpenAI SDK expect it.

``async with connect(...) as client``, one ``close()``, ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
honoured, extra headers and TLS settings reaching the server, ``Runner.run_sync`` with any
transport, and HTTP never storing conversations unless asked to.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trustme

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Agent, Runner
from hotloop.transport import HTTPTransport, TransportError, WebSocketTransport, connect
from support import LoopThread, ten_turn_scenario

MODEL = "hotloop-sim"


class Recorder:
    """A loopback server that records each request's head, then answers 404 and closes."""

    def __init__(self) -> None:
        self.heads: list[str] = []

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head.decode("latin-1").lower())
        body = b'{"error":{"message":"nothing here","type":"not_found","code":"not_found"}}'
        writer.write(
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield recorder, f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


async def test_async_with_opens_and_closes_the_client(gateway: GatewayServer) -> None:
    async with connect(gateway.base_url) as client:
        result = await Runner.run(Agent(MODEL), "hi", client=client)
        assert result.final_output
    with pytest.raises(TransportError) as caught:
        await Runner.run(Agent(MODEL), "hi", client=client)
    assert caught.value.code == "closed"


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
async def test_close_is_the_one_close_method(gateway: GatewayServer, transport: Any) -> None:
    client = connect(gateway.base_url, transport=transport)
    await Runner.run(Agent(MODEL), "hi", client=client)
    await client.close()
    assert not hasattr(client, "aclose")


async def test_the_openai_environment_variables_are_honoured(
    gateway_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway_factory(config=GatewayConfig(api_keys=frozenset({"from-env"}))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "from-env")
        async with connect() as client:
            result = await Runner.run(Agent(MODEL), "hi", client=client)
        assert result.final_output
        # An explicit key wins over the environment's.
        async with connect(api_key="wrong") as client:
            with pytest.raises(TransportError) as caught:
                await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=client)
        assert caught.value.status == 401


def test_no_base_url_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match=r"pass base_url .* or set OPENAI_BASE_URL"):
        connect()


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
async def test_extra_headers_and_the_key_reach_the_server(
    recorder: tuple[Recorder, str], transport: Any
) -> None:
    server, base_url = recorder
    client = connect(base_url, "sk-test", transport=transport, headers={"X-Team": "search"})
    async with client:
        with pytest.raises(TransportError):
            await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=client)
    assert server.heads
    head = server.heads[0]
    assert "x-team: search" in head and "authorization: bearer sk-test" in head


async def test_tls_uses_the_given_context(recorder: tuple[Recorder, str]) -> None:
    server, _ = recorder
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    tls = await asyncio.start_server(server.answer, "127.0.0.1", 0, ssl=server_context)
    port = tls.sockets[0].getsockname()[1]
    base_url = f"https://127.0.0.1:{port}/v1"
    try:
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        for transport in ("websocket", "http"):
            # Trusting the test authority: the TLS handshake succeeds and the server answers.
            async with connect(base_url, transport=transport, ssl_context=client_context) as ok:
                with pytest.raises(TransportError) as answered:
                    await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=ok)
            assert answered.value.status == 404
        # Without it, the certificate is refused and nothing reaches the server.
        heads = len(server.heads)
        async with connect(base_url, transport="http", reconnect_timeout=0.2) as refused:
            with pytest.raises(TransportError) as caught:
                await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=refused)
        assert caught.value.code == "connect_failed" and "CERTIFICATE" in str(caught.value)
        assert len(server.heads) == heads
    finally:
        tls.close()


def test_http_never_stores_conversations_unless_asked() -> None:
    stateless = connect("http://127.0.0.1:1/v1", transport="http")
    assert isinstance(stateless, HTTPTransport) and not stateless.incremental
    chained = connect("http://127.0.0.1:1/v1", transport="http", incremental=True)
    assert isinstance(chained, HTTPTransport) and chained.incremental
    websocket = connect("http://127.0.0.1:1/v1")
    assert isinstance(websocket, WebSocketTransport) and websocket.store is False


@pytest.fixture(scope="module")
def threaded_gateway() -> Iterator[str]:
    """A gateway served from another thread: ``run_sync`` blocks this one with its own loop."""
    thread = LoopThread()
    server = GatewayServer(SimBackend(ten_turn_scenario(), "zero"))
    thread.call(server.start())
    try:
        yield server.base_url
    finally:
        thread.call(server.stop())
        thread.close()


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
def test_run_sync_takes_a_transport(threaded_gateway: str, transport: Any) -> None:
    result = Runner.run_sync(Agent(MODEL), "hi", base_url=threaded_gateway, transport=transport)
    assert result.final_output == ten_turn_scenario().turns[0].text
