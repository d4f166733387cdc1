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
from dataclasses import dataclass
from typing import Any, TypeAlias

from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import CreateRequest, ToolDef
from hotloop.wire.events import Event

__all__ = ["Generation", "GenerationRequest"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One model turn to generate: the client's request and the conversation it continues.

    ``context`` is the full conversation including this request's new input.
    ``processed_tokens`` is how many tokens the gateway's input pipeline had to look at for
    this request (only the new items on a cached continuation, everything on a stateless
    resend); a backend that models service cost charges for them. The request's settings
    are read through: ``model``, ``instructions``, ``tools``, ``tool_choice`` (``"auto"``,
    ``"none"``, ``"required"``, or ``"function"`` with ``forced_function`` naming it),
    ``parallel_tool_calls``, ``max_output_tokens`` and the other ``settings`` as the client
    sent them (``temperature``, ``top_p``, ``text``, ``reasoning``, ...).
    """

    request: CreateRequest
    context: Conversation
    processed_tokens: int

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def instructions(self) -> str | None:
        return self.request.instructions

    @property
    def tools(self) -> tuple[ToolDef, ...]:
        return self.request.tools

    @property
    def tool_choice(self) -> str:
        return self.request.tool_choice

    @property
    def forced_function(self) -> str | None:
        return self.request.forced_function

    @property
    def parallel_tool_calls(self) -> bool:
        return self.request.parallel_tool_calls

    @property
    def max_output_tokens(self) -> int | None:
        return self.request.max_output_tokens

    @property
    def settings(self) -> Mapping[str, Any]:
        return self.request.settings


#: What a backend yields: the events one builder call returned (often exactly one).
Generation: TypeAlias = AsyncIterator[Sequence[Event]]
