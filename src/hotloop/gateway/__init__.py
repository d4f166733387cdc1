"""The gateway: the OpenAI Responses API over HTTP/SSE and WebSocket mode, with a
connection-scoped cache, in front of any :class:`~hotloop.backends.Backend`."""

from hotloop.gateway.app import GatewayServer, build_app
from hotloop.gateway.config import GatewayConfig, InputGuard
from hotloop.gateway.core import Gateway, ResponseRun
from hotloop.gateway.store import MemoryStore, SQLiteStore, Store
from hotloop.protocol.cache import CachedResponse, ResponseCache

__all__ = [
    "CachedResponse",
    "Gateway",
    "GatewayConfig",
    "GatewayServer",
    "InputGuard",
    "MemoryStore",
    "ResponseCache",
    "ResponseRun",
    "SQLiteStore",
    "Store",
    "build_app",
]
