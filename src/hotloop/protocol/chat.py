"""Chat Completions <-> Responses translation (``protocol.md`` §4).

hotloop's core speaks Responses. This module lets it face the Chat Completions world in
both directions, without I/O:

* server side (a gateway serving ``POST /v1/chat/completions``):
  :func:`chat_request_to_responses` turns the request into Responses items and settings,
  :class:`ChatChunkEncoder` maps the Responses event stream onto ``chat.completion.chunk``
  dicts following the §4.2 rules the SDK accumulator depends on, and
  :func:`chat_completion_from_response` builds the non-streaming body;
* client side (a runtime talking to a chat-only server): :func:`responses_to_chat_request`
  builds the request and :class:`ChatStreamDecoder` turns the chunks back into Responses
  events, so one :class:`~hotloop.protocol.assembler.ResponseStream` handles both worlds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotloop.errors import InvalidMessage, ProtocolError
from hotloop.wire.events import (
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    WebSocketError,
)
from hotloop.wire.items import (
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    Item,
    JSONDict,
    Message,
    Reasoning,
)
from hotloop.wire.responses import ResponseObject, Usage

__all__ = [
    "SYSTEM_FINGERPRINT",
    "ChatChunkEncoder",
    "ChatRequest",
    "ChatStreamDecoder",
    "chat_completion_from_response",
    "chat_request_to_responses",
    "responses_to_chat_request",
]

#: ``system_fingerprint`` of every chat body hotloop produces.
SYSTEM_FINGERPRINT = "fp_hotloop"

_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
# Request fields passed through to the Responses request unchanged (§2.1 accepts them all).
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


def _invalid(message: str, param: str) -> InvalidMessage:
    return InvalidMessage(f"{param}: {message}", param=param)


def _optional(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass: an integer field must not accept true or false.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _invalid(f"must be of type {kind.__name__}", key)
    return value


def _text_content(raw: Any, where: str, *, optional: bool = False) -> str:
    """A string content, or a list of ``text`` parts joined (system, assistant, tool)."""
    if isinstance(raw, str):
        return raw
    if raw is None and optional:
        return ""
    if not isinstance(raw, list):
        raise _invalid("must be a string or a list of text parts", f"{where}.content")
    pieces: list[str] = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _invalid("must be a part of type 'text'", at)
        text = part.get("text")
        if not isinstance(text, str):
            raise _invalid("must be a string", f"{at}.text")
        pieces.append(text)
    return "".join(pieces)


def _user_content(raw: Any, where: str) -> str | tuple[ContentPart, ...]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _invalid("must be a string or a list of parts", f"{where}.content")
    parts: list[ContentPart] = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _invalid("must be an object", at)
        kind, text, image = part.get("type"), part.get("text"), part.get("image_url")
        if kind == "text" and isinstance(text, str):
            parts.append(ContentPart("input_text", text))
        elif kind == "image_url" and isinstance(image, dict):
            url = image.get("url")
            if not isinstance(url, str):
                raise _invalid("must be a string", f"{at}.image_url.url")
            extra: JSONDict = {"image_url": url, "detail": image.get("detail") or "auto"}
            parts.append(ContentPart("input_image", None, extra))
        else:
            raise _invalid("must be a 'text' or 'image_url' part", at)
    return tuple(parts)


def _assistant_items(message: Mapping[str, Any], where: str) -> list[Item]:
    text = _text_content(message.get("content"), where, optional=True)
    raw_calls = message.get("tool_calls")
    if raw_calls is None:
        raw_calls = []
    elif not isinstance(raw_calls, list):
        raise _invalid("must be a list", f"{where}.tool_calls")
    items: list[Item] = []
    # An assistant turn that only called tools has no message item in Responses terms.
    if text or not raw_calls:
        items.append(Message(role="assistant", content=text))
    for j, call in enumerate(raw_calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise _invalid("must be an object", at)
        function = call.get("function")
        if call.get("type", "function") != "function" or not isinstance(function, dict):
            raise _invalid("must be a function tool call", at)
        call_id, name = call.get("id"), function.get("name")
        arguments = function.get("arguments")
        if not isinstance(call_id, str):
            raise _invalid("must be a string", f"{at}.id")
        if not isinstance(name, str):
            raise _invalid("must be a string", f"{at}.function.name")
        if not isinstance(arguments, str):
            raise _invalid("must be a JSON string", f"{at}.function.arguments")
        items.append(FunctionCall(call_id=call_id, name=name, arguments=arguments))
    return items


def _chat_tool_to_responses(tool: Any, where: str) -> JSONDict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _invalid("only function tools are supported", f"{where}.type")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _invalid("must be a string", f"{where}.function.name")
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
    raise _invalid("must be auto, none, required or a function choice", "tool_choice")


def chat_request_to_responses(body: Mapping[str, Any]) -> ChatRequest:
    """Read a ``POST /v1/chat/completions`` body (§4.1) as Responses items and settings.

    Raises :class:`~hotloop.errors.InvalidMessage` whose ``param`` names the bad field,
    such as ``messages[3].tool_call_id``. Unknown fields are ignored (§2.1).
    """
    if not isinstance(body, Mapping):
        raise InvalidMessage("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise _invalid("must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("must be a non-empty list", "messages")
    if body.get("n") not in (None, 1):
        raise _invalid("only n=1 is supported", "n")
    instructions: list[str] = []
    items: list[Item] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid("must be an object", where)
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
                raise _invalid("must be a string", f"{where}.tool_call_id")
            output = _text_content(message.get("content"), where)
            items.append(FunctionCallOutput(call_id=call_id, output=output))
        else:
            raise _invalid("must be system, developer, user, assistant or tool", f"{where}.role")
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise _invalid("must be a list", "tools")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _invalid("must be an object", "stream_options")
    include_usage = stream_options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _invalid("must be a boolean", "stream_options.include_usage")
    max_tokens = _optional(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int)
    extra: JSONDict = {key: body[key] for key in _PASSTHROUGH if body.get(key) is not None}
    effort = _optional(body, "reasoning_effort", str)
    if effort is not None:
        extra["reasoning"] = {"effort": effort}
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
            raise _invalid(f"{part.type!r} parts have no chat equivalent", f"{where}.content[{j}]")
    return parts


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

    Consecutive function calls (and the assistant text just before them) become ONE
    assistant message with several ``tool_calls``, the shape chat servers expect (§4.1).
    Reasoning items are dropped: chat has no way to send them back. Items with no chat
    equivalent raise :class:`~hotloop.errors.InvalidMessage`.
    """
    messages: list[JSONDict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    assistant: JSONDict | None = None  # the assistant message function calls attach to
    for i, item in enumerate(items):
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
            raise _invalid(f"{item.type!r} items have no chat equivalent", where)
    body: JSONDict = {"model": model, "messages": messages}
    if tools:
        body["tools"] = [
            _responses_tool_to_chat(tool, f"tools[{i}]") for i, tool in enumerate(tools)
        ]
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
        else:
            body[key] = value
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def _responses_tool_to_chat(tool: Mapping[str, Any], where: str) -> JSONDict:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise _invalid("only function tools have a chat equivalent", where)
    function: JSONDict = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if key in tool:
            function[key] = tool[key]
    return {"type": "function", "function": function}


# -- responses: Responses -> chat --------------------------------------------------------


def _chat_usage(usage: Usage | None) -> JSONDict:
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish_reason(response: ResponseObject, has_calls: bool) -> str:
    # §4.2 rule 4: tool_calls whenever a call was made; length for a token cut-off.
    if has_calls:
        return "tool_calls"
    if response.status == "incomplete":
        reason = (response.incomplete_details or {}).get("reason")
        if reason == "max_output_tokens":
            return "length"
        if reason == "content_filter":
            return "content_filter"
    return "stop"


def _error_body(message: str, code: Any, param: Any, kind: Any = "server_error") -> JSONDict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def chat_completion_from_response(
    response: ResponseObject, completion_id: str, created: int
) -> JSONDict:
    """The non-streaming ``chat.completion`` body for a finished response (§4.2, end).

    A failed response has no chat completion; the caller sends an error body instead.
    """
    texts: list[str] = []
    calls: list[JSONDict] = []
    for item in response.output:
        if isinstance(item, Message):
            texts.append(item.text)
        elif isinstance(item, FunctionCall):
            calls.append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
    message: JSONDict = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(response, bool(calls)),
            }
        ],
        "usage": _chat_usage(response.usage),
    }


class ChatChunkEncoder:
    """Map a Responses event stream onto ``chat.completion.chunk`` dicts (§4.2).

    Feed every event of one response; write each returned dict as ``data: <json>`` and
    finish with ``data: [DONE]``. The SDK accumulator concatenates every string it sees, so
    the rules are exact: the role appears once, in the very first chunk; a call's ``id``
    and ``name`` once, in its first delta; ``index`` in every tool delta (rules 1-3). The
    finish chunk and, with ``include_usage``, the usage chunk come with the terminal event
    (rules 4-5). A failed response or ``error`` event yields one ``{"error": {...}}`` dict,
    which makes the SDK raise ``APIError`` as it would against OpenAI.
    """

    __slots__ = ("_calls", "_finished", "_head", "_include_usage", "_role_sent", "_text_sent")

    def __init__(
        self, completion_id: str, model: str, created: int, include_usage: bool = False
    ) -> None:
        self._head: JSONDict = {
            "id": completion_id,  # rule 6: one id for every chunk
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self._include_usage = include_usage
        self._role_sent = False
        # output_index -> [chat tool index, characters of arguments sent so far]
        self._calls: dict[int, list[int]] = {}
        # (output_index, content_index) -> characters of text sent so far
        self._text_sent: dict[tuple[int, int], int] = {}
        self._finished = False

    def _chunk(self, delta: JSONDict, finish_reason: str | None = None) -> JSONDict:
        chunk = dict(self._head)
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        if self._include_usage:
            chunk["usage"] = None  # rule 5
        return chunk

    def _role(self, out: list[JSONDict]) -> None:
        # Rule 7: a text turn opens with role and an empty content string.
        if not self._role_sent:
            self._role_sent = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _text(self, out: list[JSONDict], key: tuple[int, int], text: str, final: bool) -> None:
        sent = self._text_sent.get(key, 0)
        fragment = text[sent:] if final else text
        if fragment:
            self._role(out)
            self._text_sent[key] = sent + len(fragment)
            out.append(self._chunk({"content": fragment}))

    def _call(self, out: list[JSONDict], output_index: int, call: FunctionCall) -> list[int]:
        state = self._calls.get(output_index)
        if state is None:
            state = self._calls[output_index] = [len(self._calls), 0]
            first: JSONDict = {
                "index": state[0],
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            if self._role_sent:
                out.append(self._chunk({"tool_calls": [first]}))
            else:
                # Rule 1: the very first chunk of a tool turn carries the role too.
                self._role_sent = True
                delta = {"role": "assistant", "content": None, "tool_calls": [first]}
                out.append(self._chunk(delta))
        return state

    def _arguments(self, out: list[JSONDict], state: list[int], fragment: str) -> None:
        if fragment:
            state[1] += len(fragment)
            # Rule 2: later deltas carry only index and the arguments fragment.
            tool = {"index": state[0], "function": {"arguments": fragment}}
            out.append(self._chunk({"tool_calls": [tool]}))

    def _item(self, out: list[JSONDict], output_index: int, item: Item) -> None:
        # Emit whatever of a finished item was not streamed (a server may skip deltas).
        if isinstance(item, FunctionCall):
            state = self._call(out, output_index, item)
            self._arguments(out, state, item.arguments[state[1] :])
        elif isinstance(item, Message):
            if isinstance(item.content, str):
                self._text(out, (output_index, 0), item.content, final=True)
            else:
                for index, part in enumerate(item.content):
                    if part.type == "output_text" and part.text is not None:
                        self._text(out, (output_index, index), part.text, final=True)

    def feed(self, event: Event) -> list[JSONDict]:
        """Take the next Responses event; return the chunks to send for it (often one)."""
        if self._finished:
            raise ProtocolError(f"{event.type!r} received after the response ended")
        out: list[JSONDict] = []
        if isinstance(event, OutputTextDelta):
            self._text(out, (event.output_index, event.content_index), event.delta, final=False)
        elif isinstance(event, FunctionCallArgumentsDelta):
            state = self._calls.get(event.output_index)
            if state is None:
                raise ProtocolError(
                    f"arguments for output_index {event.output_index} before its output_item.added"
                )
            self._arguments(out, state, event.delta)
        elif isinstance(event, OutputItemAdded):
            if isinstance(event.item, FunctionCall):
                self._call(out, event.output_index, event.item)
            elif isinstance(event.item, Message):
                self._role(out)  # the earliest moment a client can see the turn start
        elif isinstance(event, OutputTextDone):
            self._text(out, (event.output_index, event.content_index), event.text, final=True)
        elif isinstance(event, FunctionCallArgumentsDone):
            state = self._calls.get(event.output_index)
            if state is not None:
                self._arguments(out, state, event.arguments[state[1] :])
        elif isinstance(event, OutputItemDone):
            self._item(out, event.output_index, event.item)
        elif isinstance(event, (ResponseCompleted, ResponseIncomplete)):
            self._finish(out, event.response)
        elif isinstance(event, ResponseFailed):
            self._finished = True
            error = event.response.error or {}
            message = str(error.get("message") or "the response failed")
            out.append(_error_body(message, error.get("code"), None))
        elif isinstance(event, ErrorEvent):
            self._finished = True
            out.append(_error_body(event.message, event.code, event.param))
        elif isinstance(event, WebSocketError):
            self._finished = True
            body = event.error
            kind = body.get("type") or "server_error"
            out.append(_error_body(event.message, event.code, body.get("param"), kind))
        return out

    def _finish(self, out: list[JSONDict], response: ResponseObject) -> None:
        self._finished = True
        for index, item in enumerate(response.output):
            self._item(out, index, item)
        self._role(out)  # even an empty completion names its role once
        reason = _finish_reason(response, bool(self._calls))
        out.append(self._chunk({}, reason))
        if self._include_usage:
            usage_chunk = dict(self._head)
            usage_chunk["choices"] = []  # rule 5: the key must be present, empty
            usage_chunk["usage"] = _chat_usage(response.usage)
            out.append(usage_chunk)


# -- responses: chat -> Responses --------------------------------------------------------


class _OpenCall:
    __slots__ = ("call", "closed", "output_index", "parts")

    def __init__(self, output_index: int, call: FunctionCall) -> None:
        self.output_index = output_index
        self.call = call
        self.parts: list[str] = []
        self.closed = False


class ChatStreamDecoder:
    """Turn ``chat.completion.chunk`` dicts into the Responses events of one response.

    For a client of a chat-only server: feed each decoded chunk, then call :meth:`close`
    at ``data: [DONE]`` or end of body. The events follow the canonical order of §2.4, so a
    :class:`~hotloop.protocol.assembler.ResponseStream` accepts them. A call is closed as
    soon as the next one starts (chat servers stream calls one after another), so the
    assembler can report it before the model finishes the turn.
    """

    __slots__ = (
        "_calls",
        "_created_at",
        "_done",
        "_finish",
        "_id",
        "_items",
        "_message",
        "_model",
        "_next_index",
        "_prefix",
        "_seq",
        "_usage",
    )

    def __init__(self, response_id: str, model: str, created_at: int = 0) -> None:
        self._id = response_id
        self._model = model
        self._created_at = created_at
        self._prefix = response_id.removeprefix("resp_")
        self._seq = -1
        self._next_index = 0
        self._items: dict[int, Item] = {}
        self._message: tuple[int, list[str]] | None = None  # (output_index, text fragments)
        self._calls: dict[int, _OpenCall] = {}  # chat tool index -> call
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the terminal event was produced."""
        return self._done

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _response(self, status: str, **fields: Any) -> ResponseObject:
        return ResponseObject(
            id=self._id, created_at=self._created_at, model=self._model, status=status, **fields
        )

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """Take one decoded chunk; return the Responses events it implies."""
        if self._done:
            raise ProtocolError("chat chunk received after the response ended")
        if not isinstance(chunk, Mapping):
            raise InvalidMessage("a chat chunk must be a JSON object")
        out: list[Event] = []
        if self._seq < 0:
            response = self._response("in_progress")
            out.append(ResponseCreated(response=response, sequence_number=self._next()))
            out.append(ResponseInProgress(response=response, sequence_number=self._next()))
        error = chunk.get("error")
        if error is not None:
            error = error if isinstance(error, Mapping) else {"message": str(error)}
            code, param = error.get("code"), error.get("param")
            self._done = True
            out.append(
                ErrorEvent(
                    message=str(error.get("message") or ""),
                    code=code if isinstance(code, str) else None,
                    param=param if isinstance(param, str) else None,
                    sequence_number=self._next(),
                )
            )
            return out
        choices = chunk.get("choices")
        if choices is None:
            choices = []  # the usage chunk may omit them, though §4.2 rule 5 sends []
        elif not isinstance(choices, list):
            raise _invalid("must be a list", "choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                raise _invalid("must be an object for choice index 0", f"choices[{i}]")
            self._choice(choice, f"choices[{i}]", out)
        usage = chunk.get("usage")
        if usage is not None:
            # The last usage wins: servers with continuous usage stats send it on every
            # chunk, OpenAI once in a final chunk after the finish chunk (§4.2 rule 5).
            self._usage = _usage_from_chat(usage)
        return out

    def close(self) -> list[Event]:
        """End of stream (``data: [DONE]`` or end of body): return the terminal event.

        The terminal event waits for the end because the usage chunk, when requested, comes
        after the finish chunk (§4.2 rule 5).
        """
        if self._done:
            return []
        if self._finish is None:
            raise ProtocolError("chat stream ended before a finish_reason")
        return self._terminal()

    def _choice(self, choice: Mapping[str, Any], where: str, out: list[Event]) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _invalid("must be an object", f"{where}.delta")
        if self._finish is not None and (
            delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason")
        ):
            raise ProtocolError(f"{where}: content after finish_reason")
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise _invalid("must be a string", f"{where}.delta.content")
        if content:
            self._text(content, out)
        tool_calls = delta.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise _invalid("must be a list", f"{where}.delta.tool_calls")
            for j, tool in enumerate(tool_calls):
                self._tool_delta(tool, f"{where}.delta.tool_calls[{j}]", out)
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                raise _invalid("must be a string", f"{where}.finish_reason")
            self._close_message(out)
            self._close_calls(out)
            self._finish = finish

    def _text(self, content: str, out: list[Event]) -> None:
        if self._message is None:
            index = self._take_index()
            self._message = (index, [])
            item_id = self._item_id("msg", index)
            item = Message(role="assistant", content=(), id=item_id, status="in_progress")
            part = ContentPart("output_text", "", {"annotations": []})
            out.append(OutputItemAdded(output_index=index, item=item, sequence_number=self._next()))
            out.append(
                ContentPartAdded(
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    part=part,
                    sequence_number=self._next(),
                )
            )
        index, fragments = self._message
        fragments.append(content)
        out.append(
            OutputTextDelta(
                item_id=self._item_id("msg", index),
                output_index=index,
                content_index=0,
                delta=content,
                sequence_number=self._next(),
            )
        )

    def _take_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1

    def _item_id(self, kind: str, output_index: int) -> str:
        return f"{kind}_{self._prefix}_{output_index}"

    def _tool_delta(self, tool: Any, where: str, out: list[Event]) -> None:
        if not isinstance(tool, dict):
            raise _invalid("must be an object", where)
        index = tool.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # §4.2 rule 3: index is mandatory in every tool_call delta.
            raise _invalid("must be an integer", f"{where}.index")
        function = tool.get("function") or {}
        if not isinstance(function, dict):
            raise _invalid("must be an object", f"{where}.function")
        fragment = function.get("arguments") or ""
        if not isinstance(fragment, str):
            raise _invalid("must be a string", f"{where}.function.arguments")
        state = self._calls.get(index)
        if state is None:
            call_id, name = tool.get("id"), function.get("name")
            if not isinstance(call_id, str):
                raise _invalid("must be a string in a call's first delta", f"{where}.id")
            if not isinstance(name, str):
                raise _invalid("must be a string in a call's first delta", f"{where}.function.name")
            # Calls stream one after another: a new one means the previous ones are complete.
            self._close_message(out)
            self._close_calls(out)
            output_index = self._take_index()
            call = FunctionCall(
                call_id=call_id,
                name=name,
                arguments="",
                id=self._item_id("fc", output_index),
                status="in_progress",
            )
            state = self._calls[index] = _OpenCall(output_index, call)
            out.append(
                OutputItemAdded(output_index=output_index, item=call, sequence_number=self._next())
            )
        elif state.closed:
            raise ProtocolError(f"tool call {index} received arguments after a later call began")
        if fragment:
            state.parts.append(fragment)
            out.append(
                FunctionCallArgumentsDelta(
                    item_id=state.call.id or "",
                    output_index=state.output_index,
                    delta=fragment,
                    sequence_number=self._next(),
                )
            )

    def _close_message(self, out: list[Event]) -> None:
        if self._message is None:
            return
        index, fragments = self._message
        self._message = None
        text = "".join(fragments)
        item_id = self._item_id("msg", index)
        part = ContentPart("output_text", text, {"annotations": []})
        item = Message(role="assistant", content=(part,), id=item_id, status="completed")
        self._items[index] = item
        seq = self._next
        out.append(
            OutputTextDone(
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                sequence_number=seq(),
            )
        )
        out.append(
            ContentPartDone(
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
                sequence_number=seq(),
            )
        )
        out.append(OutputItemDone(output_index=index, item=item, sequence_number=self._next()))

    def _close_calls(self, out: list[Event]) -> None:
        for state in self._calls.values():
            if state.closed:
                continue
            state.closed = True
            arguments = "".join(state.parts)
            call = FunctionCall(
                call_id=state.call.call_id,
                name=state.call.name,
                arguments=arguments,
                id=state.call.id,
                status="completed",
            )
            self._items[state.output_index] = call
            out.append(
                FunctionCallArgumentsDone(
                    item_id=call.id or "",
                    output_index=state.output_index,
                    arguments=arguments,
                    sequence_number=self._next(),
                )
            )
            out.append(
                OutputItemDone(
                    output_index=state.output_index, item=call, sequence_number=self._next()
                )
            )

    def _terminal(self) -> list[Event]:
        self._done = True
        output = tuple(item for _, item in sorted(self._items.items()))
        seq = self._next()
        if self._finish in ("length", "content_filter"):
            reason = "max_output_tokens" if self._finish == "length" else "content_filter"
            response = self._response(
                "incomplete",
                output=output,
                usage=self._usage,
                incomplete_details={"reason": reason},
            )
            return [ResponseIncomplete(response=response, sequence_number=seq)]
        response = self._response("completed", output=output, usage=self._usage)
        return [ResponseCompleted(response=response, sequence_number=seq)]


def _usage_from_chat(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        raise _invalid("must be an object", "usage")

    def count(data: Any, key: str, where: str) -> int:
        value = data.get(key) if isinstance(data, dict) else None
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid("must be an integer", f"{where}{key}")
        return value

    return Usage(
        input_tokens=count(raw, "prompt_tokens", "usage."),
        cached_tokens=count(raw.get("prompt_tokens_details"), "cached_tokens", "usage."),
        output_tokens=count(raw, "completion_tokens", "usage."),
        reasoning_tokens=count(raw.get("completion_tokens_details"), "reasoning_tokens", "usage."),
    )
