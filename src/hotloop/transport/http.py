"""HTTP transports: Responses over SSE, and Chat Completions, each on a warm keep-alive pool.

Both are drivers of a :class:`~hotloop.protocol.client_session.ClientSession` with the
:data:`~hotloop.protocol.client_session.HTTP_RULES`: they move bytes between httpx and the
session, which decides what each request sends and what each failure becomes.

:class:`HTTPTransport` speaks ``POST /v1/responses`` with ``stream: true``. Stateless by
default (the whole history every turn, ``store: false``); with ``incremental=True`` it sends
only the new items plus ``previous_response_id`` and ``store: true``, because over HTTP the
server can only continue a response it persisted; a ``previous_response_not_found`` answer
makes it re-send the whole history.

:class:`ChatTransport` speaks ``POST /v1/chat/completions`` for servers that only know Chat
Completions (vLLM, llama.cpp, Ollama): the history is translated to messages every turn and the
chunk stream is translated back into Responses events, so the runtime sees one event model.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any, Protocol

import httpx

from hotloop.protocol.chat import responses_to_chat_request
from hotloop.protocol.chat_stream import ChatStreamDecoder
from hotloop.protocol.client_session import (
    HTTP_RULES,
    Action,
    Chaining,
    ClientSession,
    ClientTurn,
    Failure,
    Send,
    connection_failure,
    error_failure,
    retry_after,
)
from hotloop.protocol.sse import ResponsesSSEDecoder, SSEDecoder
from hotloop.transport.base import (
    RECONNECT_TIMEOUT,
    Backoff,
    IteratingTransport,
    ModelRequest,
    RequestTimings,
    TransportError,
    TransportStats,
    refusal_message,
    request_headers,
)
from hotloop.transport.websocket import request_body
from hotloop.wire import codec
from hotloop.wire.events import Event

__all__ = ["ChatTransport", "HTTPTransport"]


def _client(
    base_url: str,
    api_key: str | None,
    max_connections: int,
    open_timeout: float,
    headers: Mapping[str, str] | None,
    ssl_context: ssl.SSLContext | None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"content-type": "application/json", **request_headers(api_key, headers)},
        timeout=httpx.Timeout(connect=open_timeout, read=600.0, write=60.0, pool=60.0),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        verify=ssl_context if ssl_context is not None else True,
    )


async def _http_failure(response: httpx.Response) -> Failure:
    """An error status, with the code and message of OpenAI's error body when there is one."""
    body = await response.aread()
    status = response.status_code
    message = refusal_message(str(response.request.url), status, body, websocket=False)
    said, code = codec.error_body(body)
    wait = retry_after(response.headers, said)
    return error_failure(message, code=code, status=status, retry_after=wait)


def _broken(exc: httpx.HTTPError) -> Failure:
    return connection_failure(f"HTTP request failed: {exc!r}")


def _failed(
    session: ClientSession,
    stats: TransportStats,
    turn: ClientTurn,
    failure: Failure,
    delivered: bool,
    cause: BaseException | None,
) -> None:
    """Hand a failed request to the session: it raises, or says to send the turn again."""
    if session.failed(turn, failure, delivered=delivered, cause=cause) is Action.RESEND_FULL:
        stats.cache_misses += 1


class _Timer:
    """httpx's ``trace`` extension for one request: when a connection opened, when it was sent.

    httpcore reports ``connection.connect_tcp`` (and ``start_tls``) only when the pool had to
    open a connection, and ``http11.send_request_body`` (or ``http2.…``) around the write.
    """

    __slots__ = ("timings",)

    def __init__(self, timings: RequestTimings) -> None:
        self.timings = timings
        timings.connect_start_ns = timings.connect_end_ns = timings.sent_ns = None

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.started":
            self.timings.connect_start_ns = time.perf_counter_ns()
        elif name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.timings.connect_end_ns = time.perf_counter_ns()
        elif name.endswith("send_request_body.complete"):
            self.timings.sent_ns = time.perf_counter_ns()

    def extensions(self) -> dict[str, Any]:
        return {"trace": self}

    def handed_over(self, handed_ns: int, body_bytes: int, incremental: bool) -> None:
        """The response started: fill what the trace did not report (a mocked transport)."""
        timings = self.timings
        if timings.sent_ns is None:
            timings.sent_ns = handed_ns
        timings.body_bytes = body_bytes
        timings.incremental = incremental


def _timer(request: ModelRequest, encoded_ns: int) -> _Timer:
    # Always traced: the trace also tells when the pool opened a connection (stats).
    timings = request.timings if request.timings is not None else RequestTimings()
    timings.encoded_ns = encoded_ns
    return _Timer(timings)


#: Failures before any reply: the server refused, timed out or hung up without an answer (a
#: gateway restarting, a proxy or load balancer with no backend, a stale pooled connection).
_UNREACHABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


@contextlib.asynccontextmanager
async def _post(
    transport: _Posting,
    path: str,
    payload: bytes,
    request: ModelRequest,
    incremental: bool,
) -> AsyncIterator[httpx.Response]:
    """POST ``payload`` as a stream, with timings and stats (httpx errors pass through).

    A server that cannot be reached, or hangs up before any reply, is tried again with
    backoff until the transport's ``reconnect_timeout``; then :class:`TransportError`
    ``connect_failed``. No reply means nothing of the turn was delivered, so a re-send is safe
    (as the runner's own re-sends of a turn that failed before its first event are).
    """
    client, stats = transport._client, transport.stats
    backoff: Backoff | None = None
    while True:
        handed = time.perf_counter_ns()
        timer = _timer(request, handed)
        stack = contextlib.AsyncExitStack()
        try:
            reply = await stack.enter_async_context(
                client.stream("POST", path, content=payload, extensions=timer.extensions())
            )
        except _UNREACHABLE as exc:
            backoff = backoff or Backoff(transport.reconnect_timeout)
            if await backoff.wait():
                continue
            raise TransportError(
                f"cannot connect to {client.base_url}: {backoff.attempts} attempts in "
                f"{transport.reconnect_timeout} s failed, the last with {exc!r}",
                code="connect_failed",
            ) from exc
        break
    async with stack:
        stats.requests += 1
        stats.bytes_sent += len(payload)
        if incremental:
            stats.incremental_requests += 1
        else:
            stats.full_resends += 1
        timer.handed_over(handed, len(payload), incremental)
        if timer.timings.connect_start_ns is not None:
            stats.connections_opened += 1
        yield reply


class HTTPTransport(IteratingTransport):
    """Responses API over HTTP + SSE with a warm connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        incremental: bool = False,
        max_connections: int = 16,
        open_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        self.url = base_url
        self.incremental = incremental
        self.reconnect_timeout = reconnect_timeout
        self.stats = TransportStats()
        self.session = ClientSession(HTTP_RULES, Chaining.STORED if incremental else Chaining.NEVER)
        self._client = _client(
            base_url, api_key, max_connections, open_timeout, headers, ssl_context
        )

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        return self.stream_skipping(request, ())

    async def stream_skipping(
        self, request: ModelRequest, skip: Collection[str]
    ) -> AsyncIterator[Event]:
        def payload(send: Send) -> tuple[bytes, bool]:
            body = request_body(request, incremental=send.incremental, store=self.incremental)
            body["stream"] = True
            return codec.dumps(body), send.incremental

        async def events(reply: httpx.Response) -> AsyncIterator[Event]:
            # The event types the caller skips are dropped before being decoded.
            decoder = ResponsesSSEDecoder(skip=skip)
            async for chunk in reply.aiter_bytes():
                for event in decoder.feed(chunk):
                    yield event
            for event in decoder.close():
                yield event

        turn = self.session.start_turn(request.previous_response_id, request.new_from)
        async for event in _turn(self, request, turn, "/responses", payload, events):
            yield event

    async def close(self) -> None:
        await self._client.aclose()


#: Responses settings a Chat Completions request carries too (``text`` becomes
#: ``response_format``, ``reasoning`` becomes ``reasoning_effort``).
_CHAT_SETTINGS = ("text", "reasoning", "temperature", "top_p")


class ChatTransport(IteratingTransport):
    """Chat Completions with tool calls, translated to and from Responses events."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_connections: int = 16,
        open_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        self.url = base_url
        self.reconnect_timeout = reconnect_timeout
        self.stats = TransportStats()
        self.session = ClientSession(HTTP_RULES, Chaining.NEVER)
        self._client = _client(
            base_url, api_key, max_connections, open_timeout, headers, ssl_context
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        settings = dict(request.settings)
        body = responses_to_chat_request(
            request.model,
            request.history,
            request.instructions,
            request.tools,
            settings.pop("tool_choice", None),
            parallel_tool_calls=settings.pop("parallel_tool_calls", None),
            max_output_tokens=settings.pop("max_output_tokens", None),
            stream=True,
            include_usage=True,
            extra={key: settings[key] for key in _CHAT_SETTINGS if key in settings},
        )
        encoded = codec.dumps(body)

        def payload(send: Send) -> tuple[bytes, bool]:
            # Chat Completions has no previous response: every send is the whole history.
            return encoded, False

        async def events(reply: httpx.Response) -> AsyncIterator[Event]:
            decoder = ChatStreamDecoder(f"chat_{uuid.uuid4().hex}", request.model, int(time.time()))
            sse = SSEDecoder()
            async for chunk in reply.aiter_bytes():
                for message in sse.feed(chunk):
                    if message.data != "[DONE]":
                        for event in decoder.feed(codec.decode_object(message.data)):
                            yield event
            for event in decoder.close():
                yield event

        turn = self.session.start_turn(None, 0)
        async for event in _turn(self, request, turn, "/chat/completions", payload, events):
            yield event

    async def close(self) -> None:
        await self._client.aclose()


class _Posting(Protocol):
    session: ClientSession
    stats: TransportStats
    reconnect_timeout: float
    _client: httpx.AsyncClient


async def _turn(
    transport: _Posting,
    request: ModelRequest,
    turn: ClientTurn,
    path: str,
    payload: Callable[[Send], tuple[bytes, bool]],
    events: Callable[[httpx.Response], AsyncIterator[Event]],
) -> AsyncIterator[Event]:
    """Post one turn and stream its events, sending it again as the session's rules say.

    ``payload`` gives the body of each send and whether it is incremental; ``events`` reads a
    200 reply. A failure goes to the session, which raises or says to send again.
    """
    session, stats = transport.session, transport.stats
    while True:
        body, incremental = payload(session.next_send(turn))
        delivered = False
        cause: httpx.HTTPError | None = None
        try:
            async with _post(transport, path, body, request, incremental) as reply:
                if reply.status_code != 200:
                    failure = await _http_failure(reply)
                else:
                    async for event in events(reply):
                        delivered = True
                        yield event
                    session.finished(turn)
                    return
        except httpx.HTTPError as exc:
            failure, cause = _broken(exc), exc
        _failed(session, stats, turn, failure, delivered, cause)
