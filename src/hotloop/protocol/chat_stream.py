"""Chat Completions streams <-> Responses event streams (``protocol.md`` §4.2).

:class:`ChatChunkEncoder` turns a Responses event stream into ``chat.completion.chunk`` dicts
(a gateway serving Chat Completions); :class:`ChatStreamDecoder` turns chat chunks back into
Responses events (a client talking to a chat-only server), so one stream assembler serves both.
:func:`chat_completion_from_response` builds the non-streaming body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotloop.errors import InvalidMessage, ProtocolError
from hotloop.protocol.chat import SYSTEM_FINGERPRINT, invalid_field
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
    Item,
    JSONDict,
    Message,
)
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["ChatChunkEncoder", "ChatStreamDecoder", "chat_completion_from_response"]


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
            raise invalid_field("must be a list", "choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                raise invalid_field("must be an object for choice index 0", f"choices[{i}]")
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
            raise invalid_field("must be an object", f"{where}.delta")
        if self._finish is not None and (
            delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason")
        ):
            raise ProtocolError(f"{where}: content after finish_reason")
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise invalid_field("must be a string", f"{where}.delta.content")
        if content:
            self._text(content, out)
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
            raise invalid_field("must be an object", where)
        index = tool.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # §4.2 rule 3: index is mandatory in every tool_call delta.
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
        raise invalid_field("must be an object", "usage")

    def count(data: Any, key: str, where: str) -> int:
        value = data.get(key) if isinstance(data, dict) else None
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_field("must be an integer", f"{where}{key}")
        return value

    return Usage(
        input_tokens=count(raw, "prompt_tokens", "usage."),
        cached_tokens=count(raw.get("prompt_tokens_details"), "cached_tokens", "usage."),
        output_tokens=count(raw, "completion_tokens", "usage."),
        reasoning_tokens=count(raw.get("completion_tokens_details"), "reasoning_tokens", "usage."),
    )
