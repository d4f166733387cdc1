"""Gateway settings: the limits, the store and the hooks a gateway runs with."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotloop.protocol.server_session import SessionConfig
from hotloop.wire.items import Item

__all__ = ["GatewayConfig", "InputGuard"]

#: A guard hook run by the input pipeline on every request's *new* items only. It raises
#: :class:`~hotloop.errors.APIError` to reject the request (for example a safety check).
InputGuard = Callable[[Sequence[Item]], None]

# The WebSocket limits have one set of defaults, the session's own.
_SESSION = SessionConfig()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How a gateway behaves. Durations are seconds; sizes are bytes.

    ``api_keys``: when set, requests must carry ``Authorization: Bearer <one of them>``;
    when ``None`` any token (or none) is accepted.
    ``tenants``: which tenant each key belongs to. Stored responses are scoped to the tenant
    of the key that created them: another tenant's key sees a 404 / ``previous_response_not_found``
    as for an id that never existed. A key not named here is a tenant of its own; without
    ``api_keys`` everything is one tenant.
    ``store_path``: the SQLite file for ``store: true`` responses and the request log;
    ``None`` keeps them in a bounded :class:`~hotloop.gateway.store.MemoryStore` that lives
    as long as the gateway (unless a store is given to the gateway itself).
    ``max_message_bytes``: the largest request body or WebSocket frame served. Larger
    frames up to twice this get a ``message_too_large`` error and the socket stays open;
    beyond that the transport closes the socket with 1009.
    ``max_queued_creates`` / ``max_queued_bytes``: what one WebSocket may have queued
    (admitted, not started); past either a create gets ``websocket_queue_full`` (429).
    ``max_header_bytes``: the request line and headers of one HTTP request (or WebSocket
    upgrade); larger ones get 431 and the connection is closed.
    ``header_timeout``: a connection must deliver a request's complete headers within this
    long of opening (or of the request's first byte); else it gets 408 and is closed.
    ``body_timeout``: while a request body is being read, the longest wait for its next
    bytes; else 408 (``request_timeout``) and the connection is closed.
    """

    api_keys: frozenset[str] | None = None
    tenants: Mapping[str, str] = field(default_factory=dict)
    store_path: Path | None = None
    max_message_bytes: int = _SESSION.max_message_bytes
    max_input_items: int = 100_000
    max_connections: int = 10_000
    idle_timeout: float = _SESSION.idle_timeout
    connection_lifetime: float = _SESSION.connection_lifetime
    max_lanes: int = _SESSION.max_lanes
    max_active_responses: int = _SESSION.max_active_responses
    cache_max_entries: int = _SESSION.cache_max_entries
    cache_max_bytes: int = _SESSION.cache_max_bytes
    max_queued_creates: int = _SESSION.max_queued_creates
    max_queued_bytes: int = _SESSION.max_queued_bytes
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    input_guards: Sequence[InputGuard] = field(default_factory=tuple)
    usage_flush_interval: float = 0.5
    usage_queue_size: int = 10_000
    #: How long an idle HTTP keep-alive connection is kept open. Longer than clients keep an
    #: idle pooled connection (httpx and the OpenAI SDKs: 5 s, aiohttp: 15 s): were the server
    #: to close first, a request sent as the close arrives fails with a read error.
    keep_alive_timeout: int = 75

    def tenant(self, key: str | None) -> str:
        """The tenant of an accepted bearer token: ``""`` when no keys are configured."""
        if self.api_keys is None or key is None:
            return ""
        return self.tenants.get(key, key)

    def session_config(self) -> SessionConfig:
        """The limits of each WebSocket connection's session."""
        return SessionConfig(
            max_message_bytes=self.max_message_bytes,
            max_lanes=self.max_lanes,
            max_active_responses=self.max_active_responses,
            idle_timeout=self.idle_timeout,
            connection_lifetime=self.connection_lifetime,
            cache_max_entries=self.cache_max_entries,
            cache_max_bytes=self.cache_max_bytes,
            max_queued_creates=self.max_queued_creates,
            max_queued_bytes=self.max_queued_bytes,
        )
