"""Build the Responses event stream of one response: the stream assembler's mirror image.

:class:`ResponseBuilder` is pure: every method takes what a model produced (an item opens,
more text, the item closes, a whole item, the end) and returns the events that say it, in the
canonical order a strict client checks: ``response.created`` and ``response.in_progress``
first; per item ``output_item.added``, its parts (``content_part.added``), deltas, the parts'
``.done`` events, then ``output_item.done``; one terminal event last, whose response carries
the full ``output``. Sequence numbers count from 0 and item ids are derived from the response
id, so the same calls give the same events.

Every producer of Responses events uses it: the gateway's execution core (whatever the
backend), the Chat Completions stream decoder (a chat upstream behind the gateway, or a
client of a chat-only server), so all of them agree on every detail.
:class:`~hotloop.protocol.assembler.ResponseStream` turns the events back into the items.

Item kinds and their events:

* message: ``output_text`` parts stream ``response.output_text.delta``/``.done``, ``refusal``
  parts ``response.refusal.delta``/``.done``; a message may hold several parts;
* function call: ``response.function_call_arguments.delta``/``.done``; the model's own
  ``call_id`` is kept when it has one;
* reasoning: ``summary_text`` parts stream ``response.reasoning_summary_part.added``,
  ``response.reasoning_summary_text.delta``/``.done`` and
  ``response.reasoning_summary_part.done``; ``reasoning_text`` parts stream
  ``response.reasoning_text.delta``/``.done``; ``encrypted_content`` is set when it closes;
* any other item is added whole (:meth:`ResponseBuilder.add_item`) and passes through as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from hotloop.errors import ProtocolError
from hotloop.wire.events import (
    ContentPartAdded,
    ContentPartDone,
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
    UnknownEvent,
)
from hotloop.wire.items import ContentPart, FunctionCall, Item, Message, Reasoning
from hotloop.wire.responses import ResponseObject, Usage

__all__ = ["PART_KINDS", "ResponseBuilder"]

#: The part kinds each streamed item kind may hold.
PART_KINDS: Final[Mapping[str, frozenset[str]]] = {
    "message": frozenset({"output_text", "refusal"}),
    "reasoning": frozenset({"summary_text", "reasoning_text"}),
}

# What an output_text part carries besides its text, as OpenAI sends it.
_TEXT_ADDED: Mapping[str, Any] = {"annotations": []}
_TEXT_DONE: Mapping[str, Any] = {"annotations": [], "logprobs": []}
_NO_EVENTS: tuple[Event, ...] = ()


class _Open:
    """The item being streamed: its kind, index, id, finished parts and the open part."""

    __slots__ = ("call", "chunks", "item_id", "kind", "output_index", "part", "parts")

    def __init__(self, kind: str, output_index: int, item_id: str) -> None:
        self.kind = kind
        self.output_index = output_index
        self.item_id = item_id
        self.call: FunctionCall | None = None
        self.parts: list[ContentPart] = []
        self.part: str | None = None  # the open part's kind
        self.chunks: list[str] = []  # the open part's (or the call's arguments') fragments


class ResponseBuilder:
    """Produce the events of one response; see the module docstring.

    ``response`` is the response being built (its ``id``, ``model``, settings); its status
    and output are the builder's to set. Call :meth:`start` first, then open, stream and close
    items (or add whole ones), and end with :meth:`finish` or :meth:`fail`. A backend records
    the turn's token usage with :meth:`set_usage` (and a cut-off with :meth:`set_incomplete`);
    whoever calls :meth:`finish` decides when the terminal event goes out. A backend that has
    something to tell the client about the turn itself (not model output: a scenario calling a
    tool the request does not offer) records it with :meth:`warn`.
    """

    __slots__ = (
        "_ended",
        "_incomplete",
        "_open",
        "_output",
        "_prefix",
        "_response",
        "_seq",
        "_started",
        "_usage",
        "_warnings",
    )

    def __init__(self, response: ResponseObject) -> None:
        self._response = response
        self._prefix = response.id.removeprefix("resp_")
        self._seq = 0
        self._output: list[Item] = []
        self._open: _Open | None = None
        self._usage: Usage | None = None
        self._incomplete: str | None = None
        self._started = False
        self._ended = False
        self._warnings: list[str] = []

    # -- state ---------------------------------------------------------------------------

    @property
    def response(self) -> ResponseObject:
        """The response as of the last lifecycle event (the final one after :meth:`finish`)."""
        return self._response

    @property
    def output(self) -> tuple[Item, ...]:
        """The items closed so far, in order."""
        return tuple(self._output)

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def incomplete_reason(self) -> str | None:
        return self._incomplete

    @property
    def item_open(self) -> bool:
        """True while an item is open (between ``open_*`` and :meth:`close_item`)."""
        return self._open is not None

    @property
    def ended(self) -> bool:
        return self._ended

    def set_usage(self, usage: Usage) -> None:
        """Record the turn's token usage; the terminal response carries it."""
        self._usage = usage

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the backend warned about (:meth:`warn`), in order."""
        return tuple(self._warnings)

    def warn(self, message: str) -> None:
        """Record a warning about this turn for the client.

        It is not an item of the output (the model did not say it): whoever finishes the
        response reports it beside the output, in the gateway's ``hotloop`` extension object.
        A repeated message is kept once.
        """
        if message not in self._warnings:
            self._warnings.append(message)

    def set_incomplete(self, reason: str) -> None:
        """Record that generation stopped early (``max_output_tokens``, ``content_filter``)."""
        self._incomplete = reason

    def _next(self) -> int:
        seq = self._seq
        self._seq = seq + 1
        return seq

    def _item_id(self, kind: str) -> str:
        return f"{kind}_{self._prefix}_{len(self._output)}"

    def _check_can_open(self) -> None:
        if self._ended:
            raise ProtocolError("the response already ended")
        if not self._started:
            raise ProtocolError("start() the response before adding items")
        if self._open is not None:
            raise ProtocolError("close the open item before opening another")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> tuple[Event, ...]:
        """``response.created`` and ``response.in_progress``."""
        if self._started:
            raise ProtocolError("the response was already started")
        self._started = True
        response = self._response
        return (
            ResponseCreated(response=response, sequence_number=self._next()),
            ResponseInProgress(response=response, sequence_number=self._next()),
        )

    def finish(self, extra: Mapping[str, Any] | None = None) -> tuple[Event, ...]:
        """Close any open item and end the response: ``completed`` or ``incomplete``.

        The terminal response carries the full output and the recorded usage; ``extra``
        adds fields to it. The terminal event is last; :meth:`annotate` can still add fields
        to it before it is sent.
        """
        if self._ended:
            raise ProtocolError("the response already ended")
        events = self.close_item() if self._open is not None else _NO_EVENTS
        self._ended = True
        reason = self._incomplete
        final = self._response.with_status(
            "incomplete" if reason else "completed",
            output=tuple(self._output),
            usage=self._usage,
            incomplete_details={"reason": reason} if reason else None,
        )
        if extra:
            final = final.with_status(final.status, extra={**final.extra, **extra})
        self._response = final
        if reason:
            return (*events, ResponseIncomplete(response=final, sequence_number=self._next()))
        return (*events, ResponseCompleted(response=final, sequence_number=self._next()))

    def annotate(self, terminal: Event, extra: Mapping[str, Any]) -> Event:
        """``terminal`` (from :meth:`finish`) with ``extra`` added to its response.

        For what is known only after the response was built but before it is sent (the
        gateway's own commit time).
        """
        if not isinstance(terminal, ResponseCompleted | ResponseIncomplete):
            raise ProtocolError("annotate() takes the terminal event finish() returned")
        final = self._response
        final = final.with_status(final.status, extra={**final.extra, **extra})
        self._response = final
        return replace(terminal, response=final)

    def fail(
        self, code: str, message: str, *, instead_of: Event | None = None
    ) -> tuple[Event, ...]:
        """End the response as ``failed``; its output holds the items closed so far.

        ``instead_of`` is the terminal event :meth:`finish` returned when it was never sent
        (committing the response failed): the failure takes its place and its number.
        """
        if instead_of is None:
            if self._ended:
                raise ProtocolError("the response already ended")
            sequence = self._next()
        elif isinstance(instead_of, ResponseCompleted | ResponseIncomplete):
            sequence = instead_of.sequence_number
        else:
            raise ProtocolError("fail(instead_of=...) takes the terminal event finish() returned")
        self._ended = True
        self._open = None
        self._response = self._response.with_status(
            "failed",
            output=tuple(self._output),
            usage=self._usage,
            error={"code": code, "message": message},
        )
        return (ResponseFailed(response=self._response, sequence_number=sequence),)

    # -- items that stream -----------------------------------------------------------------

    def open_message(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        """An assistant message starts; open its parts with :meth:`open_part`."""
        self._check_can_open()
        current = self._open = _Open("message", len(self._output), item_id or self._item_id("msg"))
        item = Message(role="assistant", content=(), id=current.item_id, status="in_progress")
        return (
            OutputItemAdded(
                output_index=current.output_index, item=item, sequence_number=self._next()
            ),
        )

    def open_text(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        """An assistant message with one ``output_text`` part starts (the common case)."""
        return (*self.open_message(item_id=item_id), *self.open_part("output_text"))

    def open_reasoning(self, *, item_id: str | None = None) -> tuple[Event, ...]:
        """A reasoning item starts; open ``summary_text`` / ``reasoning_text`` parts in it."""
        self._check_can_open()
        current = self._open = _Open("reasoning", len(self._output), item_id or self._item_id("rs"))
        item = Reasoning(id=current.item_id, extra={"status": "in_progress"})
        return (
            OutputItemAdded(
                output_index=current.output_index, item=item, sequence_number=self._next()
            ),
        )

    def open_call(
        self, name: str, *, call_id: str | None = None, item_id: str | None = None
    ) -> tuple[Event, ...]:
        """A function call to ``name`` starts; its arguments follow as :meth:`delta` text.

        ``call_id`` is the model's own id for the call when it has one (an upstream's).
        """
        self._check_can_open()
        index = len(self._output)
        current = self._open = _Open("function_call", index, item_id or self._item_id("fc"))
        call = current.call = FunctionCall(
            call_id=call_id or f"call_{self._prefix}_{index}",
            name=name,
            arguments="",
            id=current.item_id,
            status="in_progress",
        )
        return (OutputItemAdded(output_index=index, item=call, sequence_number=self._next()),)

    def open_part(self, kind: str) -> tuple[Event, ...]:
        """A new part of the open message or reasoning item; closes the previous part."""
        current = self._open
        if current is None or current.kind not in PART_KINDS:
            raise ProtocolError("open_part() needs an open message or reasoning item")
        if kind not in PART_KINDS[current.kind]:
            allowed = ", ".join(sorted(PART_KINDS[current.kind]))
            raise ProtocolError(f"a {current.kind} item holds {allowed} parts, not {kind!r}")
        events = self._close_part(current) if current.part is not None else _NO_EVENTS
        current.part = kind
        current.chunks = []
        index = len(current.parts)
        if kind == "summary_text":
            added: Event = _unknown(
                "response.reasoning_summary_part.added",
                self._next(),
                item_id=current.item_id,
                output_index=current.output_index,
                summary_index=index,
                part={"type": "summary_text", "text": ""},
            )
        elif kind == "reasoning_text":
            # Reasoning text has no part events of its own: a client that reads parts as
            # message text must never see the model's reasoning as its answer.
            return events
        else:
            added = ContentPartAdded(
                item_id=current.item_id,
                output_index=current.output_index,
                content_index=index,
                part=ContentPart(kind, "", _TEXT_ADDED)
                if kind == "output_text"
                else ContentPart(kind, None, {"refusal": ""}),
                sequence_number=self._next(),
            )
        return (*events, added)

    def delta(self, text: str) -> tuple[Event, ...]:
        """More text of the open part, or more argument JSON of the open call."""
        current = self._open
        if current is None:
            raise ProtocolError("delta() outside an item")
        current.chunks.append(text)
        kind = current.part
        if current.call is not None:
            return (
                FunctionCallArgumentsDelta(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    delta=text,
                    sequence_number=self._next(),
                ),
            )
        if kind == "output_text":
            return (
                OutputTextDelta(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=len(current.parts),
                    delta=text,
                    sequence_number=self._next(),
                ),
            )
        if kind is None:
            raise ProtocolError(f"delta() in a {current.kind} item before open_part()")
        return (
            _unknown(
                _DELTA_TYPES[kind],
                self._next(),
                item_id=current.item_id,
                output_index=current.output_index,
                **{_INDEX_KEYS[kind]: len(current.parts)},
                delta=text,
            ),
        )

    def close_item(self, *, encrypted_content: str | None = None) -> tuple[Event, ...]:
        """The open item is complete: its parts' and its own ``.done`` events.

        ``encrypted_content`` is the opaque state of a reasoning item, when the model sent it.
        """
        current = self._open
        if current is None:
            raise ProtocolError("close_item() with no open item")
        events: list[Event] = []
        if current.call is not None:
            arguments = "".join(current.chunks)
            item: Item = replace(current.call, arguments=arguments, status="completed")
            events.append(
                FunctionCallArgumentsDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    arguments=arguments,
                    name=current.call.name,
                    sequence_number=self._next(),
                )
            )
        else:
            if current.part is not None:
                events.extend(self._close_part(current))
            if current.kind == "message":
                item = Message(
                    role="assistant",
                    content=tuple(current.parts),
                    id=current.item_id,
                    status="completed",
                )
            else:
                summary = tuple(p for p in current.parts if p.type == "summary_text")
                content = [p.to_dict() for p in current.parts if p.type == "reasoning_text"]
                item = Reasoning(
                    id=current.item_id,
                    summary=summary,
                    encrypted_content=encrypted_content,
                    extra={"content": content} if content else {},
                )
        self._open = None
        self._output.append(item)
        events.append(
            OutputItemDone(
                output_index=current.output_index, item=item, sequence_number=self._next()
            )
        )
        return tuple(events)

    def _close_part(self, current: _Open) -> tuple[Event, ...]:
        kind = current.part
        assert kind is not None
        text = "".join(current.chunks)
        index = len(current.parts)
        current.part = None
        current.chunks = []
        if kind == "output_text":
            part = ContentPart(kind, text, _TEXT_DONE)
            current.parts.append(part)
            return (
                OutputTextDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=index,
                    text=text,
                    sequence_number=self._next(),
                ),
                ContentPartDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=index,
                    part=part,
                    sequence_number=self._next(),
                ),
            )
        if kind == "refusal":
            part = ContentPart("refusal", None, {"refusal": text})
            current.parts.append(part)
            return (
                _unknown(
                    "response.refusal.done",
                    self._next(),
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=index,
                    refusal=text,
                ),
                ContentPartDone(
                    item_id=current.item_id,
                    output_index=current.output_index,
                    content_index=index,
                    part=part,
                    sequence_number=self._next(),
                ),
            )
        part = ContentPart(kind, text)
        current.parts.append(part)
        key = _INDEX_KEYS[kind]
        text_done = _unknown(
            _DONE_TYPES[kind],
            self._next(),
            item_id=current.item_id,
            output_index=current.output_index,
            **{key: index},
            text=text,
        )
        if kind == "reasoning_text":
            return (text_done,)
        part_done = _unknown(
            "response.reasoning_summary_part.done",
            self._next(),
            item_id=current.item_id,
            output_index=current.output_index,
            **{key: index},
            part=part.to_dict(),
        )
        return (text_done, part_done)

    # -- whole items -----------------------------------------------------------------------

    def add_item(self, item: Item) -> tuple[Event, ...]:
        """An item that is complete already (an upstream's, passed through unchanged)."""
        self._check_can_open()
        index = len(self._output)
        self._output.append(item)
        return (
            OutputItemAdded(output_index=index, item=item, sequence_number=self._next()),
            OutputItemDone(output_index=index, item=item, sequence_number=self._next()),
        )


_DELTA_TYPES: Final[Mapping[str, str]] = {
    "refusal": "response.refusal.delta",
    "summary_text": "response.reasoning_summary_text.delta",
    "reasoning_text": "response.reasoning_text.delta",
}
_DONE_TYPES: Final[Mapping[str, str]] = {
    "summary_text": "response.reasoning_summary_text.done",
    "reasoning_text": "response.reasoning_text.done",
}
_INDEX_KEYS: Final[Mapping[str, str]] = {
    "refusal": "content_index",
    "summary_text": "summary_index",
    "reasoning_text": "content_index",
}


def _unknown(kind: str, sequence_number: int, **fields: Any) -> UnknownEvent:
    # Events without a typed record travel as their wire dicts, ``type`` first.
    return UnknownEvent({"type": kind, **fields, "sequence_number": sequence_number})
