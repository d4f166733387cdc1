"""hotloop: fast tool-calling LLM agent loops.

The runtime (:class:`Agent`, :func:`tool`, :class:`Runner`, :func:`connect`) runs agent loops
with eager, effect-aware parallel tool dispatch over a persistent WebSocket. The gateway
(:mod:`hotloop.gateway`) serves the OpenAI Responses API over HTTP/SSE and WebSocket mode with
a connection-scoped cache; :mod:`hotloop.sim` is the embedded simulated model; and
:mod:`hotloop.wire` / :mod:`hotloop.protocol` are the sans-I/O wire layer.
"""

from importlib import metadata as _metadata

from hotloop.errors import (
    APIError,
    DecodeError,
    HotloopError,
    InvalidMessage,
    ProtocolError,
    ScenarioError,
)
from hotloop.runtime import (
    Agent,
    MaxTurnsExceeded,
    ModelError,
    OutputValidationError,
    PartialRun,
    RunContext,
    Runner,
    RunResult,
    Tool,
    tool,
)
from hotloop.transport import TransportError, connect

try:
    __version__ = _metadata.version("hotloop")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "APIError",
    "Agent",
    "MaxTurnsExceeded",
    "ModelError",
    "OutputValidationError",
    "PartialRun",
    "RunContext",
    "RunResult",
    "Runner",
    "Tool",
    "TransportError",
    "connect",
    "tool",
    "DecodeError",
    "HotloopError",
    "InvalidMessage",
    "ProtocolError",
    "ScenarioError",
    "__version__",
]
