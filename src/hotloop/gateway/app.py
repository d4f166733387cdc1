"""The ASGI application and the server that runs it (standalone or in-process).

One port serves everything: ``POST /v1/responses`` is HTTP mode and a WebSocket upgrade on the
same path is WebSocket mode.

In-process use (tests, the demo, benchmarks)::

    async with GatewayServer(SimBackend("coding", "fast")) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="unused")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from hotloop.backends.base import Backend
from hotloop.errors import APIError, HotloopError
from hotloop.gateway.config import GatewayConfig
from hotloop.gateway.core import Gateway
from hotloop.gateway.http import HTTPEndpoints, error_response
from hotloop.gateway.store import Store
from hotloop.gateway.websocket import serve_websocket

__all__ = ["GatewayServer", "build_app"]


def build_app(gateway: Gateway) -> Starlette:
    """The Starlette app serving ``gateway``; its lifespan starts and closes the gateway."""
    http = HTTPEndpoints(gateway)
    connections = {"open": 0}

    async def websocket_endpoint(websocket: WebSocket) -> None:
        denied = http.authorize(websocket.headers)
        if denied is None and connections["open"] >= gateway.config.max_connections:
            denied = APIError(
                f"This gateway already serves {gateway.config.max_connections} connections.",
                status=429,
                type="rate_limit_error",
                code="too_many_connections",
            )
        if denied is not None:
            gateway.metrics.errors.labels("websocket", denied.code or denied.type).inc()
        connections["open"] += 1
        try:
            await serve_websocket(
                gateway,
                websocket,
                denial=error_response(denied, websocket=True) if denied is not None else None,
            )
        finally:
            connections["open"] -= 1

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # GatewayServer starts the gateway before uvicorn (so a failure is its caller's error,
        # not a traceback in uvicorn's log); an app served by another server starts it here.
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        Route("/v1/responses", http.create_response, methods=["POST"]),
        WebSocketRoute("/v1/responses", websocket_endpoint),
        Route("/v1/responses/{response_id}", http.retrieve_response, methods=["GET"]),
        Route("/v1/chat/completions", http.chat_completions, methods=["POST"]),
        Route("/v1/models", http.models, methods=["GET"]),
        Route("/health", http.health, methods=["GET"]),
        Route("/metrics", http.metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class CoalescingTransport:
    """Writes made in one event-loop iteration leave in one ``send``: a burst shares packets.

    A model that produces many events at once (the ``zero`` profile, a fast backend, several
    deltas parsed from one upstream read) would otherwise cost one syscall and one TCP segment
    per event here, and one wake-up per event in the client: measured, 120 of a coding turn's
    144 events reached the client in reads of their own. The buffer is flushed by a callback
    scheduled at the first write of an iteration, so no frame waits for anything but the code
    that produced it; a paced stream still leaves token by token.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]


class GatewayServer:
    """Runs a gateway under uvicorn, in the current event loop.

    ``port=0`` picks a free ephemeral port; :attr:`base_url` is what an OpenAI client takes.
    ``store`` is handed to the :class:`Gateway` (default: from ``config``).
    """

    def __init__(
        self,
        backend: Backend,
        config: GatewayConfig | None = None,
        *,
        store: Store | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.gateway = Gateway(backend, config, store=store)
        self.host = host
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto is
        # TCP, and accepted sockets inherit it. With proto 0, Nagle's algorithm meets delayed
        # ACKs and every small frame after a large one waits ~40 ms (measured).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        max_bytes = self.gateway.config.max_message_bytes
        self._app = build_app(self.gateway)
        self._config = uvicorn.Config(
            self._app,
            log_level=log_level,
            # Frames up to twice our own limit reach the gateway, which answers an oversized
            # frame with a message_too_large error and keeps the socket (uvicorn would close
            # it with 1009 at its 16 MiB default).
            ws_max_size=2 * max_bytes,
            h11_max_incomplete_event_size=None,
            # The SDKs keep the socket alive with pings every 20 s; per-message deflate
            # costs CPU on every frame of a loopback or LAN hop, so it is declined.
            ws_per_message_deflate=False,
            ws=CoalescingWebSocketProtocol,
            http="httptools",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(self._config)
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/responses"

    async def start(self) -> None:
        """Start the gateway (backend, store), then serve; a failure raises here."""
        await self.gateway.start()
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                await self.gateway.close()
                raise HotloopError("the gateway's server stopped during start-up")
            await asyncio.sleep(0.005)

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._socket])
        except SystemExit:
            # uvicorn ends a failed start-up with SystemExit(3), which would stop the whole
            # event loop; start() reports the cause instead.
            return

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until stopped; ``on_ready`` is called once the gateway accepts requests."""
        await self.start()
        if on_ready is not None:
            on_ready()
        assert self._task is not None
        await self._task

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
