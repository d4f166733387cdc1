"""What the gateway asks of a model backend: one :class:`GenerationRequest` per model turn.

A backend answers a request by writing to the turn's
:class:`~hotloop.protocol.builder.ResponseBuilder` and yielding the events each call returns,
as they happen: an item opens, its text or arguments grow, it closes; items the backend has
whole (an upstream's reasoning item, say) are added unchanged; the turn's usage is recorded
on the builder. The gateway's execution core frames those events for every transport (HTTP
JSON, SSE, WebSocket mode, Chat Completions), so every backend (embedded sim, Chat
Completions upstream, Responses upstream) gets the whole wire protocol for free.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from hotloop.protocol.conversation import Conversation
from hotloop.wire.events import Event

__all__ = ["Generation", "GenerationRequest", "ToolDef"]


@dataclass(frozen=True, slots=True)
class ToolDef:
    """A function tool offered to the model for one request."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The Responses ``tools`` entry (:func:`~hotloop.protocol.chat.chat_tool` makes the
        Chat Completions one from it)."""
        out: dict[str, Any] = {"type": "function", "name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = dict(self.parameters)
        return out


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One model turn to generate.

    ``context`` is the full conversation including this request's new input.
    ``processed_tokens`` is how many tokens the gateway's input pipeline had to look at for
    this request (only the new items on a cached continuation, everything on a stateless
    resend); a backend that models service cost charges for them.
    ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or the name of a forced function.
    """

    model: str
    context: Conversation
    processed_tokens: int
    instructions: str | None = None
    tools: tuple[ToolDef, ...] = ()
    tool_choice: str = "auto"
    forced_function: str | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None
    #: The request's other settings as the client sent them (``temperature``, ``top_p``,
    #: ``text``, ``reasoning``, ...): an upstream passes on what its API understands.
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


#: What a backend yields: the events one builder call returned (often exactly one).
Generation: TypeAlias = AsyncIterator[Sequence[Event]]
