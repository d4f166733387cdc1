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
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

import httptools
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from hotloop.backends.base import Backend
from hotloop.errors import APIError, HotloopError
from hotloop.gateway.config import GatewayConfig
from hotloop.gateway.core import Gateway
from hotloop.gateway.http import HTTPEndpoints, error_response, server_error
from hotloop.gateway.metrics import RateLimitedLog
from hotloop.gateway.store import Store
from hotloop.gateway.websocket import serve_websocket

__all__ = ["GatewayServer", "build_app"]

_log = logging.getLogger("hotloop.gateway")


def build_app(gateway: Gateway) -> Starlette:
    """The Starlette app serving ``gateway``; its lifespan starts and closes the gateway."""
    http = HTTPEndpoints(gateway)
    connections = {"open": 0}
    # Any client can cause a refusal: each is counted, and logged at a bounded rate.
    refusals = RateLimitedLog(_log)

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
            reason = denied.code or denied.type
            gateway.metrics.errors.labels("websocket", reason).inc()
            gateway.metrics.websocket_refused.labels(reason).inc()
            refusals.warning(reason, "Refused a WebSocket upgrade: %s (%d)", reason, denied.status)
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

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own refusals (no such path, wrong method) in OpenAI's error shape.
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        code, message = _HTTP_ERRORS.get(status, ("invalid_request", "The request is invalid."))
        if status == 404:
            message = f"Unknown path {request.url.path!r}."
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path!r}."
        error = APIError(message, status=status, code=code)
        gateway.metrics.errors.labels("http", code).inc()
        response = error_response(error)
        response.headers.update(exc.headers or {})
        return response

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Anything else that escaped an endpoint; Starlette still logs it with its traceback.
        gateway.metrics.errors.labels("http", "server_error").inc()
        return error_response(server_error())

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )


#: Starlette's HTTP refusals: their error ``code`` and a default message.
_HTTP_ERRORS = {
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
}


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
    """uvicorn's sans-I/O WebSocket protocol, writing through a :class:`CoalescingTransport`.

    A refused upgrade (the app's HTTP denial response) is not logged here: uvicorn would log
    each one, and an ERROR once the app returns without a handshake, so that any client could
    flood the log. The gateway counts refusals and logs them at a bounded rate instead.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if (
            kind == "websocket.http.response.start"
            and not self.handshake_complete
            and self.initial_response is None
            and not self.disconnected
        ):
            # What uvicorn does with it, without its log line.
            headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in message.get("headers", [])
            ]
            self.initial_response = (message["status"], headers, b"")
            return
        await super().send(message)
        if kind == "websocket.http.response.body" and not message.get("more_body", False):
            # The denial is complete: the handshake ended, with a refusal.
            self.handshake_complete = True


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized request head."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on request headers.

    httptools has no header size limit of its own, and uvicorn's only timeout is for idle
    keep-alive connections, so a client could send one endless header or trickle headers
    forever. Here the request line and headers of one request are bounded by
    ``max_header_bytes`` (431, then close) and must arrive within ``header_timeout`` of the
    connection opening or of the request's first byte (408, then close). Bytes are counted as
    they arrive, so an unfinished header never holds more than the limit plus one read. The
    body has its own idle timeout where the endpoints read it. The per-request cost is a few
    additions; the benchmark of HTTP mode shows no difference. A request that is not HTTP at
    all gets uvicorn's 400, and its warning is logged at a bounded rate (any client can send
    garbage at will).
    """

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    #: Where malformed requests are logged; one per server (see :class:`GatewayServer`).
    invalid_requests: RateLimitedLog = RateLimitedLog(logging.getLogger("uvicorn.error"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Between a request's first byte and its complete headers (or before any request).
        self._reading_headers = True
        self._raw_header_bytes = 0
        self._header_bytes = 0
        self._too_large = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request waits for the response in progress, not for its headers.
            self._arm_header_timer()
            return
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        self._disarm_header_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(
                STATUS_LINE[status] + b"content-length: 0\r\nconnection: close\r\n\r\n"
            )
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with the header limit checked around the parser.
        if self._reading_headers:
            self._raw_header_bytes += len(data)
            if self._header_timer is None:
                self._arm_header_timer()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._too_large:
                self._refuse(431)
                return
            msg = "Invalid HTTP request received."
            # Any client can send garbage: logged at a bounded rate, not once per request.
            self.invalid_requests.warning("invalid_http_request", msg)
            self.send_400_response(msg)
            return
        if self._reading_headers and self._raw_header_bytes > self.max_header_bytes:
            # An unfinished request head already over the limit.
            self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True
        self._raw_header_bytes = 0


class _Server(uvicorn.Server):
    """uvicorn's server, except for what a signal it caught does once it has shut down.

    uvicorn raises the signal again from inside ``serve()``; under asyncio's own SIGINT
    handling that second SIGINT can land after the loop is gone and be lost, and the process
    exits 0. Here the signals are only recorded (``caught``), and
    :meth:`GatewayServer.serve_forever` raises ``KeyboardInterrupt`` itself.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.caught: list[int] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self.caught = []
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self._caught) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _caught(self, sig: int, frame: Any) -> None:
        self.caught.append(sig)
        self.handle_exit(sig, frame)


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
        try:
            self._socket.bind((host, port))
        except BaseException:  # the port is taken, privileged, the host unknown: raised as is
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        limits = self.gateway.config
        max_bytes = limits.max_message_bytes

        class HttpProtocol(GuardedHttpProtocol):
            max_header_bytes = limits.max_header_bytes
            header_timeout = limits.header_timeout
            invalid_requests = RateLimitedLog(logging.getLogger("uvicorn.error"))

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
            http=HttpProtocol,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=2,
            # Outlive the clients' own idle expiry, so that they, not we, close idle sockets.
            timeout_keep_alive=self.gateway.config.keep_alive_timeout,
        )
        self._server = _Server(self._config)
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
        """Serve until stopped; ``on_ready`` is called once the gateway accepts requests.

        Ctrl-C (SIGINT) ends it with ``KeyboardInterrupt`` once the server has shut down
        gracefully; SIGTERM, after the same, ends the process as the signal does.
        """
        await self.start()
        if on_ready is not None:
            on_ready()
        assert self._task is not None
        await self._task
        caught = self._server.caught
        if signal.SIGTERM in caught:
            signal.raise_signal(signal.SIGTERM)
        if signal.SIGINT in caught:
            raise KeyboardInterrupt

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
