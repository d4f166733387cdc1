"""Typed records for every Responses stream event, over SSE and over WebSocket.

Each event is a frozen, slotted, keyword-only dataclass whose class attribute ``type`` is the
wire name. ``sequence_number`` and ``stream_id`` (WebSocket lanes) are on every event;
``stream_id`` is omitted from the wire when it is ``None`` (default-lane events must not carry
it). Events hotloop does not model decode to :class:`UnknownEvent` and pass through unchanged.

:func:`event_to_dict` and :func:`event_from_dict` are the two converters; the codec turns their
dicts into bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias, final

from hotloop.errors import InvalidMessage
from hotloop.wire.items import ContentPart, Item, JSONDict, item_from_dict
from hotloop.wire.responses import ResponseObject

__all__ = [
    "ERROR_EVENTS",
    "RESPONSE_END_EVENTS",
    "TERMINAL_EVENT_TYPES",
    "ContentPartAdded",
    "ContentPartDone",
    "ErrorEvent",
    "Event",
    "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone",
    "OutputItemAdded",
    "OutputItemDone",
    "OutputTextDelta",
    "OutputTextDone",
    "ResponseCompleted",
    "ResponseCreated",
    "ResponseFailed",
    "ResponseInProgress",
    "ResponseIncomplete",
    "ResponseQueued",
    "SteerAccepted",
    "SteerFailed",
    "SteerPending",
    "UnknownEvent",
    "WebSocketError",
    "event_from_dict",
    "event_to_dict",
]


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    type: ClassVar[str]
    sequence_number: int = 0
    stream_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _ResponseEvent(_Base):
    response: ResponseObject


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCreated(_ResponseEvent):
    type: ClassVar[str] = "response.created"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseQueued(_ResponseEvent):
    type: ClassVar[str] = "response.queued"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseInProgress(_ResponseEvent):
    type: ClassVar[str] = "response.in_progress"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCompleted(_ResponseEvent):
    type: ClassVar[str] = "response.completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseIncomplete(_ResponseEvent):
    type: ClassVar[str] = "response.incomplete"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFailed(_ResponseEvent):
    type: ClassVar[str] = "response.failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputItemAdded(_Base):
    type: ClassVar[str] = "response.output_item.added"
    output_index: int
    item: Item


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputItemDone(_Base):
    type: ClassVar[str] = "response.output_item.done"
    output_index: int
    item: Item


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentPartAdded(_Base):
    type: ClassVar[str] = "response.content_part.added"
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentPartDone(_Base):
    type: ClassVar[str] = "response.content_part.done"
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class OutputTextDelta(_Base):
    type: ClassVar[str] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputTextDone(_Base):
    type: ClassVar[str] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: tuple[Any, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallArgumentsDelta(_Base):
    type: ClassVar[str] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallArgumentsDone(_Base):
    type: ClassVar[str] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    arguments: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(_Base):
    """The SSE ``error`` event: ``code``/``message``/``param`` at the top level."""

    type: ClassVar[str] = "error"
    message: str
    code: str | None = None
    param: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketError(_Base):
    """The WebSocket ``error`` envelope: ``{"status", "error": {type, code, message, param}}``.

    Shares the wire name ``error`` with :class:`ErrorEvent`; the decoder tells them apart by
    the nested ``error`` object.
    """

    type: ClassVar[str] = "error"
    status: int | None
    error: Mapping[str, Any]

    @property
    def code(self) -> str | None:
        code = self.error.get("code")
        return code if isinstance(code, str) else None

    @property
    def message(self) -> str:
        return str(self.error.get("message", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class SteerAccepted(_Base):
    type: ClassVar[str] = "response.steer.accepted"
    steer: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class SteerPending(_Base):
    type: ClassVar[str] = "response.steer.pending"
    steer: Mapping[str, Any]
    reason: str | None = None
    required_input: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SteerFailed(_Base):
    type: ClassVar[str] = "response.steer.failed"
    steer: Mapping[str, Any]
    error: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type hotloop does not model, kept verbatim."""

    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        kind = self.data.get("type")
        return kind if isinstance(kind, str) else ""

    @property
    def sequence_number(self) -> int | None:
        seq = self.data.get("sequence_number")
        return seq if isinstance(seq, int) else None

    @property
    def stream_id(self) -> str | None:
        sid = self.data.get("stream_id")
        return sid if isinstance(sid, str) else None


Event: TypeAlias = (
    ResponseCreated
    | ResponseQueued
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ErrorEvent
    | WebSocketError
    | SteerAccepted
    | SteerPending
    | SteerFailed
    | UnknownEvent
)

#: The events that end a response: its output is final (completed, incomplete or failed).
RESPONSE_END_EVENTS: frozenset[type[Event]] = frozenset(
    {ResponseCompleted, ResponseIncomplete, ResponseFailed}
)
#: The error events that end a request instead (SSE and WebSocket shapes).
ERROR_EVENTS: frozenset[type[Event]] = frozenset({ErrorEvent, WebSocketError})
#: The wire names of every event that ends a turn, one of the two kinds above.
TERMINAL_EVENT_TYPES: frozenset[str] = frozenset(
    cls.type
    for cls in (ResponseCompleted, ResponseIncomplete, ResponseFailed, ErrorEvent, WebSocketError)
)

_OMIT_WHEN_NONE = frozenset({"stream_id", "name", "status", "reason"})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _value_to_wire(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    to_dict = getattr(value, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    if isinstance(value, tuple):
        return [_value_to_wire(entry) for entry in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


def event_to_dict(event: Event) -> JSONDict:
    """The wire dict of an event (``type`` first, ``None`` stream_id omitted)."""
    if isinstance(event, UnknownEvent):
        return dict(event.data)
    cls = type(event)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in fields(event))
        _FIELD_NAMES[cls] = names
    out: JSONDict = {"type": cls.type}
    for name in names:
        value = getattr(event, name)
        if value is None and name in _OMIT_WHEN_NONE:
            continue
        out[name] = _value_to_wire(value)
    return out


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"event field {key!r} must be an integer", param=key)
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidMessage(f"event field {key!r} must be a string", param=key)
    return value


def _common(data: Mapping[str, Any]) -> dict[str, Any]:
    seq = data.get("sequence_number", 0)
    sid = data.get("stream_id")
    return {
        "sequence_number": seq if isinstance(seq, int) and not isinstance(seq, bool) else 0,
        "stream_id": sid if isinstance(sid, str) else None,
    }


def _response_event(cls: type[_ResponseEvent]) -> Callable[[Mapping[str, Any]], Event]:
    def decode(data: Mapping[str, Any]) -> Event:
        event: Event = cls(response=ResponseObject.from_dict(data.get("response")), **_common(data))  # type: ignore[assignment]
        return event

    return decode


def _item_event(cls: type[OutputItemAdded] | type[OutputItemDone]) -> Callable[..., Event]:
    def decode(data: Mapping[str, Any]) -> Event:
        return cls(
            output_index=_int(data, "output_index"),
            item=item_from_dict(data.get("item"), "item"),
            **_common(data),
        )

    return decode


def _part_event(cls: type[ContentPartAdded] | type[ContentPartDone]) -> Callable[..., Event]:
    def decode(data: Mapping[str, Any]) -> Event:
        return cls(
            item_id=_str(data, "item_id"),
            output_index=_int(data, "output_index"),
            content_index=_int(data, "content_index"),
            part=ContentPart.from_dict(data.get("part"), "part"),
            **_common(data),
        )

    return decode


# Deltas are most of a stream (one per token), so they get a fast path: exact type checks
# in one expression, the field-by-field path with precise errors only when one fails.


def _text_delta(data: Mapping[str, Any]) -> Event:
    item_id, index = data.get("item_id"), data.get("output_index")
    part, delta = data.get("content_index"), data.get("delta")
    seq, sid = data.get("sequence_number", 0), data.get("stream_id")
    logprobs = data.get("logprobs")
    if (
        type(item_id) is str
        and type(index) is int
        and type(part) is int
        and type(delta) is str
        and type(seq) is int
        and (sid is None or type(sid) is str)
        and not logprobs
        and (logprobs is None or type(logprobs) is list)
    ):
        return OutputTextDelta(
            item_id=item_id,
            output_index=index,
            content_index=part,
            delta=delta,
            sequence_number=seq,
            stream_id=sid,
        )
    return _text_delta_checked(data)


def _text_delta_checked(data: Mapping[str, Any]) -> Event:
    return OutputTextDelta(
        item_id=_str(data, "item_id"),
        output_index=_int(data, "output_index"),
        content_index=_int(data, "content_index"),
        delta=_str(data, "delta"),
        logprobs=_list(data, "logprobs"),
        **_common(data),
    )


def _text_done(data: Mapping[str, Any]) -> Event:
    return OutputTextDone(
        item_id=_str(data, "item_id"),
        output_index=_int(data, "output_index"),
        content_index=_int(data, "content_index"),
        text=_str(data, "text"),
        logprobs=_list(data, "logprobs"),
        **_common(data),
    )


def _args_delta(data: Mapping[str, Any]) -> Event:
    item_id, index, delta = data.get("item_id"), data.get("output_index"), data.get("delta")
    seq, sid = data.get("sequence_number", 0), data.get("stream_id")
    if (
        type(item_id) is str
        and type(index) is int
        and type(delta) is str
        and type(seq) is int
        and (sid is None or type(sid) is str)
    ):
        return FunctionCallArgumentsDelta(
            item_id=item_id, output_index=index, delta=delta, sequence_number=seq, stream_id=sid
        )
    return _args_delta_checked(data)


def _args_delta_checked(data: Mapping[str, Any]) -> Event:
    return FunctionCallArgumentsDelta(
        item_id=_str(data, "item_id"),
        output_index=_int(data, "output_index"),
        delta=_str(data, "delta"),
        **_common(data),
    )


def _args_done(data: Mapping[str, Any]) -> Event:
    name = data.get("name")
    return FunctionCallArgumentsDone(
        item_id=_str(data, "item_id"),
        output_index=_int(data, "output_index"),
        arguments=_str(data, "arguments"),
        name=name if isinstance(name, str) else None,
        **_common(data),
    )


def _error(data: Mapping[str, Any]) -> Event:
    nested = data.get("error")
    if isinstance(nested, dict):
        status = data.get("status")
        return WebSocketError(
            status=status if isinstance(status, int) else None, error=nested, **_common(data)
        )
    code, param = data.get("code"), data.get("param")
    return ErrorEvent(
        message=str(data.get("message", "")),
        code=code if isinstance(code, str) else None,
        param=param if isinstance(param, str) else None,
        **_common(data),
    )


def _list(data: Mapping[str, Any], key: str) -> tuple[Any, ...]:
    # tuple() of a number raises TypeError and of a string splits it: check the type first.
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidMessage(f"event field {key!r} must be a list", param=key)
    return tuple(value)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise InvalidMessage(f"event field {key!r} must be an object", param=key)
    return value


def _steer_accepted(data: Mapping[str, Any]) -> Event:
    return SteerAccepted(steer=_mapping(data, "steer"), **_common(data))


def _steer_pending(data: Mapping[str, Any]) -> Event:
    reason = data.get("reason")
    return SteerPending(
        steer=_mapping(data, "steer"),
        reason=reason if isinstance(reason, str) else None,
        required_input=_list(data, "required_input"),
        **_common(data),
    )


def _steer_failed(data: Mapping[str, Any]) -> Event:
    return SteerFailed(
        steer=_mapping(data, "steer"),
        error=_mapping(data, "error") if data.get("error") is not None else {},
        **_common(data),
    )


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "response.created": _response_event(ResponseCreated),
    "response.queued": _response_event(ResponseQueued),
    "response.in_progress": _response_event(ResponseInProgress),
    "response.completed": _response_event(ResponseCompleted),
    "response.incomplete": _response_event(ResponseIncomplete),
    "response.failed": _response_event(ResponseFailed),
    "response.output_item.added": _item_event(OutputItemAdded),
    "response.output_item.done": _item_event(OutputItemDone),
    "response.content_part.added": _part_event(ContentPartAdded),
    "response.content_part.done": _part_event(ContentPartDone),
    "response.output_text.delta": _text_delta,
    "response.output_text.done": _text_done,
    "response.function_call_arguments.delta": _args_delta,
    "response.function_call_arguments.done": _args_done,
    "error": _error,
    "response.steer.accepted": _steer_accepted,
    "response.steer.pending": _steer_pending,
    "response.steer.failed": _steer_failed,
}


def event_from_dict(data: Any) -> Event:
    """Build the typed record of one decoded event; unknown types become :class:`UnknownEvent`.

    Raises :class:`~hotloop.errors.InvalidMessage` when a known event has the wrong shape.
    """
    if not isinstance(data, dict):
        raise InvalidMessage("an event must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("an event needs a string 'type'", param="type")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return UnknownEvent(data)
    return decoder(data)
