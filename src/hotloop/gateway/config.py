"""Gateway settings: the limits, the store and the hooks a gateway runs with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    ``store_path``: the SQLite file for ``store: true`` responses and the request log;
    ``None`` keeps them in a bounded :class:`~hotloop.gateway.store.MemoryStore` that lives
    as long as the gateway (unless a store is given to the gateway itself).
    ``max_message_bytes``: the largest request body or WebSocket frame served. Larger
    frames up to twice this get a ``message_too_large`` error and the socket stays open;
    beyond that the transport closes the socket with 1009.
    """

    api_keys: frozenset[str] | None = None
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
    input_guards: Sequence[InputGuard] = field(default_factory=tuple)
    usage_flush_interval: float = 0.5
    usage_queue_size: int = 10_000

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
        )
