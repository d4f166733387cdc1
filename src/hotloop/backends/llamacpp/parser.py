"""The model's raw streamed text into Responses items: text, reasoning, tool calls (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from hotloop.backends.llamacpp.template import CallMarkers
from hotloop.errors import HotloopError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.wire import codec
from hotloop.wire.events import Event

# -- the model's raw text into Responses items -------------------------------------------------


class RawTurnParser:
    """Turns the model's raw streamed text into Responses items in a :class:`ResponseBuilder`.

    Text outside the markers becomes an assistant message (leading and trailing whitespace
    dropped, as chat parsers do), reasoning between the think markers a reasoning item, and
    each ``call_open {"name": ..., "arguments": {...}} call_close`` a function call: opened
    as soon as its name is read, its arguments streamed as the model writes them (exactly
    as written), and closed the moment ``call_close`` arrives. Text that could be the start
    of a marker (or the call's closing brace) is held back until the next text says. A call
    whose JSON does not start as a call (another key first) is read whole at its closing
    marker, and stays text when it does not read as a call. With ``parse_calls`` off
    (``tool_choice: none``) the markers are plain text.
    """

    __slots__ = ("_buffer", "_markers", "_out", "_parse_calls", "_pending", "_state")

    def __init__(
        self, out: ResponseBuilder, markers: CallMarkers, *, parse_calls: bool = True
    ) -> None:
        self._out = out
        self._markers = markers
        self._parse_calls = parse_calls
        self._buffer = ""  # received, not yet written
        # Whitespace held back at the end of the open text; in a call's arguments, whether
        # they have started.
        self._pending = ""
        self._state = "idle"  # idle | text | think | call (name not read yet) | arguments

    def feed(self, text: str) -> list[Event]:
        """More of the model's text; the events it completes."""
        events: list[Event] = []
        self._buffer += text
        while self._buffer:
            if not self._step(events):
                break
        return events

    def finish(self) -> list[Event]:
        """The model stopped: write what is held back and close the open item."""
        events: list[Event] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "call":
            # Cut off inside a call (a token limit): what it wrote stays visible as text.
            self._state = "idle"
            self._text(self._markers.call_open + rest, events)
        elif self._state == "arguments":
            # Cut off inside the arguments: the call ends with what was written.
            if rest:
                events.extend(self._out.delta(rest))
            events.extend(self._out.close_item())
            self._state = "idle"
        elif self._state == "think":
            self._reasoning(rest, events)
        elif rest:
            self._text(rest, events)
        self._close(events)
        return events

    def _step(self, events: list[Event]) -> bool:
        markers = self._markers
        buffer = self._buffer
        if self._state == "call":
            head = _CALL_HEAD.match(buffer)
            name = _json_string(head.group(1)) if head is not None else None
            if head is not None and name is not None:
                self._buffer = buffer[head.end() :]
                self._state = "arguments"
                self._pending = ""
                events.extend(self._out.open_call(name))
                return True
            end = buffer.find(markers.call_close)
            if end < 0:
                return False
            self._buffer = buffer[end + len(markers.call_close) :]
            self._state = "idle"
            self._call(buffer[:end], events)
            return True
        if self._state == "arguments":
            if not self._pending:  # nothing of the arguments yet: whitespace is not theirs
                buffer = self._buffer = buffer.lstrip()
                if not buffer:
                    return False
                self._pending = "started"
            end = buffer.find(markers.call_close)
            if end >= 0:
                body = buffer[:end].rstrip()
                # The arguments end before the brace that closes the call's object.
                arguments = body[:-1] if body.endswith("}") else body
                if arguments:
                    events.extend(self._out.delta(arguments))
                events.extend(self._out.close_item())
                self._buffer = buffer[end + len(markers.call_close) :]
                self._state = "idle"
                return True
            brace = buffer.rfind("}")
            held = 0
            if brace >= 0 and markers.call_close.startswith(buffer[brace + 1 :].lstrip()):
                held = len(buffer) - brace  # maybe the call's closing brace, then the marker
            if len(buffer) > held:
                events.extend(self._out.delta(buffer[: len(buffer) - held]))
                self._buffer = buffer[len(buffer) - held :]
            return False
        if self._state == "think":
            assert markers.think_close is not None
            end = buffer.find(markers.think_close)
            if end < 0:
                keep = _partial_suffix(buffer, (markers.think_close,))
                self._reasoning(buffer[: len(buffer) - keep], events)
                self._buffer = buffer[len(buffer) - keep :]
                return False
            self._reasoning(buffer[:end], events)
            self._buffer = buffer[end + len(markers.think_close) :]
            self._close(events)
            return True
        openers = [markers.call_open] if self._parse_calls else []
        if markers.think_open is not None:
            openers.append(markers.think_open)
        found = [(buffer.find(m), m) for m in openers]
        hits = [(i, m) for i, m in found if i >= 0]
        if not hits:
            keep = _partial_suffix(buffer, openers)
            self._text(buffer[: len(buffer) - keep], events)
            self._buffer = buffer[len(buffer) - keep :]
            return False
        start, marker = min(hits)
        self._text(buffer[:start], events)
        self._buffer = buffer[start + len(marker) :]
        self._close(events)
        if marker == markers.call_open:
            self._state = "call"
        else:
            self._state = "think"
            events.extend(self._out.open_reasoning())
            events.extend(self._out.open_part("reasoning_text"))
        return True

    def _text(self, text: str, events: list[Event]) -> None:
        if not text:
            return
        if self._state != "text":
            text = text.lstrip()
            if not text:
                return
            self._state = "text"
            self._pending = ""
            events.extend(self._out.open_text())
        body = text.rstrip()
        if body:
            events.extend(self._out.delta(self._pending + body))
            self._pending = text[len(body) :]
        else:
            self._pending += text

    def _reasoning(self, text: str, events: list[Event]) -> None:
        if text:
            events.extend(self._out.delta(text))

    def _close(self, events: list[Event]) -> None:
        if self._state in ("text", "think"):
            events.extend(self._out.close_item())
        self._state = "idle"
        self._pending = ""

    def _call(self, raw: str, events: list[Event]) -> None:
        try:
            data = codec.decode_object(raw.strip())
        except HotloopError:
            data = {}
        name, arguments = data.get("name"), data.get("arguments", {})
        if not isinstance(name, str) or not isinstance(arguments, dict | str):
            self._text(self._markers.call_open + raw + self._markers.call_close, events)
            return
        if isinstance(arguments, dict):
            arguments = codec.dumps(arguments).decode()
        events.extend(self._out.open_call(name))
        if arguments:
            events.extend(self._out.delta(arguments))
        events.extend(self._out.close_item())


#: The start of a call's JSON up to its arguments: ``{"name": "...", "arguments": ``.
_CALL_HEAD: Final = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def _json_string(escaped: str) -> str | None:
    try:
        value = codec.loads(f'"{escaped}"')
    except HotloopError:
        return None
    return value if isinstance(value, str) else None


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest
