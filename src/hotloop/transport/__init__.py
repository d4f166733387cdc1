"""Client transports: asyncio I/O that drives the sans-I/O protocol objects.

:func:`connect` is the one entry point users need::

    client = hotloop.connect("http://127.0.0.1:8000/v1")                    # WebSocket mode
    client = hotloop.connect(url, transport="http")                          # HTTP + SSE
    client = hotloop.connect(url, transport="http", incremental=True)        # + previous id
    client = hotloop.connect(url, transport="chat")                          # Chat Completions
"""

from __future__ import annotations

from typing import Literal

from hotloop.transport.base import (
    RECONNECT_TIMEOUT,
    Backoff,
    IteratingTransport,
    ModelRequest,
    OnEvent,
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
    base_url: str,
    api_key: str | None = None,
    *,
    transport: Literal["websocket", "http", "chat"] = "websocket",
    incremental: bool = True,
    store: bool | None = False,
    max_lanes: int = 8,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
) -> Transport:
    """A transport to the server at ``base_url`` (``http://host:port/v1``), reused across runs.

    ``transport="websocket"`` (default): WebSocket mode, incremental input, ``store``
    (default ``False``) sent with each request. ``"http"``: Responses over SSE; stateless
    full-history requests unless ``incremental`` (then ``previous_response_id`` with
    ``store: true``). ``"chat"``: Chat Completions, full history each turn.

    A server that cannot be reached is tried again with exponential backoff and jitter until
    ``reconnect_timeout`` seconds have passed; then the turn raises
    :class:`TransportError` with code ``connect_failed``.
    """
    if transport == "websocket":
        return WebSocketTransport(
            websocket_url(base_url),
            api_key,
            store=store,
            max_lanes=max_lanes,
            reconnect_timeout=reconnect_timeout,
        )
    if transport == "http":
        return HTTPTransport(
            base_url, api_key, incremental=incremental, reconnect_timeout=reconnect_timeout
        )
    if transport == "chat":
        return ChatTransport(base_url, api_key, reconnect_timeout=reconnect_timeout)
    raise ValueError(f"unknown transport {transport!r}; use 'websocket', 'http' or 'chat'")
