"""A Chat Completions upstream behind the gateway: vLLM, SGLang, llama.cpp, Ollama, hosted APIs.

Chat Completions is stateless, so every turn sends the whole conversation. What the gateway
can still save is re-rendering it: each segment of a cached conversation is rendered to chat
messages, and encoded, once, and kept on the snapshot; a continuation renders only its new
items and the rest of the body is the same bytes as last turn, so the engine's prefix cache
hits on everything up to the new items.

The upstream's stream is decoded chunk by chunk into the turn's response builder. Each call's
``function_call_arguments.done`` goes out the moment the chunks show the call is complete (the
next call starts, or the turn finishes), so a client dispatches tools eagerly through the
gateway as it would against OpenAI. Usage carries the upstream's cached prompt tokens.

Replicas, retries, timeouts and errors are the shared ones of
:class:`~hotloop.backends.forwarding.ForwardingBackend`. A client that goes away closes the
upstream request, and the engine stops generating.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hotloop.backends.forwarding import ForwardingBackend
from hotloop.errors import APIError, InvalidMessage
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.chat import chat_messages, chat_response_format, chat_tool
from hotloop.protocol.chat_stream import ChatChunkDecoder, ChatStreamError
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item

__all__ = ["ChatBackend", "chat_body"]

#: Memo key of a segment's rendered, encoded chat messages on its conversation snapshot.
_RENDERED = "chat.messages"
#: Request settings a chat upstream understands under the same name.
_PASSED_SETTINGS = ("temperature", "top_p", "seed", "user", "stop", "presence_penalty")


def _render(items: Sequence[Item]) -> bytes:
    return b",".join(codec.dumps(message) for message in chat_messages(items))


def rendered_messages(context: Conversation) -> list[bytes]:
    """The encoded chat messages of each segment of ``context``, oldest first (memoized)."""
    parts = [node.derived(_RENDERED, _render) for node in context.segments()]
    parts.reverse()
    return [part for part in parts if part]


def chat_body(request: GenerationRequest, upstream_model: str) -> bytes:
    """The streamed Chat Completions request for one turn, encoded.

    The messages are spliced in as the segments' cached bytes, so the body costs encoding
    only the new items, the tools and the settings.
    """
    body: dict[str, Any] = {
        "model": upstream_model,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [chat_tool(tool.to_dict()) for tool in request.tools]
        if request.forced_function is not None:
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": request.forced_function},
            }
        else:
            body["tool_choice"] = request.tool_choice
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    settings = request.settings
    for key in _PASSED_SETTINGS:
        if settings.get(key) is not None:
            body[key] = settings[key]
    reasoning = settings.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
        body["reasoning_effort"] = reasoning["effort"]
    response_format = chat_response_format(settings.get("text"))
    if response_format is not None:
        body["response_format"] = response_format
    messages = rendered_messages(request.context)
    if request.instructions:
        system = {"role": "system", "content": request.instructions}
        messages.insert(0, codec.dumps(system))
    head = codec.dumps(body)
    return b"".join((head[:-1], b',"messages":[', b",".join(messages), b"]}"))


class _ChatStream:
    """A :class:`~hotloop.backends.forwarding.StreamDecoder` over chat chunks."""

    __slots__ = ("_decoder", "_url", "done")

    def __init__(self, out: ResponseBuilder, url: str) -> None:
        self._decoder = ChatChunkDecoder(out)
        self._url = url
        self.done = False  # a chat stream ends with its body (the usage chunk comes last)

    def feed(self, data: str) -> Sequence[Event]:
        try:
            return self._decoder.feed(codec.decode_object(data))
        except ChatStreamError as exc:
            raise APIError(
                f"The upstream {self._url} reported an error mid-stream: {exc.message}",
                status=502,
                type="server_error",
                code="upstream_error",
            ) from exc

    def close(self) -> Sequence[Event]:
        return self._decoder.close()


class ChatBackend(ForwardingBackend):
    """A :class:`~hotloop.backends.base.Backend` forwarding to a Chat Completions upstream."""

    path = "/chat/completions"

    def payload(self, request: GenerationRequest, *, full: bool) -> bytes:
        # Chat Completions is stateless: every turn is the whole context.
        try:
            return chat_body(request, self.upstream_model(request.model))
        except InvalidMessage as exc:
            raise APIError(str(exc), param=exc.param, code="invalid_input") from exc

    def decoder(self, out: ResponseBuilder, url: str) -> _ChatStream:
        return _ChatStream(out, url)
