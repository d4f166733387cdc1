"""A Responses API upstream behind the gateway: OpenAI, Azure, xAI, or an engine's
stateless ``/v1/responses`` (llama.cpp, Ollama, vLLM, SGLang).

The gateway keeps the conversation, so it sends the upstream what the upstream needs: the
whole context to a stateless upstream (each segment encoded once and kept on its snapshot,
so a turn encodes only its new items), or, with ``chain = true`` for an upstream that stores
responses, only the new items plus the upstream's own ``previous_response_id``; when the
upstream no longer has that response, the turn is sent again with the whole context.

The upstream's events are written into the turn's response builder: messages and function
calls stream (each call is closed at its ``function_call_arguments.done``, so clients
dispatch eagerly), and every item the gateway does not interpret (reasoning with its
encrypted content, hosted tool calls, future kinds) is added whole, unchanged. Failures,
retries and replicas are the shared ones of
:class:`~hotloop.backends.forwarding.ForwardingBackend`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import httpx

from hotloop.backends.base import BackendSession
from hotloop.backends.forwarding import ForwardingBackend, StreamDecoder
from hotloop.backends.upstream import UpstreamConfig, upstream_error
from hotloop.errors import APIError, ProtocolError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.client_session import TransportError
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import Generation, GenerationRequest
from hotloop.transport import websocket_url
from hotloop.transport.base import ModelRequest
from hotloop.transport.websocket import WebSocketTransport
from hotloop.wire import codec
from hotloop.wire.events import (
    ContentPartAdded,
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
    UnknownEvent,
    WebSocketError,
    event_from_dict,
)
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message
from hotloop.wire.responses import ResponseObject

__all__ = ["ResponsesBackend", "ResponsesEventReader"]

_ENCODED = "responses.input"
_STRIPPED = "responses.items"
#: How many upstream response ids a backend keeps (the oldest go first).
_MAX_UPSTREAM_IDS = 100_000
#: Settings passed to a Responses upstream as they came.
_PASSED_SETTINGS = ("temperature", "top_p", "text", "reasoning", "truncation", "user", "include")


def _strip(item: Item) -> dict[str, Any]:
    # The gateway's own ids and statuses mean nothing to the upstream; items it does not
    # interpret (reasoning, hosted calls) are the upstream's and go back exactly as they came.
    data = item.to_dict()
    if isinstance(item, Message | FunctionCall | FunctionCallOutput):
        data.pop("id", None)
        data.pop("status", None)
    return data


def _encode(items: Sequence[Item]) -> bytes:
    return b",".join(codec.dumps(_strip(item)) for item in items)


def encoded_input(context: Conversation) -> list[bytes]:
    """Each segment's input items, encoded once (memoized on the snapshot), oldest first."""
    parts = [node.derived(_ENCODED, _encode) for node in context.segments()]
    parts.reverse()
    return [part for part in parts if part]


class ResponsesEventReader:
    """Write an upstream's Responses events into a :class:`ResponseBuilder`.

    :meth:`receive` takes each decoded event and returns the builder's events for it. The
    terminal event's usage and status are recorded on the builder; a failure or an error
    event raises :class:`~hotloop.errors.APIError`.
    """

    __slots__ = ("_open", "_out", "_sent", "done", "upstream_id")

    def __init__(self, out: ResponseBuilder) -> None:
        self._out = out
        # What is open: "message", "call", "closed" (a call whose arguments are done), or
        # "whole" (an item kept as it is, added at its output_item.done).
        self._open: str | None = None
        self._sent = 0  # characters of the open part or call streamed so far
        self.upstream_id: str | None = None
        self.done = False

    @property
    def output(self) -> tuple[Item, ...]:
        """The items written to the builder so far."""
        return self._out.output

    def feed(self, data: str) -> Sequence[Event]:
        r"""One server-sent event's data, decoded and :meth:`receive`\ d.

        llama.cpp's ``/v1/responses`` leaves ``output_index`` and ``content_index`` out of its
        item, part, text and argument events. The reader reads neither (it tracks the open
        item itself), so a missing one is taken as 0 rather than failing the turn.
        """
        fields = codec.decode_object(data)
        fields.setdefault("output_index", 0)
        fields.setdefault("content_index", 0)
        return self.receive(event_from_dict(fields))

    def close(self) -> Sequence[Event]:
        """The end of the body: the terminal event must have come."""
        if not self.done:
            raise ProtocolError("the upstream's stream ended before its terminal event")
        return ()

    def receive(self, event: Event) -> Sequence[Event]:
        out = self._out
        kind = type(event)
        if kind is OutputTextDelta or kind is FunctionCallArgumentsDelta:
            if self._open in ("message", "call"):
                delta = event.delta  # type: ignore[union-attr]
                self._sent += len(delta)
                return out.delta(delta)
            return ()
        if isinstance(event, OutputItemAdded):
            item = event.item
            if isinstance(item, Message):
                self._open = "message"
                return out.open_message()
            if isinstance(item, FunctionCall):
                self._open, self._sent = "call", 0
                return out.open_call(item.name, call_id=item.call_id)
            self._open = "whole"
            return ()
        if isinstance(event, ContentPartAdded):
            if self._open == "message" and event.part.type in ("output_text", "refusal"):
                self._sent = 0
                return out.open_part(event.part.type)
            return ()
        if isinstance(event, UnknownEvent):
            if event.type == "response.refusal.delta" and self._open == "message":
                delta = str(event.data.get("delta") or "")
                self._sent += len(delta)
                return out.delta(delta)
            return ()
        if isinstance(event, OutputTextDone):
            return self._rest(event.text)
        if isinstance(event, FunctionCallArgumentsDone):
            if self._open != "call":
                return ()
            # The arguments are final: close the call now, not at output_item.done.
            events = (*self._rest(event.arguments), *out.close_item())
            self._open = "closed"  # its output_item.done only repeats it
            return events
        if isinstance(event, OutputItemDone):
            return self._item_done(event.item)
        if isinstance(event, ResponseCreated):
            self.upstream_id = event.response.id
            return ()
        if isinstance(event, ResponseCompleted | ResponseIncomplete):
            return self._terminal(event.response)
        if isinstance(event, ResponseFailed):
            error = event.response.error or {}
            raise APIError(
                f"The upstream's response failed: {error.get('message') or 'no reason given'}",
                status=502,
                type="server_error",
                code="upstream_error",
            )
        if isinstance(event, ErrorEvent | WebSocketError):
            raise APIError(
                f"The upstream reported an error: {event.message}",
                status=502,
                type="server_error",
                code="upstream_error",
            )
        return ()

    def _rest(self, full: str) -> Sequence[Event]:
        # A server may send the done text without (all) its deltas: send what is missing.
        if self._open in ("message", "call") and len(full) > self._sent:
            rest = full[self._sent :]
            self._sent = len(full)
            return self._out.delta(rest)
        return ()

    def _item_done(self, item: Item) -> Sequence[Event]:
        state, self._open = self._open, None
        if state == "closed":
            return ()
        if state == "message":
            return self._out.close_item()
        if state == "call":  # no arguments.done came: the item has the arguments
            assert isinstance(item, FunctionCall)
            return (*self._rest(item.arguments), *self._out.close_item())
        return self._out.add_item(item)

    def _terminal(self, response: ResponseObject) -> Sequence[Event]:
        self.done = True
        out = self._out
        events: list[Event] = []
        if self._open in ("message", "call"):
            events.extend(out.close_item())
            self._open = None
        # Items only the terminal output carries were never streamed: add them now.
        for item in response.output[len(out.output) :]:
            events.extend(out.add_item(item))
        if response.usage is not None:
            out.set_usage(response.usage)
        if response.status == "incomplete":
            reason = (response.incomplete_details or {}).get("reason")
            out.set_incomplete(str(reason or "max_output_tokens"))
        return events


class ResponsesBackend(ForwardingBackend):
    """A :class:`~hotloop.backends.base.Backend` forwarding to a Responses API upstream.

    With ``config.chain`` it continues upstream conversations by ``previous_response_id``
    (for upstreams that store responses); without, it sends the whole context.
    """

    path = "/responses"

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, transport=transport, clock=clock)
        # The upstream's response ids, by the prefix key of the conversation they end.
        self._upstream_ids: OrderedDict[int, str] = OrderedDict()

    def open_session(self) -> BackendSession:
        if self.config.websocket:
            return _WebSocketSession(self)
        return super().open_session()

    def tools_and_settings(
        self, request: GenerationRequest
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The request's ``tools`` entries and its other fields, as the upstream takes them."""
        tools = [tool.to_dict() for tool in request.tools]
        settings: dict[str, Any] = {}
        if tools:
            settings["tool_choice"] = (
                {"type": "function", "name": request.forced_function}
                if request.forced_function is not None
                else request.tool_choice
            )
            settings["parallel_tool_calls"] = request.parallel_tool_calls
        if request.max_output_tokens is not None:
            settings["max_output_tokens"] = request.max_output_tokens
        for key in _PASSED_SETTINGS:
            if request.settings.get(key) is not None:
                settings[key] = request.settings[key]
        return tools, settings

    def payload(self, request: GenerationRequest, *, full: bool) -> bytes:
        previous = None if full else self.chained_from(request.context)
        body: dict[str, Any] = {
            "model": self.upstream_model(request.model),
            "stream": True,
            "store": self.config.chain,
        }
        if request.instructions:
            body["instructions"] = request.instructions
        tools, settings = self.tools_and_settings(request)
        if tools:
            body["tools"] = tools
        body.update(settings)
        if previous is not None:
            body["previous_response_id"] = previous
            items = [_encode(request.context.items)]
        else:
            items = encoded_input(request.context)
        head = codec.dumps(body)
        return b"".join((head[:-1], b',"input":[', b",".join(items), b"]}"))

    def decoder(self, out: ResponseBuilder, url: str) -> ResponsesEventReader:
        return ResponsesEventReader(out)

    def resend_full(self, request: GenerationRequest, error: APIError, full: bool) -> bool:
        # A chained turn the upstream refuses (it no longer has the response): send it all.
        return (
            not full
            and error.code == "upstream_rejected"
            and self.chained_from(request.context) is not None
        )

    def finished(self, request: GenerationRequest, decoder: StreamDecoder) -> None:
        if self.config.chain and isinstance(decoder, ResponsesEventReader):
            self.remember(request, decoder)

    def remember(self, request: GenerationRequest, reader: ResponsesEventReader) -> None:
        """Keep the upstream's id of this turn under the conversation it ends with.

        The key is the rolling prefix key of the conversation after this turn's output: the
        next turn's parent has the same key however the gateway got it (its connection
        cache, or the store, which rebuilds the snapshots), so it finds the id either way.
        """
        if reader.upstream_id is None:
            return
        after = request.context.extend(reader.output)
        ids = self._upstream_ids
        ids[after.prefix_key] = reader.upstream_id
        ids.move_to_end(after.prefix_key)
        while len(ids) > _MAX_UPSTREAM_IDS:
            ids.popitem(last=False)

    def continues(self, context: Conversation) -> str | None:
        """The upstream's id of the response this turn continues, if one was kept.

        ``context`` is the parent conversation (which ends with that response's output)
        extended by the new input.
        """
        parent = context.parent
        return self._upstream_ids.get(parent.prefix_key) if parent is not None else None

    def chained_from(self, context: Conversation) -> str | None:
        """The upstream response this turn continues by id, with ``chain`` on."""
        return self.continues(context) if self.config.chain else None


def _without_ids(items: Sequence[Item]) -> tuple[Item, ...]:
    # The gateway's own ids and statuses mean nothing to the upstream (see _strip).
    return tuple(
        replace(item, id=None, status=None)
        if isinstance(item, Message | FunctionCall | FunctionCallOutput)
        else item
        for item in items
    )


class _WebSocketSession:
    """One client connection's WebSocket to a Responses upstream in WebSocket mode.

    Each turn continues the upstream's own response by ``previous_response_id`` and sends only
    the new items, while the upstream socket that made that response lives; hotloop's client
    transport re-sends the whole context on a new socket after a drop, and in full after the
    upstream's ``previous_response_not_found``. The socket is opened with the connection's
    first turn, to the replica of that turn's conversation, and closed with the connection.
    """

    def __init__(self, backend: ResponsesBackend) -> None:
        self._backend = backend
        self._sockets: dict[str, WebSocketTransport] = {}

    def _socket(self, url: str) -> WebSocketTransport:
        socket = self._sockets.get(url)
        if socket is None:
            config = self._backend.config
            # A gateway answers its client rather than wait out a client's 30 s of reconnects:
            # reaching the upstream is bounded by the upstream's connect_timeout.
            socket = self._sockets[url] = WebSocketTransport(
                websocket_url(url),
                config.api_key(),
                store=False,
                open_timeout=config.connect_timeout,
                reconnect_timeout=config.connect_timeout,
            )
        return socket

    async def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        backend = self._backend
        context = request.context
        url = backend.replicas.order(context.root_key)[0].url
        history: list[Item] = []
        for node in reversed(list(context.segments())):
            history.extend(node.derived(_STRIPPED, _without_ids))
        tools, settings = backend.tools_and_settings(request)
        model_request = ModelRequest(
            model=backend.upstream_model(request.model),
            history=history,
            new_from=len(history) - len(context.items),
            # Whatever chain says: the upstream socket knows whether it still holds that
            # response, and sends the whole context when it does not.
            previous_response_id=backend.continues(context),
            instructions=request.instructions,
            tools=tools,
            settings=settings,
        )
        reader = ResponsesEventReader(out)
        try:
            async for event in self._socket(url).stream(model_request):
                events = reader.receive(event)
                if events:
                    yield events
        except TransportError as exc:
            raise _websocket_error(exc, url) from exc
        if not reader.done:
            raise upstream_error(httpx.RemoteProtocolError("cut"), url=url)
        backend.remember(request, reader)

    async def aclose(self) -> None:
        sockets, self._sockets = list(self._sockets.values()), {}
        for socket in sockets:
            await socket.close()


def _websocket_error(exc: TransportError, url: str) -> APIError:
    """The documented upstream error for a failed WebSocket-mode turn."""
    if exc.status == 429:
        return APIError(
            f"The upstream {url} is rate limiting requests.",
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
        )
    if exc.status is None and exc.code is None:
        return APIError(
            f"The WebSocket to the upstream {url} failed and could not be opened again.",
            status=502,
            type="server_error",
            code="upstream_unavailable",
        )
    detail = f" ({exc.code})" if exc.code else f" (HTTP {exc.status})"
    return APIError(
        f"The upstream {url} failed the request in WebSocket mode{detail}.",
        status=502,
        type="server_error",
        code="upstream_error",
    )
