"""The llama.cpp ``/completion`` backend: the request, the stream, the remembered turns."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from hotloop.backends.forwarding import ForwardingBackend, StreamDecoder
from hotloop.backends.llamacpp.grammar import tool_grammar
from hotloop.backends.llamacpp.parser import RawTurnParser
from hotloop.backends.llamacpp.template import (
    _GENERATED,
    CallMarkers,
    ChatTemplate,
    Generated,
    Prompt,
    PromptRenderer,
    TemplateError,
    item_ids,
    markers_for,
    plain_json,
)
from hotloop.backends.upstream import UpstreamConfig, UpstreamConfigError
from hotloop.errors import APIError, HotloopError, InvalidMessage, ProtocolError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import ToolDef
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item
from hotloop.wire.responses import Usage

logger = logging.getLogger("hotloop.upstream")

#: Request settings ``/completion`` understands under the same name.
_PASSED_SETTINGS = ("temperature", "top_p", "seed", "stop", "presence_penalty")
#: llama.cpp's grammar trigger kind for a word (``COMMON_GRAMMAR_TRIGGER_TYPE_WORD``).
_TRIGGER_WORD = 1
#: How many conversations' slots are remembered (least recently used forgotten first).
_PINNED_CONVERSATIONS = 4096
#: How many turns' generated tokens are remembered for conversations that come back rebuilt.
_REMEMBERED_TURNS = 4096


# -- the stream -----------------------------------------------------------------------------


class _CompletionStream:
    """A :class:`~hotloop.backends.forwarding.StreamDecoder` over ``/completion``'s stream:
    each event carries the next token's text (``content``) and id (``tokens``); the last one
    (``stop: true``) the usage and why generation stopped."""

    __slots__ = ("_out", "_parser", "_url", "done", "stop_type", "text", "tokens")

    def __init__(self, out: ResponseBuilder, parser: RawTurnParser, url: str) -> None:
        self._out = out
        self._parser = parser
        self._url = url
        self.done = False
        self.text: list[str] = []
        self.tokens: list[int] | None = []
        self.stop_type = ""

    def feed(self, data: str) -> Sequence[Event]:
        chunk = codec.decode_object(data)
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, Mapping) else error
            raise APIError(
                f"The upstream {self._url} reported an error mid-stream: {message}",
                status=502,
                type="server_error",
                code="upstream_error",
            )
        if self.done:
            raise ProtocolError("content after the end of the completion")
        content = chunk.get("content", "")
        if not isinstance(content, str):
            raise ProtocolError("a completion chunk's content must be a string")
        tokens = chunk.get("tokens")
        if self.tokens is not None:
            if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                self.tokens.extend(tokens)
            elif content:
                self.tokens = None  # text without its token ids: fall back to the text
        events: list[Event] = []
        if content:
            self.text.append(content)
            events.extend(self._parser.feed(content))
        if chunk.get("stop"):
            self.done = True
            self.stop_type = str(chunk.get("stop_type") or "")
            self._out.set_usage(_usage(chunk))
            if self.stop_type == "limit":
                self._out.set_incomplete("max_output_tokens")
            events.extend(self._parser.finish())
        return events

    def close(self) -> Sequence[Event]:
        if not self.done:
            raise ProtocolError("the completion stream ended before its last event")
        return ()

    def output(self) -> tuple[Item, ...]:
        """The items the turn produced (what its output snapshot holds)."""
        return self._out.output

    def item_ids(self) -> tuple[str | None, ...]:
        return item_ids(self._out.output)

    def generated_tokens(self) -> tuple[int, ...] | None:
        """The ids of the tokens now in the slot's cache: all generated ones, less the end
        of generation token (sampled, never evaluated: the template's end of the assistant
        message writes it again). None when the ids are not known exactly."""
        tokens = self.tokens
        if tokens is None or self.stop_type == "word":
            return None  # a stop word's tokens are cut from the text, not from the ids
        if self.stop_type == "eos" and tokens:
            return tuple(tokens[:-1])
        return tuple(tokens)


def _usage(chunk: Mapping[str, Any]) -> Usage:
    timings = chunk.get("timings")
    timings = timings if isinstance(timings, Mapping) else {}

    def count(data: Mapping[str, Any], key: str) -> int:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    cached = count(timings, "cache_n")
    prompt = count(chunk, "tokens_evaluated") or cached + count(timings, "prompt_n")
    output = count(chunk, "tokens_predicted") or count(timings, "predicted_n")
    return Usage(input_tokens=prompt, cached_tokens=cached, output_tokens=output)


# -- the backend ------------------------------------------------------------------------------


class LlamaCppBackend(ForwardingBackend):
    """A :class:`~hotloop.backends.base.Backend` on llama.cpp's native ``/completion``.

    ``config.urls`` are the servers' root URLs (a ``/v1`` suffix is dropped: the native
    endpoints live at the root). The chat template comes from ``chat_template`` or from the
    server's ``GET /props`` at :meth:`start`, which also says how many slots each server
    has; ``markers`` say how the template family writes calls (found from the template when
    not given). ``pin_slots`` sends each conversation to one slot (:meth:`slot_for`).
    """

    path = "/completion"

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        chat_template: str | None = None,
        markers: CallMarkers | None = None,
        pin_slots: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        roots = tuple(url.removesuffix("/v1") for url in config.urls)
        super().__init__(replace(config, urls=roots), transport=transport, clock=clock)
        self._template_source = chat_template or config.chat_template
        self._markers = markers
        self.pin_slots = pin_slots or config.pin_slots
        self.slots = 0
        self._pinned: OrderedDict[int, int] = OrderedDict()  # conversation -> slot, LRU
        self._next_slot = 0
        # What the model generated, by (model, rolling key of the history it ends): for
        # conversations that come back rebuilt (from the store, or re-sent whole).
        self._recent: OrderedDict[tuple[str, int], Generated] = OrderedDict()
        self.renderer: PromptRenderer | None = None

    async def start(self) -> None:
        """Learn the models, the chat template and the slots; check the template's rule."""
        await super().start()
        props = await self._props()
        source = self._template_source or props.get("chat_template")
        if not isinstance(source, str) or not source:
            raise UpstreamConfigError(
                f"the llama.cpp server at {self.config.urls[0]} reports no chat template; "
                "start it with --jinja and a model that has one, or give chat_template"
            )
        bos, eos = props.get("bos_token"), props.get("eos_token")
        template = ChatTemplate(
            source,
            bos_token=bos if isinstance(bos, str) else "",
            eos_token=eos if isinstance(eos, str) else "",
        )
        self.use_template(template)
        slots = props.get("total_slots")
        self.slots = slots if isinstance(slots, int) and slots > 0 else 0

    def use_template(self, template: ChatTemplate) -> None:
        """Render with ``template`` (checking its rule) and its family's call markers."""
        markers = self._markers or markers_for(template.source)
        if markers is None:
            raise UpstreamConfigError(
                "the chat template's tool-call syntax is not a known family; "
                "give the backend its markers (CallMarkers)"
            )
        self._markers = markers
        renderer = PromptRenderer(template, self._remembered)
        if not renderer.check():
            logger.warning(
                "the chat template cannot be rendered segment by segment (%s): every turn "
                "sends the whole conversation as the template renders it",
                renderer.reason,
            )
        self.renderer = renderer

    async def _props(self) -> dict[str, Any]:
        last: Exception | None = None
        for replica in self.replicas.all:
            try:
                reply = await replica.client.get("/props")
                reply.raise_for_status()
                props = codec.decode_object(reply.content)
            except (httpx.HTTPError, HotloopError) as exc:
                last = exc
                continue
            return props
        if self._template_source is not None:
            return {}
        raise UpstreamConfigError(
            f"could not read GET /props of {', '.join(self.config.urls)} ({last}); is it a "
            "llama.cpp server?"
        )

    # -- one turn ---------------------------------------------------------------------------

    def render(self, request: GenerationRequest) -> Prompt:
        """The prompt of ``request`` (what :meth:`payload` sends)."""
        if self.renderer is None:
            raise RuntimeError("start() the backend before it generates")
        try:
            return self.renderer.prompt(
                request.context,
                instructions=request.instructions,
                tools=request.tools,
                model=self.upstream_model(request.model),
            )
        except InvalidMessage as exc:
            raise APIError(str(exc), param=exc.param, code="invalid_input") from exc
        except TemplateError as exc:
            raise APIError(
                f"The model's chat template could not render this conversation: {exc}",
                code="invalid_input",
            ) from exc

    def payload(self, request: GenerationRequest, *, full: bool) -> bytes:
        prompt = self.render(request)
        body: dict[str, Any] = {
            "stream": True,
            "cache_prompt": True,
            "return_tokens": True,
        }
        markers = self._markers
        assert markers is not None
        calls = bool(request.tools) and request.tool_choice != "none"
        if calls:
            tools: Sequence[ToolDef] = request.tools
            forced = [t for t in request.tools if t.name == request.forced_function]
            if forced:
                tools = forced
            body["grammar"] = tool_grammar(tools, markers, parallel=request.parallel_tool_calls)
            lazy = request.forced_function is None and request.tool_choice != "required"
            body["grammar_lazy"] = lazy
            if lazy:
                body["grammar_triggers"] = [{"type": _TRIGGER_WORD, "value": markers.call_open}]
            # Markers that are special tokens (Qwen's) must reach the text to be parsed.
            body["preserved_tokens"] = [
                m
                for m in (
                    markers.call_open,
                    markers.call_close,
                    markers.think_open,
                    markers.think_close,
                )
                if m
            ]
        else:
            schema = _json_schema(request.settings.get("text"))
            if schema is not None:
                body["json_schema"] = schema
        if request.max_output_tokens is not None:
            body["n_predict"] = request.max_output_tokens
        for key in _PASSED_SETTINGS:
            if request.settings.get(key) is not None:
                body[key] = request.settings[key]
        if self.pin_slots and self.slots:
            body["id_slot"] = self.slot_for(request.context)
        head = codec.dumps(body)
        return b"".join((head[:-1], b',"prompt":', prompt.body, b"}"))

    def slot_for(self, context: Conversation) -> int:
        """The slot a conversation is pinned to: the same for all its turns.

        New conversations take the slots in turn, so N conversations on S slots put N/S on
        each (hashing would put two of two conversations on one slot half the time). The
        most recent conversations are remembered; one forgotten gets a slot anew.
        """
        pinned = self._pinned
        key = context.root_key
        slot = pinned.get(key)
        if slot is None:
            slot = pinned[key] = self._next_slot % self.slots
            self._next_slot += 1
            if len(pinned) > _PINNED_CONVERSATIONS:
                pinned.popitem(last=False)
        else:
            pinned.move_to_end(key)
        return slot

    def decoder(self, out: ResponseBuilder, url: str) -> _CompletionStream:
        markers = self._markers
        assert markers is not None
        # The response echoes the request's settings: calls are parsed unless it said none.
        parse = out.response.settings.get("tool_choice") != "none"
        return _CompletionStream(out, RawTurnParser(out, markers, parse_calls=parse), url)

    def finished(self, request: GenerationRequest, decoder: StreamDecoder) -> None:
        """Note what the model generated on the snapshot it answered: the next turn's
        prompt carries it as is."""
        assert isinstance(decoder, _CompletionStream)
        generated = Generated(
            model=self.upstream_model(request.model),
            text="".join(decoder.text),
            tokens=decoder.generated_tokens(),
            item_ids=decoder.item_ids(),
        )
        request.context.note(_GENERATED, generated)
        output = decoder.output()
        if output:
            recent = self._recent
            recent[(generated.model, request.context.extend(output).prefix_key)] = generated
            if len(recent) > _REMEMBERED_TURNS:
                recent.popitem(last=False)

    def _remembered(self, model: str, key: int) -> Generated | None:
        generated = self._recent.get((model, key))
        if generated is not None:
            self._recent.move_to_end((model, key))
        return generated


def _json_schema(text: Any) -> Any:
    """Responses ``text.format`` as ``/completion``'s ``json_schema``."""
    if not isinstance(text, Mapping):
        return None
    fmt = text.get("format")
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), Mapping):
        return plain_json(fmt["schema"])
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    return None
