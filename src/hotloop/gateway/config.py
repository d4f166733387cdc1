"""Gateway settings, with the defaults and limits of ``protocol.md`` §7."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotloop.wire.items import Item

__all__ = ["GatewayConfig", "InputGuard"]

#: A guard hook run by the input pipeline on every request's *new* items only. It raises
#: :class:`~hotloop.errors.APIError` to reject the request (for example a safety check).
InputGuard = Callable[[Sequence[Item]], None]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How a gateway behaves. Durations are seconds; sizes are bytes.

    ``api_keys``: when set, requests must carry ``Authorization: Bearer <one of them>``;
    when ``None`` any token (or none) is accepted.
    ``store_path``: the SQLite file for ``store: true`` responses and the request log;
    ``None`` keeps them in an in-memory database that lives as long as the gateway.
    ``max_message_bytes``: the largest request body or WebSocket frame served. Larger
    frames up to twice this get a ``message_too_large`` error and the socket stays open;
    beyond that the transport closes the socket with 1009.
    """

    api_keys: frozenset[str] | None = None
    store_path: Path | None = None
    max_message_bytes: int = 64 * MiB
    max_input_items: int = 100_000
    max_connections: int = 10_000
    idle_timeout: float = 900.0
    connection_lifetime: float = 3600.0
    max_lanes: int = 32
    max_active_responses: int = 16
    cache_max_entries: int = 128
    cache_max_bytes: int = 256 * MiB
    input_guards: Sequence[InputGuard] = field(default_factory=tuple)
    usage_flush_interval: float = 0.5
    usage_queue_size: int = 10_000
