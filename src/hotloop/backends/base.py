"""The seam between the gateway and a model: the :class:`Backend` protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from hotloop.protocol.generation import GenerationRequest, Output

__all__ = ["Backend"]


class Backend(Protocol):
    """A model backend the gateway serves.

    ``models()`` lists the model ids ``GET /v1/models`` shows and requests may name.
    ``generate`` streams one turn as :data:`~hotloop.protocol.generation.Output` records and
    must end with ``Finish``; it is cancelled (``aclose``/task cancellation) when the client
    goes away, and must release everything it holds when that happens.
    """

    def models(self) -> Sequence[str]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Output]: ...

    async def aclose(self) -> None: ...
