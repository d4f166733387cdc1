"""Chat Completions <-> Responses translation.

hotloop's core speaks Responses. This module lets it face the Chat Completions world in
both directions, without I/O:

* server side (a gateway serving ``POST /v1/chat/completions``):
  :func:`chat_request_to_responses` turns the request into Responses items and settings,
  :class:`ChatChunkEncoder` maps the Responses event stream onto ``chat.completion.chunk``
  dicts following the chunk rules the SDK accumulator depends on, and
  :func:`chat_completion_from_response` builds the non-streaming body;
* client side (a runtime talking to a chat-only server): :func:`responses_to_chat_request`
  builds the request and :class:`ChatStreamDecoder` turns the chunks back into Responses
  events, so one :class:`~hotloop.protocol.assembler.ResponseStream` handles both worlds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotloop.errors import InvalidMessage
from hotloop.wire.items import (
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    Item,
    JSONDict,
    Message,
    Reasoning,
)

__all__ = [
    "SYSTEM_FINGERPRINT",
    "ChatRequest",
    "chat_messages",
    "chat_response_format",
    "chat_tool",
    "chat_request_to_responses",
    "responses_to_chat_request",
]

#: ``system_fingerprint`` of every chat body hotloop produces.
SYSTEM_FINGERPRINT = "fp_hotloop"

_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
# Request fields passed through to the Responses request unchanged (Responses accepts them all).
_PASSTHROUGH = ("temperature", "top_p", "user", "metadata", "store", "service_tier")


# -- requests: chat -> Responses ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A Chat Completions request restated in Responses terms.

    System and developer messages are not items: they are joined into ``instructions``.
    ``extra`` holds the settings passed through unchanged (``temperature``, ``top_p``, ...).
    """

    model: str
    input: tuple[Item, ...]
    instructions: str | None = None
    tools: list[JSONDict] = field(default_factory=list)
    tool_choice: str | JSONDict | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    extra: JSONDict = field(default_factory=dict)

    def to_responses_body(self) -> JSONDict:
        """The equivalent ``POST /v1/responses`` body."""
        body: JSONDict = {"model": self.model, "input": [item.to_dict() for item in self.input]}
        if self.instructions is not None:
            body["instructions"] = self.instructions
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.max_output_tokens is not None:
            body["max_output_tokens"] = self.max_output_tokens
        body["stream"] = self.stream
        body.update(self.extra)
        return body


def invalid_field(message: str, param: str) -> InvalidMessage:
    """The error for a malformed field of a chat body or chunk, named by ``param``."""
    return InvalidMessage(f"{param}: {message}", param=param)


def _optional(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass: an integer field must not accept true or false.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid_field(f"must be of type {kind.__name__}", key)
    return value


def _text_content(raw: Any, where: str, *, optional: bool = False) -> str:
    """A string content, or a list of ``text`` parts joined (system, assistant, tool)."""
    if isinstance(raw, str):
        return raw
    if raw is None and optional:
        return ""
    if not isinstance(raw, list):
        raise invalid_field("must be a string or a list of text parts", f"{where}.content")
    pieces: list[str] = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise invalid_field("must be a part of type 'text'", at)
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid_field("must be a string", f"{at}.text")
        pieces.append(text)
    return "".join(pieces)


def _user_content(raw: Any, where: str) -> str | tuple[ContentPart, ...]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise invalid_field("must be a string or a list of parts", f"{where}.content")
    parts: list[ContentPart] = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise invalid_field("must be an object", at)
        kind, text, image = part.get("type"), part.get("text"), part.get("image_url")
        if kind == "text" and isinstance(text, str):
            parts.append(ContentPart("input_text", text))
        elif kind == "image_url" and isinstance(image, dict):
            url = image.get("url")
            if not isinstance(url, str):
                raise invalid_field("must be a string", f"{at}.image_url.url")
            extra: JSONDict = {"image_url": url, "detail": image.get("detail") or "auto"}
            parts.append(ContentPart("input_image", None, extra))
        else:
            raise invalid_field("must be a 'text' or 'image_url' part", at)
    return tuple(parts)


def _assistant_items(message: Mapping[str, Any], where: str) -> list[Item]:
    text = _text_content(message.get("content"), where, optional=True)
    raw_calls = message.get("tool_calls")
    if raw_calls is None:
        raw_calls = []
    elif not isinstance(raw_calls, list):
        raise invalid_field("must be a list", f"{where}.tool_calls")
    items: list[Item] = []
    # An assistant turn that only called tools has no message item in Responses terms.
    if text or not raw_calls:
        items.append(Message(role="assistant", content=text))
    for j, call in enumerate(raw_calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise invalid_field("must be an object", at)
        function = call.get("function")
        if call.get("type", "function") != "function" or not isinstance(function, dict):
            raise invalid_field("must be a function tool call", at)
        call_id, name = call.get("id"), function.get("name")
        arguments = function.get("arguments")
        if not isinstance(call_id, str):
            raise invalid_field("must be a string", f"{at}.id")
        if not isinstance(name, str):
            raise invalid_field("must be a string", f"{at}.function.name")
        if not isinstance(arguments, str):
            raise invalid_field("must be a JSON string", f"{at}.function.arguments")
        items.append(FunctionCall(call_id=call_id, name=name, arguments=arguments))
    return items


def _chat_tool_to_responses(tool: Any, where: str) -> JSONDict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise invalid_field("only function tools are supported", f"{where}.type")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise invalid_field("must be a string", f"{where}.function.name")
    out: JSONDict = {"type": "function", "name": function["name"]}
    for key in ("description", "parameters", "strict"):
        if key in function:
            out[key] = function[key]
    return out


def _tool_choice_to_responses(raw: Any) -> str | JSONDict | None:
    if raw is None or (isinstance(raw, str) and raw in _TOOL_CHOICE_MODES):
        return raw
    function = raw.get("function") if isinstance(raw, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "function", "name": function["name"]}
    raise invalid_field("must be auto, none, required or a function choice", "tool_choice")


def chat_request_to_responses(body: Mapping[str, Any]) -> ChatRequest:
    """Read a ``POST /v1/chat/completions`` body as Responses items and settings.

    Raises :class:`~hotloop.errors.InvalidMessage` whose ``param`` names the bad field,
    such as ``messages[3].tool_call_id``. Unknown fields are ignored.
    """
    if not isinstance(body, Mapping):
        raise InvalidMessage("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise invalid_field("must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_field("must be a non-empty list", "messages")
    if body.get("n") not in (None, 1):
        raise invalid_field("only n=1 is supported", "n")
    instructions: list[str] = []
    items: list[Item] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_field("must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            instructions.append(_text_content(message.get("content"), where))
        elif role == "user":
            items.append(Message(role="user", content=_user_content(message.get("content"), where)))
        elif role == "assistant":
            items.extend(_assistant_items(message, where))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise invalid_field("must be a string", f"{where}.tool_call_id")
            output = _text_content(message.get("content"), where)
            items.append(FunctionCallOutput(call_id=call_id, output=output))
        else:
            raise invalid_field(
                "must be system, developer, user, assistant or tool", f"{where}.role"
            )
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise invalid_field("must be a list", "tools")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise invalid_field("must be an object", "stream_options")
    include_usage = stream_options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise invalid_field("must be a boolean", "stream_options.include_usage")
    max_tokens = _optional(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int)
    extra: JSONDict = {key: body[key] for key in _PASSTHROUGH if body.get(key) is not None}
    effort = _optional(body, "reasoning_effort", str)
    if effort is not None:
        extra["reasoning"] = {"effort": effort}
    text_format = _response_format_to_responses(body.get("response_format"))
    if text_format is not None:
        extra["text"] = {"format": text_format}
    return ChatRequest(
        model=model,
        input=tuple(items),
        instructions="\n\n".join(instructions) if instructions else None,
        tools=[_chat_tool_to_responses(tool, f"tools[{i}]") for i, tool in enumerate(raw_tools)],
        tool_choice=_tool_choice_to_responses(body.get("tool_choice")),
        parallel_tool_calls=_optional(body, "parallel_tool_calls", bool),
        max_output_tokens=max_tokens,
        stream=bool(_optional(body, "stream", bool)),
        include_usage=bool(include_usage),
        extra=extra,
    )


def _response_format_to_responses(value: Any) -> JSONDict | None:
    """Chat's ``response_format`` as a Responses ``text.format`` (the inverse of
    :func:`chat_response_format`); ``None`` for plain text or no format."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_field("must be an object", "response_format")
    kind = value.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise invalid_field("must be an object with a schema", "response_format.json_schema")
        return {"type": "json_schema", **spec}
    if kind in (None, "text"):
        return None
    raise invalid_field("must be text, json_object or json_schema", "response_format.type")


# -- requests: Responses -> chat ---------------------------------------------------------


def _chat_user_content(message: Message, where: str) -> str | list[JSONDict]:
    if isinstance(message.content, str):
        return message.content
    parts: list[JSONDict] = []
    for j, part in enumerate(message.content):
        if part.text is not None and part.type in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.text})
        elif part.type == "input_image" and isinstance(part.extra.get("image_url"), str):
            image: JSONDict = {"url": part.extra["image_url"]}
            if part.extra.get("detail") is not None:
                image["detail"] = part.extra["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise invalid_field(
                f"{part.type!r} parts have no chat equivalent", f"{where}.content[{j}]"
            )
    return parts


def chat_messages(items: Sequence[Item], first_index: int = 0) -> list[JSONDict]:
    """The chat messages for a run of Responses items (no system message).

    Consecutive function calls (and the assistant text just before them) become ONE
    assistant message with several ``tool_calls``, the shape chat servers expect. Reasoning
    items are dropped: chat has no way to send them back. Items with no chat equivalent
    raise :class:`~hotloop.errors.InvalidMessage` naming ``input[first_index + i]``.
    The result depends on ``items`` alone, so a conversation rendered segment by segment
    gives the same bytes every time (an engine's prefix cache hits).
    """
    messages: list[JSONDict] = []
    assistant: JSONDict | None = None  # the assistant message function calls attach to
    for i, item in enumerate(items, first_index):
        where = f"input[{i}]"
        if isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            assistant.setdefault("tool_calls", []).append(call)
            continue
        if isinstance(item, Reasoning):
            continue  # no chat equivalent, and it does not split an assistant turn
        assistant = None
        if isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
        elif isinstance(item, Message) and item.role == "assistant":
            assistant = {"role": "assistant", "content": item.text}
            messages.append(assistant)
        elif isinstance(item, Message) and item.role == "user":
            messages.append({"role": "user", "content": _chat_user_content(item, where)})
        elif isinstance(item, Message):
            messages.append({"role": item.role, "content": item.text})
        else:
            raise invalid_field(f"{item.type!r} items have no chat equivalent", where)
    return messages


def chat_response_format(text: Any) -> JSONDict | None:
    """Responses' ``text`` setting (its ``format``) as Chat's ``response_format``, if any."""
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = {
            key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt
        }
        return {"type": "json_schema", "json_schema": schema}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


def responses_to_chat_request(
    model: str,
    items: Sequence[Item],
    instructions: str | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
    tool_choice: str | Mapping[str, Any] | None = None,
    *,
    parallel_tool_calls: bool | None = None,
    max_output_tokens: int | None = None,
    stream: bool = False,
    include_usage: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> JSONDict:
    """Build a Chat Completions request body from Responses items and settings.

    The messages are :func:`chat_messages` of ``items``, after a system message holding
    ``instructions``.
    """
    messages: list[JSONDict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(chat_messages(items))
    body: JSONDict = {"model": model, "messages": messages}
    if tools:
        body["tools"] = [chat_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if isinstance(tool_choice, Mapping):
        body["tool_choice"] = {"type": "function", "function": {"name": tool_choice.get("name")}}
    elif tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel_tool_calls is not None:
        body["parallel_tool_calls"] = parallel_tool_calls
    if max_output_tokens is not None:
        body["max_completion_tokens"] = max_output_tokens
    for key, value in (extra or {}).items():
        if key == "reasoning" and isinstance(value, Mapping):
            if value.get("effort") is not None:
                body["reasoning_effort"] = value["effort"]
        elif key == "text":
            response_format = chat_response_format(value)
            if response_format is not None:
                body["response_format"] = response_format
        else:
            body[key] = value
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def chat_tool(tool: Mapping[str, Any], where: str = "tools") -> JSONDict:
    """The Chat Completions form of a Responses function tool (``where`` names it in errors)."""
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise invalid_field("only function tools have a chat equivalent", where)
    function: JSONDict = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if key in tool:
            function[key] = tool[key]
    return {"type": "function", "function": function}


# -- responses: Responses -> chat --------------------------------------------------------
