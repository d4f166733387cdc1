"""Assemble one streamed response into complete items, reporting what a caller can act on.

:class:`ResponseStream` is fed the typed events of one response (from SSE, a WebSocket lane
or a translated Chat Completions stream) and returns *reports*: text as it streams, each
function call the moment its arguments are complete, each finished item, and the end of the
response. It is the pure core of a runtime: a caller can start a tool while the model is
still streaming the next call, which is where a tool loop saves its time.

It also checks the ordering rules the strict SDK helper enforces
and raises :class:`StreamOrderError` when they are broken, so a bad server is caught at the
event that broke them rather than as a confusing result later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeAlias

from hotloop.errors import ProtocolError
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
    ResponseQueued,
    SteerAccepted,
    SteerFailed,
    SteerPending,
    WebSocketError,
)
from hotloop.wire.items import FunctionCall, Item, Message
from hotloop.wire.responses import ResponseObject, Usage

__all__ = [
    "FunctionCallReady",
    "ItemDone",
    "Report",
    "ResponseDone",
    "ResponseStream",
    "StreamError",
    "StreamOrderError",
    "TextDelta",
]


class StreamOrderError(ProtocolError):
    """The server broke the event order of a Responses stream."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of assistant text for the message item at ``output_index``."""

    output_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class FunctionCallReady:
    """A function call whose arguments are complete: the caller may run the tool now."""

    output_index: int
    call: FunctionCall


@dataclass(frozen=True, slots=True)
class ItemDone:
    """An output item is final (``response.output_item.done``, or the terminal output)."""

    output_index: int
    item: Item


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The response ended (completed, incomplete or failed); ``response`` has full output."""

    response: ResponseObject


@dataclass(frozen=True, slots=True)
class StreamError:
    """The server sent an ``error`` event (SSE or WebSocket shape); the response ended."""

    code: str | None
    message: str
    param: str | None
    status: int | None


Report: TypeAlias = TextDelta | FunctionCallReady | ItemDone | ResponseDone | StreamError

_NO_REPORTS: tuple[Report, ...] = ()
# Steering acknowledgements belong to the WebSocket session, not to one response's stream:
# ``response.steer.pending`` even arrives after ``response.completed``.
_SESSION_EVENTS = (SteerAccepted, SteerPending, SteerFailed)


class _Slot:
    """What the stream knows about one ``output_index``."""

    __slots__ = ("added", "call_reported", "closed", "done", "parts")

    def __init__(self, added: Item | None) -> None:
        self.added = added
        # Final item: from ``output_item.done``, or a call built at ``arguments.done``.
        self.done: Item | None = None
        self.closed = False  # ``output_item.done`` seen
        self.call_reported = False
        # content_index -> text fragments; joined only when someone asks for the text.
        self.parts: dict[int, list[str]] = {}


class ResponseStream:
    """Assemble the events of one response; :meth:`receive` returns what just happened.

    Create one per response, feed it every event in order, and act on the reports. Once
    :attr:`done` is true, :attr:`final_response` holds the response with its full output
    (rebuilt from the streamed items when the server left ``output`` empty).
    """

    __slots__ = ("_count", "_error", "_final", "_response", "_slots", "_status")

    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}
        self._response: ResponseObject | None = None
        self._final: ResponseObject | None = None
        self._error: StreamError | None = None
        self._status: str | None = None
        self._count = 0

    # -- state -------------------------------------------------------------------------

    @property
    def response_id(self) -> str | None:
        """The id of the response, once a lifecycle event named it."""
        return self._response.id if self._response is not None else None

    @property
    def status(self) -> str | None:
        """The last ``status`` a lifecycle event reported (``"error"`` after an error)."""
        return self._status

    @property
    def done(self) -> bool:
        """True after a terminal event: completed, incomplete, failed or ``error``."""
        return self._final is not None or self._error is not None

    @property
    def output(self) -> tuple[Item, ...]:
        """The completed items, in ``output_index`` order."""
        return tuple(slot.done for _, slot in sorted(self._slots.items()) if slot.done is not None)

    @property
    def text(self) -> str:
        """The assistant text streamed so far, all message items joined (like ``output_text``)."""
        pieces: list[str] = []
        for _, slot in sorted(self._slots.items()):
            if isinstance(slot.done, Message):
                pieces.append(slot.done.text)
            elif slot.parts:
                pieces.extend("".join(slot.parts[i]) for i in sorted(slot.parts))
        return "".join(pieces)

    @property
    def usage(self) -> Usage | None:
        """Token usage from the terminal response, if it carried any."""
        return self._final.usage if self._final is not None else None

    @property
    def final_response(self) -> ResponseObject | None:
        """The terminal response with its full output, or ``None`` before the end."""
        return self._final

    @property
    def error(self) -> StreamError | None:
        """The ``error`` event that ended the stream, if one did."""
        return self._error

    def events_received(self) -> int:
        """How many events :meth:`receive` has accepted."""
        return self._count

    # -- events ------------------------------------------------------------------------

    def receive(self, event: Event) -> tuple[Report, ...]:
        """Take the next event; return the reports it produced (often none)."""
        # Deltas are most of a stream (one per token): exact type checks (both classes are
        # final) before the isinstance chain for everything else.
        if type(event) is FunctionCallArgumentsDelta:
            if self._final is not None or self._error is not None:
                raise StreamOrderError(f"{event.type!r} received after the response ended")
            self._count += 1
            slot = self._slots.get(event.output_index)
            if slot is None or not isinstance(slot.added, FunctionCall):
                self._call_slot(event.output_index, event.type)  # raises the precise error
            return _NO_REPORTS
        if type(event) is OutputTextDelta:
            if self._final is not None or self._error is not None:
                raise StreamOrderError(f"{event.type!r} received after the response ended")
            self._count += 1
            self._part(event.output_index, event.content_index, event.type).append(event.delta)
            return (TextDelta(event.output_index, event.delta),)
        if isinstance(event, _SESSION_EVENTS):
            self._count += 1
            return _NO_REPORTS
        if self.done:
            raise StreamOrderError(f"{event.type!r} received after the response ended")
        self._count += 1
        if isinstance(event, OutputItemAdded):
            if event.output_index in self._slots:
                raise StreamOrderError(f"output_index {event.output_index} was added twice")
            self._slots[event.output_index] = _Slot(event.item)
            return _NO_REPORTS
        if isinstance(event, ContentPartAdded):
            slot = self._slot(event.output_index, event.type)
            slot.parts[event.content_index] = [event.part.text or ""]
            return _NO_REPORTS
        if isinstance(event, OutputTextDone):
            # The done text is authoritative; it replaces whatever the deltas built.
            parts = self._part(event.output_index, event.content_index, event.type)
            parts[:] = [event.text]
            return _NO_REPORTS
        if isinstance(event, ContentPartDone):
            slot = self._slot(event.output_index, event.type)
            if event.part.text is not None:
                slot.parts[event.content_index] = [event.part.text]
            return _NO_REPORTS
        if isinstance(event, FunctionCallArgumentsDone):
            return self._arguments_done(event)
        if isinstance(event, OutputItemDone):
            return self._item_done(event.output_index, event.item)
        if isinstance(event, (ResponseCreated, ResponseQueued, ResponseInProgress)):
            self._lifecycle(event.response)
            return _NO_REPORTS
        if isinstance(event, (ResponseCompleted, ResponseIncomplete, ResponseFailed)):
            return self._terminal(event.response)
        if isinstance(event, ErrorEvent):
            return self._fail(StreamError(event.code, event.message, event.param, None))
        if isinstance(event, WebSocketError):
            param = event.error.get("param")
            return self._fail(
                StreamError(
                    event.code,
                    event.message,
                    param if isinstance(param, str) else None,
                    event.status,
                )
            )
        # Unknown events (reasoning summaries, refusals, future types) pass through.
        return _NO_REPORTS

    def _slot(self, output_index: int, kind: str) -> _Slot:
        slot = self._slots.get(output_index)
        if slot is None:
            raise StreamOrderError(
                f"{kind!r} for output_index {output_index} before its output_item.added"
            )
        return slot

    def _call_slot(self, output_index: int, kind: str) -> _Slot:
        slot = self._slot(output_index, kind)
        if not isinstance(slot.added, FunctionCall):
            raise StreamOrderError(
                f"{kind!r} for output_index {output_index}, which is not a function_call"
            )
        return slot

    def _part(self, output_index: int, content_index: int, kind: str) -> list[str]:
        parts = self._slot(output_index, kind).parts.get(content_index)
        if parts is None:
            raise StreamOrderError(
                f"{kind!r} for output_index {output_index} content_index {content_index} "
                "before its content_part.added"
            )
        return parts

    def _arguments_done(self, event: FunctionCallArgumentsDone) -> tuple[Report, ...]:
        slot = self._call_slot(event.output_index, event.type)
        if slot.call_reported:
            return _NO_REPORTS
        added = slot.added
        assert isinstance(added, FunctionCall)  # checked by _call_slot
        # The arguments are final now; ``output_item.done`` will only repeat them, so the
        # call is reported here and marked completed (in the canonical order,
        # ``function_call_arguments.done`` comes right before ``output_item.done``).
        call = replace(
            added, arguments=event.arguments, name=event.name or added.name, status="completed"
        )
        slot.done = call
        slot.call_reported = True
        return (FunctionCallReady(event.output_index, call),)

    def _item_done(self, output_index: int, item: Item) -> tuple[Report, ...]:
        slot = self._slots.get(output_index)
        if slot is None:
            # Tolerated: the SDK rebuilds output from item.done alone.
            slot = self._slots[output_index] = _Slot(None)
        elif slot.closed:
            raise StreamOrderError(f"output_index {output_index} was done twice")
        slot.done = item
        slot.closed = True
        if isinstance(item, FunctionCall) and not slot.call_reported:
            slot.call_reported = True
            return (FunctionCallReady(output_index, item), ItemDone(output_index, item))
        return (ItemDone(output_index, item),)

    def _lifecycle(self, response: ResponseObject) -> None:
        current = self._response
        if current is not None and current.id != response.id:
            # Every lifecycle event of one stream carries the same response.id.
            raise StreamOrderError(
                f"response.id changed within one stream: {current.id!r} -> {response.id!r}"
            )
        self._response = response
        self._status = response.status

    def _terminal(self, response: ResponseObject) -> tuple[Report, ...]:
        self._lifecycle(response)
        reports: list[Report] = []
        if response.output:
            # Items only the terminal output carries were never reported: report them now,
            # so every call reaches the caller exactly once whatever the server streamed.
            for index, item in enumerate(response.output):
                slot = self._slots.get(index)
                if slot is None or slot.done is None:
                    reports.extend(self._item_done(index, item))
            final = response
        elif self._slots:
            # A server may stream items yet leave ``output`` empty; rebuild it.
            final = replace(response, output=self.output)
        else:
            final = response
        self._final = final
        reports.append(ResponseDone(final))
        return tuple(reports)

    def _fail(self, error: StreamError) -> tuple[Report, ...]:
        self._error = error
        self._status = "error"
        return (error,)
