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

Failures map to documented errors (:func:`~hotloop.backends.upstream.upstream_error`). A
request is sent again (to the conversation's next replica first) only while nothing of it
reached the client: a refused connection, a timeout before the first token, a 429 or a 5xx.
A client that goes away closes the upstream request, and the engine stops generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from hotloop.backends.base import StatelessSession
from hotloop.backends.upstream import (
    Replica,
    Replicas,
    UpstreamConfig,
    model_map,
    retryable,
    upstream_error,
)
from hotloop.errors import APIError, DecodeError, HotloopError, InvalidMessage
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.chat import chat_messages
from hotloop.protocol.chat_stream import ChatChunkDecoder, ChatStreamError
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import Generation, GenerationRequest, ToolDef
from hotloop.protocol.sse import SSEDecoder
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item

__all__ = ["ChatBackend", "chat_body"]

#: Memo key of a segment's rendered, encoded chat messages on its conversation snapshot.
_RENDERED = "chat.messages"
#: The longest a 429's ``retry-after`` is honoured before trying again; longer waits fail.
_MAX_RETRY_WAIT = 2.0
#: Request settings a chat upstream understands under the same name.
_PASSED_SETTINGS = ("temperature", "top_p", "seed", "user", "stop", "presence_penalty")


def _render(items: Sequence[Item]) -> bytes:
    return b",".join(codec.dumps(message) for message in chat_messages(items))


def rendered_messages(context: Conversation) -> list[bytes]:
    """The encoded chat messages of each segment of ``context``, oldest first (memoized)."""
    parts = [node.derived(_RENDERED, _render) for node in context.segments()]
    parts.reverse()
    return [part for part in parts if part]


def _chat_tool(tool: ToolDef) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


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
        body["tools"] = [_chat_tool(tool) for tool in request.tools]
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
    text = settings.get("text")
    if isinstance(text, Mapping):
        response_format = _response_format(text.get("format"))
        if response_format is not None:
            body["response_format"] = response_format
    messages = rendered_messages(request.context)
    if request.instructions:
        system = {"role": "system", "content": request.instructions}
        messages.insert(0, codec.dumps(system))
    head = codec.dumps(body)
    return b"".join((head[:-1], b',"messages":[', b",".join(messages), b"]}"))


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """Responses ``text.format`` as Chat's ``response_format``."""
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


class ChatBackend:
    """A :class:`~hotloop.backends.base.Backend` forwarding to a Chat Completions upstream.

    Its sessions are stateless: the connection pools are shared, and what a connection would
    keep (the rendered conversation) lives on the conversation snapshots of its cache.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.replicas = Replicas(config, clock=clock, transport=transport)
        self._models = dict(config.models)

    async def start(self) -> None:
        """Learn the upstream's models when none were configured; start health checks."""
        if not self._models:
            self._models = model_map(self.config, await self.replicas.list_models())
        self.replicas.start_health_checks()

    def models(self) -> Sequence[str]:
        return list(self._models)

    def open_session(self) -> StatelessSession:
        return StatelessSession(self.generate)

    async def aclose(self) -> None:
        await self.replicas.aclose()

    async def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        """Send the turn (retrying while nothing reached the client) and stream it to ``out``."""
        try:
            payload = chat_body(request, self._models.get(request.model, request.model))
        except InvalidMessage as exc:
            raise APIError(str(exc), param=exc.param, code="invalid_input") from exc
        order = self.replicas.order(request.context.root_key)
        attempt = 0
        while True:
            replica = order[attempt % len(order)]
            attempt += 1
            delivered = False
            try:
                async for events in self._attempt(replica, payload, out):
                    delivered = True
                    yield events
                self.replicas.succeeded(replica)
                return
            except APIError as error:
                if delivered or not retryable(error) or attempt >= self.config.max_attempts:
                    if retryable(error):
                        self.replicas.failed(replica, error)
                    raise
                self.replicas.failed(replica, error)
                await asyncio.sleep(_backoff(error, attempt))

    async def _attempt(self, replica: Replica, payload: bytes, out: ResponseBuilder) -> Generation:
        config = self.config
        decoder = ChatChunkDecoder(out)
        sse = SSEDecoder()
        try:
            async with replica.client.stream(
                "POST",
                "/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            ) as reply:
                if reply.status_code != 200:
                    body = await _read_bounded(reply)
                    raise upstream_error(
                        status=reply.status_code,
                        body=body,
                        headers=reply.headers,
                        url=replica.url,
                    )
                chunks = reply.aiter_bytes()
                wait = config.first_token_timeout
                while True:
                    async with asyncio.timeout(wait):
                        try:
                            data = await anext(chunks)
                        except StopAsyncIteration:
                            break
                    wait = config.stall_timeout
                    events: list[Event] = []
                    try:
                        for message in sse.feed(data):
                            if message.data == "[DONE]":
                                continue
                            events.extend(decoder.feed(codec.decode_object(message.data)))
                    except HotloopError:
                        # The chunks before the bad one are in the builder already: they go
                        # out, so the failure counts as mid-output (no retry into a builder
                        # that holds half a turn).
                        if events:
                            yield events
                        raise
                    if events:
                        yield events
        except TimeoutError as exc:
            raise upstream_error(httpx.ReadTimeout("stalled"), url=replica.url) from exc
        except httpx.HTTPError as exc:
            raise upstream_error(exc, url=replica.url) from exc
        except ChatStreamError as exc:
            raise APIError(
                f"The upstream {replica.url} reported an error mid-stream: {exc.message}",
                status=502,
                type="server_error",
                code="upstream_error",
            ) from exc
        except HotloopError as exc:
            if isinstance(exc, APIError):
                raise
            # A JSON parser's complaint is not the client's to read: say what was wrong.
            detail = "a chunk is not a JSON object" if isinstance(exc, DecodeError) else exc
            raise APIError(
                f"The upstream {replica.url} sent a malformed stream: {detail}",
                status=502,
                type="server_error",
                code="upstream_bad_stream",
            ) from exc
        try:
            closing = decoder.close()
        except HotloopError as exc:
            # The body ended with no finish_reason: the connection was cut mid-turn.
            raise upstream_error(httpx.RemoteProtocolError("cut"), url=replica.url) from exc
        if closing:
            yield closing


async def _read_bounded(reply: httpx.Response, limit: int = 64 * 1024) -> bytes:
    body = bytearray()
    async for chunk in reply.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def _backoff(error: APIError, attempt: int) -> float:
    if error.code == "upstream_rate_limited":
        return _MAX_RETRY_WAIT / 4 * attempt
    return float(min(0.05 * 2**attempt, 1.0))
