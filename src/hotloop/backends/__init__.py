"""Model backends the gateway can serve: the embedded sim today, upstreams later."""

from hotloop.backends.base import Backend
from hotloop.backends.sim import DEFAULT_MODEL, SimBackend

__all__ = ["DEFAULT_MODEL", "Backend", "SimBackend"]
