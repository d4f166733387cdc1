"""The one place that turns bytes into Python values and back.

hotloop uses orjson: it is the fastest well-kept JSON library for CPython and returns
``bytes`` ready for the socket. Every other module works on dicts and typed records, so the
JSON library can be swapped here alone (an import-linter contract keeps it that way).
"""

from __future__ import annotations

from typing import Any

import orjson

from hotloop.errors import DecodeError, InvalidMessage
from hotloop.wire.events import Event, event_from_dict, event_to_dict
from hotloop.wire.items import JSONDict

__all__ = ["decode_event", "decode_object", "dumps", "encode_event", "loads"]


def dumps(value: Any) -> bytes:
    """Encode a JSON-compatible value as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise InvalidMessage(f"value is not JSON-serializable: {exc}") from exc


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON text; raise :class:`~hotloop.errors.DecodeError` on anything invalid."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc


def decode_object(data: bytes | bytearray | memoryview | str) -> JSONDict:
    """Decode JSON text that must hold one object (a request body, a frame, an event)."""
    value = loads(data)
    if not isinstance(value, dict):
        raise DecodeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def encode_event(event: Event, stream_id: str | None = None) -> bytes:
    """Encode one event; ``stream_id`` (a WebSocket lane) overrides the event's own."""
    data = event_to_dict(event)
    if stream_id is not None:
        data["stream_id"] = stream_id
    # Through dumps() so an unencodable value (a lone surrogate) is our error, not TypeError.
    return dumps(data)


def decode_event(data: bytes | bytearray | memoryview | str) -> Event:
    """Decode one event from JSON text into its typed record."""
    return event_from_dict(decode_object(data))
