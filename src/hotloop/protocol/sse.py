"""Server-sent events: an incremental decoder, an encoder, and a typed Responses decoder.

The decoder follows the WHATWG HTML "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation),
with one deliberate difference: invalid UTF-8 is a :class:`~hotloop.errors.DecodeError`
instead of being replaced with U+FFFD, because every stream hotloop reads carries JSON and a
mangled payload is better reported than silently altered.

It is sans-I/O: feed it the bytes you read, in chunks of any size, and it returns the
messages those bytes completed. The result never depends on where the chunks were split,
even inside a ``\\r\\n`` pair or a multi-byte UTF-8 character.

Lines are split on bytes, before decoding: CR and LF never occur inside a multi-byte UTF-8
sequence, so a byte-level split is exact, and a character cut by a chunk boundary simply
waits in the partial line until the rest arrives.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from hotloop.errors import DecodeError, ProtocolError
from hotloop.wire import codec
from hotloop.wire.events import Event

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ResponsesSSEDecoder",
    "SSEDecoder",
    "SSEMessage",
    "encode_sse",
]

#: Default bound on what one message may buffer (64 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# The spec's three line terminators; the alternation order makes CRLF one terminator.
_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_DONE = "[DONE]"


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event of a text/event-stream.

    ``event`` is the ``event:`` field or ``"message"`` when absent; ``data`` the ``data:``
    lines joined with ``"\\n"``; ``id`` the last event id seen on the stream so far (the
    spec's ``lastEventId``, ``None`` if the stream never sent one); ``retry`` the ``retry:``
    value sent within this message, if any.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn a text/event-stream byte stream into :class:`SSEMessage` records.

    Call :meth:`feed` with each chunk read from the body and :meth:`close` at end of
    stream. ``max_message_bytes`` bounds what one message may buffer (its partial line, its
    ``data`` and its ``event`` name); a peer that exceeds it gets a
    :class:`~hotloop.errors.DecodeError` rather than our memory.
    """

    __slots__ = (
        "_buffered",
        "_closed",
        "_data",
        "_event",
        "_head",
        "_last_id",
        "_max",
        "_partial",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        # Bytes of a line whose terminator has not arrived yet.
        self._partial = bytearray()
        # The first bytes of the stream, held until we know whether they start with a BOM.
        self._head: bytearray | None = bytearray()
        # A chunk ended with CR: a LF at the start of the next chunk belongs to it.
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._buffered = 0
        self._last_id: str | None = None
        self._retry: int | None = None
        self._closed = False

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` the stream sent, what a reconnect passes as ``Last-Event-ID``."""
        return self._last_id

    def feed(self, data: bytes | bytearray | memoryview) -> list[SSEMessage]:
        """Consume one chunk and return the messages it completed, in order."""
        if self._closed:
            raise ProtocolError("SSEDecoder.feed() called after close()")
        chunk = bytes(data)
        if self._head is not None:
            chunk = self._strip_bom(chunk)
            if not chunk:
                return []
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        messages: list[SSEMessage] = []
        pos = 0
        for match in _EOL.finditer(chunk):
            if self._partial:
                self._partial += chunk[pos : match.start()]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = chunk[pos : match.start()]
            self._process_line(line, messages)
            pos = match.end()
        if pos < len(chunk):
            self._partial += chunk[pos:]
            if self._buffered + len(self._partial) > self._max:
                raise DecodeError(f"SSE message exceeds max_message_bytes={self._max}")
        elif chunk.endswith(b"\r"):
            self._skip_lf = True
        return messages

    def close(self) -> list[SSEMessage]:
        """End the stream. An event without its terminating blank line is discarded.

        The spec says so: a message is only dispatched by a blank line. A partial line is
        still checked for valid UTF-8, since the stream as a whole must decode.
        """
        if self._closed:
            return []
        self._closed = True
        tail = bytes(self._head or b"") + bytes(self._partial)
        try:
            tail.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"SSE stream is not valid UTF-8: {exc}") from exc
        self._partial.clear()
        self._data.clear()
        return []

    def _strip_bom(self, chunk: bytes) -> bytes:
        # One BOM, and only at the very start of the stream, is removed ("Parsing an event
        # stream" in the WHATWG spec); a second one is part of the first field name.
        head = self._head
        assert head is not None
        head += chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            return b""
        self._head = None
        whole = bytes(head)
        return whole[len(_BOM) :] if whole.startswith(_BOM) else whole

    def _process_line(self, raw: bytes, messages: list[SSEMessage]) -> None:
        if not raw:
            self._dispatch(messages)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"SSE stream is not valid UTF-8: {exc}") from exc
        if line[0] == ":":
            return  # A comment, typically a keep-alive.
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._buffered += len(raw)
        elif name == "event":
            self._event = value
            self._buffered += len(raw)
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field name is ignored, as the spec requires.
        if self._buffered > self._max:
            raise DecodeError(f"SSE message exceeds max_message_bytes={self._max}")

    def _dispatch(self, messages: list[SSEMessage]) -> None:
        # A block without data lines dispatches nothing but still resets the buffers.
        if self._data:
            messages.append(
                SSEMessage(
                    event=self._event or "message",
                    data="\n".join(self._data),
                    id=self._last_id,
                    retry=self._retry,
                )
            )
            self._data = []
        self._event = ""
        self._retry = None
        self._buffered = 0


def encode_sse(data: bytes, event: str | None = None) -> bytes:
    """Frame one payload as ``event: X\\ndata: <data>\\n\\n``.

    ``data`` is normally one line of JSON from :mod:`hotloop.wire.codec`; should it contain
    line breaks, each line becomes its own ``data:`` line so the decoder rebuilds it.
    Responses streams send an ``event:`` line, Chat Completions streams do not.
    """
    if b"\n" in data or b"\r" in data:
        body = b"".join(b"data: " + line + b"\n" for line in _EOL.split(data))
    else:
        body = b"data: " + data + b"\n"
    if event is None:
        return body + b"\n"
    if "\n" in event or "\r" in event:
        raise ValueError(f"an SSE event name cannot contain a line break: {event!r}")
    return b"event: " + event.encode("utf-8") + b"\n" + body + b"\n"


class ResponsesSSEDecoder:
    """Bytes of a Responses SSE body in, typed :mod:`hotloop.wire.events` out.

    The ``event:`` line is ignored and the JSON ``type`` decides, as the SDK does.
    A ``data: [DONE]`` message ends the stream (optional for Responses, but tolerated) and
    sets :attr:`done`; anything but comments after it is a
    :class:`~hotloop.errors.ProtocolError`. Messages of the event types in ``skip`` (but
    those that end a response) are dropped unread when their JSON starts with the type.
    """

    __slots__ = ("_drop", "_sse", "done")

    def __init__(
        self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *, skip: Collection[str] = ()
    ) -> None:
        self._sse = SSEDecoder(max_message_bytes)
        self._drop = tuple(p.decode() for p in codec.skipped_prefixes(frozenset(skip)))
        #: True once ``data: [DONE]`` was received.
        self.done = False

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` the stream sent."""
        return self._sse.last_event_id

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume one chunk and return the events it completed."""
        return self._decode(self._sse.feed(data))

    def close(self) -> list[Event]:
        """End the stream; an unterminated trailing event is discarded."""
        return self._decode(self._sse.close())

    def _decode(self, messages: list[SSEMessage]) -> list[Event]:
        events: list[Event] = []
        for message in messages:
            if self.done:
                raise ProtocolError("SSE event received after data: [DONE]")
            if message.data == _DONE:
                self.done = True
                continue
            if self._drop and message.data.startswith(self._drop):
                continue
            events.append(codec.decode_event(message.data))
        return events
