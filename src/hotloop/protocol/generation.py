"""What the gateway asks of a model backend, and what a backend streams back.

A backend receives a :class:`GenerationRequest` (the resolved context, the request settings
and how much input the gateway had to process) and yields :data:`Output` records: an item
starts, its text or arguments grow by deltas, it ends; finally :class:`Finish` carries usage.
The gateway's execution core turns these into Responses stream events, so every backend
(embedded sim, Chat Completions upstream, Responses upstream) gets the whole wire protocol —
HTTP JSON, SSE, WebSocket mode, Chat Completions — for free (``protocol.md`` §8.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from hotloop.protocol.conversation import Conversation
from hotloop.wire.responses import Usage

__all__ = [
    "Delta",
    "EndItem",
    "Finish",
    "GenerationRequest",
    "Output",
    "StartCall",
    "StartText",
    "ToolDef",
]


@dataclass(frozen=True, slots=True)
class ToolDef:
    """A function tool offered to the model for one request."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""


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


@dataclass(frozen=True, slots=True)
class StartText:
    """An assistant message starts."""


@dataclass(frozen=True, slots=True)
class StartCall:
    """A function call to ``name`` starts; its arguments follow as deltas."""

    name: str


@dataclass(frozen=True, slots=True)
class Delta:
    """More text (or argument JSON) of the current item."""

    text: str


@dataclass(frozen=True, slots=True)
class EndItem:
    """The current item is complete."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The turn is over. ``incomplete_reason`` set means it stopped early (e.g. length)."""

    usage: Usage
    incomplete_reason: str | None = None


Output: TypeAlias = StartText | StartCall | Delta | EndItem | Finish
