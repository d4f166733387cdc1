"""Chat Completions streams <-> Responses event streams.

:class:`ChatChunkEncoder` turns a Responses event stream into ``chat.completion.chunk`` dicts
(a gateway serving Chat Completions); :class:`ChatStreamDecoder` turns chat chunks back into
Responses events (a client talking to a chat-only server), so one stream assembler serves both.
:func:`chat_completion_from_response` builds the non-streaming body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotloop.errors import HotloopError, InvalidMessage, ProtocolError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.chat import SYSTEM_FINGERPRINT, invalid_field
from hotloop.wire.events import (
    ErrorEvent,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
    WebSocketError,
)
from hotloop.wire.items import (
    FunctionCall,
    Item,
    JSONDict,
    Message,
)
from hotloop.wire.responses import ResponseObject, Usage

__all__ = [
    "ChatChunkDecoder",
    "ChatChunkEncoder",
    "ChatStreamDecoder",
    "ChatStreamError",
    "chat_completion_from_response",
]


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
    # tool_calls whenever a call was made; length for a token cut-off.
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
    """The non-streaming ``chat.completion`` body for a finished response.

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
    """Map a Responses event stream onto ``chat.completion.chunk`` dicts.

    Feed every event of one response; write each returned dict as ``data: <json>`` and
    finish with ``data: [DONE]``. The SDK accumulator concatenates every string it sees, so
    the rules are exact: the role appears once, in the very first chunk; a call's ``id``
    and ``name`` once, in its first delta; ``index`` in every tool delta. The finish chunk
    (empty ``delta``, the one non-null ``finish_reason``) and, with ``include_usage``, the
    usage chunk (``choices: []``; ``usage: null`` on every other chunk) come with the terminal
    event. Every chunk carries the same completion ``id``. A failed response or ``error``
    event yields one ``{"error": {...}}`` dict, which makes the SDK raise ``APIError`` as it
    would against OpenAI.
    """

    __slots__ = ("_calls", "_finished", "_head", "_include_usage", "_role_sent", "_text_sent")

    def __init__(
        self, completion_id: str, model: str, created: int, include_usage: bool = False
    ) -> None:
        self._head: JSONDict = {
            "id": completion_id,  # one id for every chunk
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
            chunk["usage"] = None  # null on every chunk but the final usage chunk
        return chunk

    def _role(self, out: list[JSONDict]) -> None:
        # A text turn opens with role and an empty content string.
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
                # The very first chunk of a tool turn carries the role too.
                self._role_sent = True
                delta = {"role": "assistant", "content": None, "tool_calls": [first]}
                out.append(self._chunk(delta))
        return state

    def _arguments(self, out: list[JSONDict], state: list[int], fragment: str) -> None:
        if fragment:
            state[1] += len(fragment)
            # Later deltas carry only index and the arguments fragment (a repeated id or
            # name would be concatenated by the SDK accumulator).
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
            usage_chunk["choices"] = []  # the key must be present, empty
            usage_chunk["usage"] = _chat_usage(response.usage)
            out.append(usage_chunk)


# -- responses: chat -> Responses --------------------------------------------------------


class ChatStreamError(HotloopError):
    """A chat stream carried an ``{"error": ...}`` chunk: the server gave up mid-stream."""

    def __init__(self, message: str, code: str | None, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class ChatChunkDecoder:
    """Write the items of a ``chat.completion.chunk`` stream into a :class:`ResponseBuilder`.

    Feed each decoded chunk; each call returns the builder's events for it. Text opens an
    assistant message, ``reasoning_content`` (vLLM, llama.cpp, DeepSeek) a reasoning item,
    ``refusal`` a refusal part, each tool call a function call that keeps the server's
    ``call_id``. Chat servers stream calls one after another, so a call is closed the moment
    the next one starts (or the turn finishes): its ``function_call_arguments.done`` goes out
    then, and a client can start the tool while the model is still writing the next call.
    Usage (with the cached prompt tokens: ``prompt_tokens_details.cached_tokens``, or
    llama.cpp's ``timings.cache_n``) is recorded on the builder. :meth:`close` at the end of
    the stream closes what is open. The lifecycle events are the builder owner's business.
    """

    __slots__ = ("_calls", "_finish", "_kind", "_out")

    def __init__(self, out: ResponseBuilder) -> None:
        self._out = out
        self._kind: str | None = None  # what the open item streams: text, reasoning, refusal
        self._calls: dict[int, bool] = {}  # chat tool index -> still open
        self._finish: str | None = None

    @property
    def finish_reason(self) -> str | None:
        return self._finish

    def feed(self, chunk: Any) -> list[Event]:
        """Take one decoded chunk; return the events it implies (often one)."""
        if not isinstance(chunk, Mapping):
            raise InvalidMessage("a chat chunk must be a JSON object")
        error = chunk.get("error")
        if error is not None:
            error = error if isinstance(error, Mapping) else {"message": str(error)}
            code, param = error.get("code"), error.get("param")
            raise ChatStreamError(
                str(error.get("message") or "the server reported an error"),
                code if isinstance(code, str) else None,
                param if isinstance(param, str) else None,
            )
        out: list[Event] = []
        choices = chunk.get("choices")
        if choices is None:
            choices = []  # a usage chunk may omit them (OpenAI sends an empty list)
        elif not isinstance(choices, list):
            raise invalid_field("must be a list", "choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                raise invalid_field("must be an object for choice index 0", f"choices[{i}]")
            self._choice(choice, f"choices[{i}]", out)
        usage = chunk.get("usage")
        timings = chunk.get("timings")
        if usage is not None:
            # The last usage wins: servers with continuous usage stats send it on every
            # chunk, OpenAI once in a final chunk after the finish chunk.
            self._out.set_usage(_usage_from_chat(usage, timings))
        return out

    def close(self) -> list[Event]:
        """End of stream (``data: [DONE]`` or end of body): close what is still open.

        Usage comes after the finish chunk when it was asked for, so only the end of the
        stream says the turn is over.
        """
        if self._finish is None:
            raise ProtocolError("chat stream ended before a finish_reason")
        out: list[Event] = []
        self._close_open(out)
        if self._finish in ("length", "content_filter"):
            self._out.set_incomplete(
                "max_output_tokens" if self._finish == "length" else "content_filter"
            )
        return out

    def _choice(self, choice: Mapping[str, Any], where: str, out: list[Event]) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise invalid_field("must be an object", f"{where}.delta")
        if self._finish is not None and (
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("reasoning_content")
            or choice.get("finish_reason")
        ):
            raise ProtocolError(f"{where}: content after finish_reason")
        for key, kind in _STREAMED_KINDS:
            fragment = delta.get(key)
            if fragment is not None and not isinstance(fragment, str):
                raise invalid_field("must be a string", f"{where}.delta.{key}")
            if fragment:
                self._stream(kind, fragment, out)
        tool_calls = delta.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise invalid_field("must be a list", f"{where}.delta.tool_calls")
            for j, tool in enumerate(tool_calls):
                self._tool_delta(tool, f"{where}.delta.tool_calls[{j}]", out)
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                raise invalid_field("must be a string", f"{where}.finish_reason")
            self._close_open(out)
            self._finish = finish

    def _stream(self, kind: str, fragment: str, out: list[Event]) -> None:
        builder = self._out
        if self._kind != kind:
            if kind == "refusal" and self._kind == "text":
                # A refusal after text is a second part of the same message.
                out.extend(builder.open_part("refusal"))
            else:
                self._close_open(out)
                if kind == "reasoning":
                    out.extend(builder.open_reasoning())
                    out.extend(builder.open_part("reasoning_text"))
                elif kind == "text":
                    out.extend(builder.open_text())
                else:
                    out.extend(builder.open_message())
                    out.extend(builder.open_part("refusal"))
            self._kind = kind
        out.extend(builder.delta(fragment))

    def _tool_delta(self, tool: Any, where: str, out: list[Event]) -> None:
        if not isinstance(tool, dict):
            raise invalid_field("must be an object", where)
        index = tool.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # Every tool_call delta names its call by index.
            raise invalid_field("must be an integer", f"{where}.index")
        function = tool.get("function") or {}
        if not isinstance(function, dict):
            raise invalid_field("must be an object", f"{where}.function")
        fragment = function.get("arguments") or ""
        if not isinstance(fragment, str):
            raise invalid_field("must be a string", f"{where}.function.arguments")
        state = self._calls.get(index)
        if state is None:
            call_id, name = tool.get("id"), function.get("name")
            if not isinstance(call_id, str):
                raise invalid_field("must be a string in a call's first delta", f"{where}.id")
            if not isinstance(name, str):
                raise invalid_field(
                    "must be a string in a call's first delta", f"{where}.function.name"
                )
            # Calls stream one after another: a new one means the previous ones are complete.
            self._close_open(out)
            out.extend(self._out.open_call(name, call_id=call_id))
            self._calls[index] = True
            self._kind = "call"
        elif not state:
            raise ProtocolError(f"tool call {index} received arguments after a later call began")
        if fragment:
            out.extend(self._out.delta(fragment))

    def _close_open(self, out: list[Event]) -> None:
        if self._kind is None:
            return
        if self._kind == "call":
            for index, is_open in self._calls.items():
                if is_open:
                    self._calls[index] = False
        self._kind = None
        out.extend(self._out.close_item())


#: Chat delta fields that stream text, and what each streams into.
_STREAMED_KINDS = (("reasoning_content", "reasoning"), ("content", "text"), ("refusal", "refusal"))


class ChatStreamDecoder:
    """Turn ``chat.completion.chunk`` dicts into the Responses events of one whole response.

    For a client of a chat-only server: feed each decoded chunk, then call :meth:`close` at
    ``data: [DONE]`` or end of body. The first chunk brings ``response.created`` and
    ``response.in_progress``; an error chunk ends the stream with an ``error`` event; the
    close brings the terminal event. The events follow the canonical order, so a
    :class:`~hotloop.protocol.assembler.ResponseStream` accepts them.
    """

    __slots__ = ("_done", "_items", "_out", "_started")

    def __init__(self, response_id: str, model: str, created_at: int = 0) -> None:
        self._out = ResponseBuilder(
            ResponseObject(id=response_id, created_at=created_at, model=model, status="in_progress")
        )
        self._items = ChatChunkDecoder(self._out)
        self._started = False
        self._done = False

    @property
    def done(self) -> bool:
        """True once the terminal event was produced."""
        return self._done

    def feed(self, chunk: Any) -> list[Event]:
        """Take one decoded chunk; return the Responses events it implies."""
        if self._done:
            raise ProtocolError("chat chunk received after the response ended")
        out: list[Event] = []
        if not self._started:
            self._started = True
            out.extend(self._out.start())
        try:
            out.extend(self._items.feed(chunk))
        except ChatStreamError as exc:
            self._done = True
            out.append(
                ErrorEvent(
                    message=exc.message,
                    code=exc.code,
                    param=exc.param,
                    sequence_number=len(out),
                )
            )
        return out

    def close(self) -> list[Event]:
        """End of stream: return the closing events and the terminal event."""
        if self._done:
            return []
        events = self._items.close()
        self._done = True
        return [*events, *self._out.finish()]


def _usage_from_chat(raw: Any, timings: Any = None) -> Usage:
    if not isinstance(raw, dict):
        raise invalid_field("must be an object", "usage")

    def count(data: Any, key: str, where: str) -> int:
        value = data.get(key) if isinstance(data, dict) else None
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_field("must be an integer", f"{where}{key}")
        return value

    cached = count(raw.get("prompt_tokens_details"), "cached_tokens", "usage.")
    if not cached and isinstance(timings, dict):
        # llama.cpp reports the prompt tokens it reused from its cache as timings.cache_n.
        cached = count(timings, "cache_n", "timings.")
    return Usage(
        input_tokens=count(raw, "prompt_tokens", "usage."),
        cached_tokens=cached,
        output_tokens=count(raw, "completion_tokens", "usage."),
        reasoning_tokens=count(raw.get("completion_tokens_details"), "reasoning_tokens", "usage."),
    )
