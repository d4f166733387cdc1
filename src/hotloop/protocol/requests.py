"""Parsing a ``response.create`` / ``POST /v1/responses`` body into a typed request.

Only the request's *new* input is parsed here: a continuation never re-reads its history.
Every rejection is an :class:`~hotloop.errors.APIError` with the OpenAI error shape and the
offending ``param``; unknown fields are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hotloop.errors import APIError, InvalidMessage
from hotloop.protocol.server_session import STREAM_ID_PATTERN
from hotloop.wire.items import Item, items_from_input
from hotloop.wire.responses import ECHOED_SETTINGS

__all__ = ["CreateRequest", "ToolDef", "parse_create"]


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
class CreateRequest:
    """A validated request to create one response."""

    model: str
    input: tuple[Item, ...]
    instructions: str | None = None
    tools: tuple[ToolDef, ...] = ()
    tool_choice: str = "auto"
    forced_function: str | None = None
    parallel_tool_calls: bool = True
    store: bool = True
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    generate: bool = True
    stream_id: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


def _bad(message: str, param: str | None, code: str = "invalid_type") -> APIError:
    """A 400 for ``param``: by default a field of the wrong type (``invalid_type``); a field
    of the right type with a value out of range is ``invalid_value``, as OpenAI says."""
    return APIError(message, status=400, code=code, param=param)


def _parse_tools(raw: Any) -> tuple[ToolDef, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("'tools' must be a list", "tools")
    tools: list[ToolDef] = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise _bad(f"tools[{index}] must be an object", f"tools[{index}]")
        kind = tool.get("type", "function")
        if kind != "function":
            continue  # hosted tools are accepted but never called by a backend that lacks them
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(
                f"tools[{index}].name must be a non-empty string",
                f"tools[{index}].name",
                "invalid_value" if isinstance(name, str) else "invalid_type",
            )
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise _bad(
                f"tools[{index}].parameters must be a JSON schema object",
                f"tools[{index}].parameters",
            )
        description = tool.get("description") or ""
        tools.append(ToolDef(name=name, parameters=parameters, description=str(description)))
    return tuple(tools)


def _parse_tool_choice(raw: Any, tools: tuple[ToolDef, ...]) -> tuple[str, str | None]:
    if raw is None:
        return "auto", None
    if raw in ("auto", "none", "required"):
        return str(raw), None
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice.name must be a string", "tool_choice.name")
        if all(tool.name != name for tool in tools):
            raise _bad(
                f"Tool choice '{name}' not found in 'tools' parameter.",
                "tool_choice",
                "invalid_value",
            )
        return "function", name
    raise _bad(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
        "tool_choice",
        "invalid_value" if isinstance(raw, str) else "invalid_type",
    )


def parse_create(body: Mapping[str, Any], *, websocket: bool = False) -> CreateRequest:
    """Validate a create body; ``websocket`` enables the WS-only fields."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    try:
        items = items_from_input(body.get("input"))
    except InvalidMessage as exc:
        raise _bad(str(exc), exc.param, "invalid_input") from exc
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("'instructions' must be a string", "instructions")
    tools = _parse_tools(body.get("tools"))
    tool_choice, forced = _parse_tool_choice(body.get("tool_choice"), tools)
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _bad(
            "'previous_response_id' must be a non-empty string",
            "previous_response_id",
            "invalid_value" if isinstance(previous, str) else "invalid_type",
        )
    store = body.get("store", True)
    if not isinstance(store, bool):
        raise _bad("'store' must be a boolean", "store")
    max_output = body.get("max_output_tokens")
    if max_output is not None and (
        not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1
    ):
        raise _bad(
            "'max_output_tokens' must be a positive integer",
            "max_output_tokens",
            "invalid_type"
            if isinstance(max_output, bool) or not isinstance(max_output, int)
            else "invalid_value",
        )
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if body.get("background") is True and websocket:
        raise _bad(
            "'background' is not supported in WebSocket mode.",
            "background",
            "unsupported_parameter",
        )
    generate = body.get("generate", True) if websocket else True
    if not isinstance(generate, bool):
        raise _bad("'generate' must be a boolean", "generate")
    stream_id = body.get("stream_id") if websocket else None
    if stream_id is not None and (
        not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id)
    ):
        raise _bad(
            "'stream_id' must be 1-256 characters of [A-Za-z0-9_.-]",
            "stream_id",
            "invalid_stream_id",
        )
    if not items and previous is None and generate:
        raise _bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    settings = {key: body[key] for key in ECHOED_SETTINGS if key in body}
    settings.setdefault("tool_choice", body.get("tool_choice", "auto"))
    settings.setdefault("tools", body.get("tools", []))
    settings.setdefault("parallel_tool_calls", parallel)
    settings["store"] = store
    return CreateRequest(
        model=model,
        input=items,
        instructions=instructions,
        tools=tools,
        tool_choice=tool_choice,
        forced_function=forced,
        parallel_tool_calls=parallel,
        store=store,
        previous_response_id=previous,
        max_output_tokens=max_output,
        stream=bool(body.get("stream", False)),
        generate=generate,
        stream_id=stream_id,
        settings=settings,
    )
