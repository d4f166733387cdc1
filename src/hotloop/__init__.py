"""hotloop: fast tool-calling LLM agent loops.

Today: the gateway (:mod:`hotloop.gateway`) serving the OpenAI Responses API over HTTP/SSE and
WebSocket mode with a connection-scoped cache, the embedded simulated model (:mod:`hotloop.sim`)
and the sans-I/O wire layer (:mod:`hotloop.wire`, :mod:`hotloop.protocol`).
"""

from hotloop.errors import (
    APIError,
    DecodeError,
    HotloopError,
    InvalidMessage,
    ProtocolError,
    ScenarioError,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "DecodeError",
    "HotloopError",
    "InvalidMessage",
    "ProtocolError",
    "ScenarioError",
    "__version__",
]
