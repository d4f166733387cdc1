"""Client transports: asyncio I/O that drives the sans-I/O protocol objects.

:func:`connect` is the one entry point users need::

    client = hotloop.connect("http://127.0.0.1:8000/v1")                    # WebSocket mode
    client = hotloop.connect(url, transport="http")                          # HTTP + SSE
    client = hotloop.connect(url, transport="http", incremental=True)        # + previous id
    client = hotloop.connect(url, transport="chat")                          # Chat Completions
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Literal

from hotloop.transport.base import (
    RECONNECT_TIMEOUT,
    Backoff,
    IteratingTransport,
    ModelRequest,
    OnEvent,
    PushingTransport,
    RequestTimings,
    Transport,
    TransportError,
    TransportStats,
)
from hotloop.transport.http import ChatTransport, HTTPTransport
from hotloop.transport.websocket import WebSocketTransport

__all__ = [
    "RECONNECT_TIMEOUT",
    "Backoff",
    "ChatTransport",
    "HTTPTransport",
    "IteratingTransport",
    "PushingTransport",
    "ModelRequest",
    "OnEvent",
    "RequestTimings",
    "Transport",
    "TransportError",
    "TransportStats",
    "WebSocketTransport",
    "connect",
    "websocket_url",
]


def websocket_url(base_url: str) -> str:
    """The WebSocket-mode URL for an HTTP ``base_url``, as the OpenAI SDK builds it."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}/responses"


def connect(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    transport: Literal["websocket", "http", "chat"] = "websocket",
    incremental: bool = False,
    store: bool | None = False,
    max_lanes: int = 8,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
) -> Transport:
    """A transport to the server at ``base_url`` (``http://host:port/v1``), reused across runs.

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``, as
    in the OpenAI SDK. Use it as ``async with connect(...) as client:``, or call
    ``await client.close()``.

    ``transport="websocket"`` (default): WebSocket mode, incremental input, ``store``
    (default ``False``) sent with each request. ``"http"``: Responses over SSE, stateless:
    the whole history every turn with ``store: false``; ``incremental=True`` sends only the
    new items plus ``previous_response_id`` instead, which needs ``store: true`` (the server
    keeps the conversation), so it is never the default. ``"chat"``: Chat Completions, full
    history each turn.

    ``timeout`` bounds opening one connection (TCP, TLS, the WebSocket handshake);
    ``headers`` are sent with every request (and the WebSocket upgrade); ``ssl_context``
    sets up TLS for ``https://`` URLs (your own CA, client certificates). A server that
    cannot be reached is tried again with exponential backoff and jitter until
    ``reconnect_timeout`` seconds have passed; then the turn raises
    :class:`TransportError` with code ``connect_failed``.
    """
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise ValueError(
            "no server to connect to: pass base_url (http://host:port/v1) or set OPENAI_BASE_URL"
        )
    if api_key is None:
        api_key = os.environ.get("OPENAI_API_KEY") or None
    extra = dict(headers or {})
    if transport == "websocket":
        return WebSocketTransport(
            websocket_url(base_url),
            api_key,
            store=store,
            max_lanes=max_lanes,
            open_timeout=timeout,
            headers=extra,
            ssl_context=ssl_context,
            reconnect_timeout=reconnect_timeout,
        )
    if transport == "http":
        return HTTPTransport(
            base_url,
            api_key,
            incremental=incremental,
            open_timeout=timeout,
            headers=extra,
            ssl_context=ssl_context,
            reconnect_timeout=reconnect_timeout,
        )
    if transport == "chat":
        return ChatTransport(
            base_url,
            api_key,
            open_timeout=timeout,
            headers=extra,
            ssl_context=ssl_context,
            reconnect_timeout=reconnect_timeout,
        )
    raise ValueError(f"unknown transport {transport!r}; use 'websocket', 'http' or 'chat'")
