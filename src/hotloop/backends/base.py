"""The seam between the gateway and a model: :class:`Backend` and its :class:`BackendSession`.

A backend serves the gateway as a whole (the models it lists, shared pools and engines); a
session serves one client connection (a WebSocket, or one HTTP request) and holds what belongs
to it: an upstream socket, a pinned engine slot, the rendering of its conversations. The
gateway opens a session when a connection arrives and closes it when the connection goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import Generation, GenerationRequest

__all__ = ["Backend", "BackendSession", "StatelessSession"]


class BackendSession(Protocol):
    """One client connection's use of a backend.

    ``generate`` answers one model turn: it writes the turn to ``out`` and yields the events
    each builder call returns, as they happen, and records usage with ``out.set_usage``. It
    does not end the response: the gateway commits the turn and sends the terminal event. It
    is cancelled (``aclose`` of the generator, or task cancellation) when the client goes
    away, and must stop the model's work when that happens. An error it raises becomes a
    ``response.failed``; :class:`~hotloop.errors.APIError` keeps its code and message.
    """

    def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """A model backend the gateway serves.

    ``models()`` lists the model ids ``GET /v1/models`` shows and requests may name (after
    ``start()``); ``open_session()`` is called for each client connection.

    A backend whose model ids form a family too large to list (the simulated model's
    ``hotloop-sim:generic:<turns>``) may also define ``accepts_model(model) -> bool``: the
    gateway then accepts a request for an unlisted id the backend says it serves. It is
    optional, so it is not part of this protocol.
    """

    async def start(self) -> None:
        """Called once before the gateway serves (learn the upstream's models, say)."""

    def models(self) -> Sequence[str]: ...

    def open_session(self) -> BackendSession: ...

    async def aclose(self) -> None: ...


class StatelessSession:
    """The session of a backend that keeps nothing per connection: ``generate`` delegates
    to the backend, and closing it closes nothing."""

    __slots__ = ("generate",)

    def __init__(
        self, generate: Callable[[GenerationRequest, ResponseBuilder], Generation]
    ) -> None:
        self.generate = generate

    async def aclose(self) -> None:
        return None
