"""The model's chat template and the prompt it renders, segment by segment (pure)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hotloop.errors import HotloopError, InvalidMessage
from hotloop.protocol.chat import chat_messages, chat_tool
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import ToolDef
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message, Reasoning

logger = logging.getLogger("hotloop.upstream")

#: Memo key (with the render context) of a segment's rendering on its snapshot.
_SEGMENT = "llamacpp.segment"
#: Memo key (with the render context) of the generation prompt after a snapshot.
_GENERATION_PROMPT = "llamacpp.generation_prompt"
#: Note key, on the snapshot a turn answered, of what the model generated for it.
_GENERATED = "llamacpp.generated"
#: Stands for an assistant message's text while finding what the template puts around it.
_SENTINEL = "\u2063hotloop-assistant-text\u2063"


# -- template families ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallMarkers:
    """How a template family writes tool calls (and reasoning) in the model's raw text.

    A call is ``call_open`` + ``{"name": ..., "arguments": {...}}`` + ``call_close``;
    reasoning, when the family has it, is between ``think_open`` and ``think_close``.
    """

    call_open: str
    call_close: str
    think_open: str | None = None
    think_close: str | None = None


#: Hermes-style calls: Qwen 2.5 / 3, Hermes, and the project's tiny test model.
HERMES: Final = CallMarkers("<tool_call>", "</tool_call>")
#: Hermes-style calls with ``<think>`` reasoning (Qwen 3, QwQ, DeepSeek-R1 distills).
HERMES_THINKING: Final = CallMarkers("<tool_call>", "</tool_call>", "<think>", "</think>")


def markers_for(template: str) -> CallMarkers | None:
    """The call markers of the family ``template`` belongs to, or None when unknown."""
    if HERMES.call_open in template:
        return HERMES_THINKING if "<think>" in template else HERMES
    return None


# -- the chat template -----------------------------------------------------------------------


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    """Jinja's ``tojson`` as chat templates expect it: Python's ``json.dumps`` layout
    (``", "`` and ``": "``, keys in order, nothing HTML-escaped), as transformers and
    llama.cpp render it."""
    return _json_text(value, indent, 0)


def _json_text(value: Any, indent: int | None, level: int) -> str:
    if isinstance(value, Mapping):
        entries = [
            f"{_json_text(str(k), None, 0)}: {_json_text(v, indent, level + 1)}"
            for k, v in value.items()
        ]
        return _json_join("{", entries, "}", indent, level)
    if isinstance(value, list | tuple):
        entries = [_json_text(v, indent, level + 1) for v in value]
        return _json_join("[", entries, "]", indent, level)
    return codec.dumps(value).decode()


def _json_join(start: str, entries: list[str], end: str, indent: int | None, level: int) -> str:
    if not entries:
        return start + end
    if indent is None:
        return start + ", ".join(entries) + end
    pad = "\n" + " " * (indent * (level + 1))
    return start + pad + ("," + pad).join(entries) + "\n" + " " * (indent * level) + end


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class TemplateError(HotloopError):
    """The chat template failed to render (it raised, or it is not valid Jinja)."""


class ChatTemplate:
    """A model's Jinja chat template, rendered the way transformers and llama.cpp do.

    ``bos_token`` and ``eos_token`` are the model's (``GET /props`` says). A rendering that
    starts with the BOS text loses it: llama.cpp adds the BOS token itself.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template is not valid Jinja: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        *,
        add_generation_prompt: bool,
    ) -> str:
        """The template's text for ``messages`` (chat-message dicts) and ``tools``."""
        try:
            text = self._template.render(
                messages=list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except Exception as exc:  # whatever the template's own code raised
            raise TemplateError(f"the chat template failed: {exc}") from exc
        if self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text


def _strftime_now(fmt: str) -> str:
    return time.strftime(fmt)


# -- rendering the conversation ----------------------------------------------------------------


def template_messages(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Chat messages for a template: string contents, call arguments as objects."""
    messages = chat_messages(items)
    for message in messages:
        content = message.get("content")
        if content is None:
            message["content"] = ""
        elif not isinstance(content, str):
            if any(part.get("type") != "text" for part in content):
                raise InvalidMessage(
                    "the llama.cpp upstream takes text only (no images)", param="input"
                )
            message["content"] = "".join(part["text"] for part in content)
        if message["role"] == "developer":
            message["role"] = "system"
        for call in message.get("tool_calls", ()):
            function = call["function"]
            # Templates write arguments with tojson; one that needs a string gets the object
            # written back as JSON, which it also accepts.
            with contextlib.suppress(HotloopError):
                function["arguments"] = codec.decode_object(function["arguments"])
    return messages


@dataclass(frozen=True, slots=True)
class _Context:
    """What a request's rendering depends on besides its items; ``key`` names it in memos."""

    key: tuple[str, ...]
    system: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    model: str


@dataclass(frozen=True, slots=True)
class Generated:
    """What the model generated for one turn, noted on the snapshot the turn answered."""

    model: str
    text: str
    tokens: tuple[int, ...] | None
    item_ids: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment's part of the prompt: its text and its encoded pieces.

    ``pieces`` alternate kinds freely: ``(False, escaped)`` is string text already escaped
    for a JSON string (no quotes), ``(True, ids)`` comma-separated token ids.
    """

    text: str
    pieces: tuple[tuple[bool, bytes], ...]
    messages: tuple[Mapping[str, Any], ...]
    exact: int = 0  # how many of the model's turns it carries as generated


def _escaped(text: str) -> bytes:
    # JSON string escaping is per character, so escaped pieces concatenate.
    return codec.dumps(text)[1:-1]


def _text_segment(text: str, messages: Sequence[Mapping[str, Any]]) -> _Segment:
    return _Segment(text, ((False, _escaped(text)),) if text else (), tuple(messages))


@dataclass(frozen=True, slots=True)
class Prompt:
    """One turn's prompt: ``body`` is the encoded value of ``/completion``'s ``prompt``
    (one string, or a mixed array of strings and token ids), ``text`` the same as text
    (the model's tokens as the text they decode to), ``generation_prompt`` its end."""

    body: bytes
    text: str
    generation_prompt: str
    exact_segments: int = 0


class _NotIncremental(HotloopError):
    """The template does not render segment by segment here (render it whole)."""


class PromptRenderer:
    """Renders conversations into ``/completion`` prompts, segment by segment.

    See the module docstring for the rule. :meth:`check` decides once whether the template
    follows it (``incremental``); when it does not, :meth:`prompt` renders the whole
    conversation each turn.
    """

    def __init__(
        self,
        template: ChatTemplate,
        lookup: Callable[[str, int], Generated | None] | None = None,
    ) -> None:
        self.template = template
        #: What the model generated for a history, by model and the history's rolling key.
        self._lookup = lookup
        self.incremental = True
        #: What the template writes after an assistant message's text (``<|im_end|>\n``).
        self.assistant_end = ""
        self.reason = ""

    # -- the rule's check --------------------------------------------------------------------

    def check(self) -> bool:
        """Whether the template renders segment by segment exactly as whole conversations,
        on a probe tool loop; sets :attr:`incremental` and :attr:`reason` (why not)."""
        try:
            self.assistant_end = self._assistant_end()
            self._check_probe()
        except (_NotIncremental, TemplateError) as exc:
            self.incremental = False
            self.reason = str(exc)
            return False
        self.incremental = True
        self.reason = ""
        return True

    def _assistant_end(self) -> str:
        system = [{"role": "system", "content": "Probe."}]
        window = [*system, {"role": "user", "content": "Probe?"}]
        reply = {"role": "assistant", "content": _SENTINEL}
        base = self.template.render(window, None, add_generation_prompt=False)
        full = self.template.render([*window, reply], None, add_generation_prompt=False)
        if not full.startswith(base) or full.count(_SENTINEL) != 1:
            raise _NotIncremental("the template does not keep an assistant message's text as is")
        return full.split(_SENTINEL, 1)[1]

    def _check_probe(self) -> None:
        tools = (
            {
                "type": "function",
                "function": {
                    "name": "probe",
                    "description": "A probe.",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            },
        )
        context = _Context(("probe",), ({"role": "system", "content": "Probe."},), tools, "")
        turns: list[list[Item]] = [
            [Message(role="user", content="First question?")],
            [
                FunctionCall(call_id="c1", name="probe", arguments='{"q":"a"}'),
                FunctionCall(call_id="c2", name="probe", arguments='{"q":"b"}'),
            ],
            [
                FunctionCallOutput(call_id="c1", output="one"),
                FunctionCallOutput(call_id="c2", output="two"),
            ],
            [Message(role="assistant", content="An answer.")],
            [Message(role="user", content="Second question?")],
            [FunctionCall(call_id="c3", name="probe", arguments='{"q":"c"}')],
            [FunctionCallOutput(call_id="c3", output="three")],
        ]
        snapshot = Conversation.start()
        for turn in turns:
            snapshot = snapshot.extend(turn)
            if isinstance(turn[0], FunctionCall) or (
                isinstance(turn[0], Message) and turn[0].role == "assistant"
            ):
                continue  # the model's turns: a prompt always ends with input
            whole = self._whole(snapshot, context)
            if self._incremental(snapshot, context).text != whole.text:
                raise _NotIncremental(
                    "rendering the new messages after the previous ones does not give the "
                    "whole conversation's rendering"
                )

    # -- prompts ---------------------------------------------------------------------------

    def prompt(
        self,
        context: Conversation,
        *,
        instructions: str | None,
        tools: Sequence[ToolDef],
        model: str,
    ) -> Prompt:
        """The prompt for generating after ``context``."""
        system = ({"role": "system", "content": instructions},) if instructions else ()
        tool_dicts = tuple(_template_tool(tool) for tool in tools)
        key = (
            self.template.digest,
            model,
            instructions or "",
            codec.dumps(tool_dicts).decode() if tool_dicts else "",
        )
        render_context = _Context(key, system, tool_dicts, model)
        if self.incremental:
            try:
                return self._incremental(context, render_context)
            except _NotIncremental as exc:
                logger.warning("rendering the whole conversation: %s", exc)
        return self._whole(context, render_context)

    def _whole(self, context: Conversation, render: _Context) -> Prompt:
        messages = [*render.system, *template_messages(context.all_items())]
        text = self.template.render(messages, render.tools, add_generation_prompt=True)
        closed = self.template.render(messages, render.tools, add_generation_prompt=False)
        generation = text[len(closed) :] if text.startswith(closed) else ""
        return Prompt(codec.dumps(text), text, generation)

    def _incremental(self, context: Conversation, render: _Context) -> Prompt:
        nodes = list(context.segments())
        if not nodes:
            return self._whole(context, render)
        nodes.reverse()
        segments: list[_Segment] = []
        previous: _Segment | None = None
        for node in nodes:
            segment = node.derived(
                (_SEGMENT, render.key),
                functools.partial(self._segment, node, previous=previous, render=render),
            )
            segments.append(segment)
            previous = segment
        generation = self._generation_prompt_after(nodes[-1], previous, render)
        return _assemble(segments, generation)

    def _segment(
        self,
        node: Conversation,
        items: Sequence[Item],
        previous: _Segment | None,
        render: _Context,
    ) -> _Segment:
        parent = node.parent
        generated = parent.noted(_GENERATED) if parent is not None else None
        if (
            parent is not None
            and previous is not None
            and isinstance(generated, Generated)
            and generated.model == render.model
            and generated.item_ids == item_ids(items)
        ):
            # The model's turn: the generation prompt it was given (the end of last turn's
            # prompt, computed by the same rule from the same snapshot, so the same text),
            # what it generated, and the template's end of an assistant message.
            head = self._generation_prompt_after(parent, previous, render)
            return self._generated_segment(head, generated, template_messages(items))
        # A segment that holds the model's turns among other items (a conversation rebuilt
        # from the store, or re-sent whole): run by run, each of the model's runs as it was
        # generated when this gateway remembers it (by the history's rolling key), the rest
        # through the template. The pieces come out as they were sent turn by turn.
        parts: list[_Segment] = []
        last = previous
        for start, end, output in _runs(items):
            run = items[start:end]
            messages = template_messages(run)
            remembered = (
                self._lookup(render.model, node.item_keys[end - 1])
                if output and last is not None and self._lookup is not None
                else None
            )
            if remembered is not None and _same_items(remembered.item_ids, run):
                head = self._generation_prompt(last, render)
                part = self._generated_segment(head, remembered, messages)
            else:
                part = self._rendered(last, messages, render)
            parts.append(part)
            last = part
        if len(parts) == 1:
            return parts[0]
        return _Segment(
            "".join(part.text for part in parts),
            tuple(piece for part in parts for piece in part.pieces),
            parts[-1].messages,
            sum(part.exact for part in parts),
        )

    def _rendered(
        self,
        previous: _Segment | None,
        messages: Sequence[Mapping[str, Any]],
        render: _Context,
    ) -> _Segment:
        """Messages through the template, after the window of ``previous``."""
        window = [*render.system, *(previous.messages if previous is not None else ())]
        full = self.template.render([*window, *messages], render.tools, add_generation_prompt=False)
        if previous is None:
            return _text_segment(full, messages)
        base = self.template.render(window, render.tools, add_generation_prompt=False)
        if not full.startswith(base):
            raise _NotIncremental("a message changed the rendering of the ones before it")
        return _text_segment(full[len(base) :], messages)

    def _generated_segment(
        self, head: str, generated: Generated, messages: Sequence[Mapping[str, Any]]
    ) -> _Segment:
        end = self.assistant_end
        pieces: list[tuple[bool, bytes]] = []
        if head:
            pieces.append((False, _escaped(head)))
        if generated.tokens is not None:
            if generated.tokens:
                pieces.append((True, b",".join(b"%d" % token for token in generated.tokens)))
        elif generated.text:
            pieces.append((False, _escaped(generated.text)))
        if end:
            pieces.append((False, _escaped(end)))
        text = head + generated.text + end
        return _Segment(text, tuple(pieces), tuple(messages), exact=1)

    def _generation_prompt_after(
        self, node: Conversation, segment: _Segment | None, render: _Context
    ) -> str:
        """The generation prompt after ``node`` (whose segment is ``segment``), memoized."""
        return node.derived(
            (_GENERATION_PROMPT, render.key),
            lambda _items: self._generation_prompt(segment, render),
        )

    def _generation_prompt(self, last: _Segment | None, render: _Context) -> str:
        window = [*render.system, *(last.messages if last is not None else ())]
        opened = self.template.render(window, render.tools, add_generation_prompt=True)
        closed = self.template.render(window, render.tools, add_generation_prompt=False)
        if not opened.startswith(closed):
            raise _NotIncremental("the generation prompt changes the text before it")
        return opened[len(closed) :]


def _assemble(segments: Sequence[_Segment], generation: str) -> Prompt:
    """The ``prompt`` value: adjacent strings joined, token ids as numbers; one plain string
    when there are no token ids (an array of strings alone would be several prompts)."""
    parts: list[bytes] = []
    in_string = False
    has_tokens = False
    pieces = [piece for segment in segments for piece in segment.pieces]
    if generation:
        pieces.append((False, _escaped(generation)))
    for is_tokens, data in pieces:
        if is_tokens:
            if in_string:
                parts.append(b'"')
                in_string = False
            parts.append(b"," + data if parts else data)
            has_tokens = True
        else:
            if not in_string:
                parts.append(b',"' if parts else b'"')
                in_string = True
            parts.append(data)
    if in_string:
        parts.append(b'"')
    body = b"".join(parts) or b'""'
    if has_tokens:
        body = b"[" + body + b"]"
    exact = sum(segment.exact for segment in segments)
    text = "".join(segment.text for segment in segments) + generation
    return Prompt(body, text, generation, exact)


def _template_tool(tool: ToolDef) -> dict[str, Any]:
    # Templates read the chat form, with plain values (a schema may arrive read-only).
    parameters = plain_json(tool.parameters) if tool.parameters else {"type": "object"}
    return chat_tool({**tool.to_dict(), "parameters": parameters})


def plain_json(value: Any) -> Any:
    """Mappings (read-only proxies included) as dicts, all the way down."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    return value


def item_ids(items: Sequence[Item]) -> tuple[str | None, ...]:
    return tuple(getattr(item, "id", None) for item in items)


def _same_items(generated: tuple[str | None, ...], run: Sequence[Item]) -> bool:
    """Whether ``run`` is the output that was generated (items re-sent without ids count)."""
    ids = item_ids(run)
    return ids == generated or (len(ids) == len(generated) and not any(ids))


def _is_output(item: Item) -> bool:
    return isinstance(item, FunctionCall | Reasoning) or (
        isinstance(item, Message) and item.role == "assistant"
    )


def _runs(items: Sequence[Item]) -> list[tuple[int, int, bool]]:
    """``items`` cut into runs of the model's items and of the others: (start, end, output)."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or _is_output(items[i]) != _is_output(items[start]):
            runs.append((start, i, _is_output(items[start])))
            start = i
    return runs
