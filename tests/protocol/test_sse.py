"""The SSE decoder and encoder: WHATWG framing, any chunking, garbage, and the Responses layer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import DecodeError, HotloopError, InvalidMessage, ProtocolError
from hotloop.protocol.sse import ResponsesSSEDecoder, SSEDecoder, SSEMessage, encode_sse
from hotloop.wire import codec
from hotloop.wire import events as ev
from hotloop.wire.items import FunctionCall
from hotloop.wire.responses import ResponseObject


def decode_all(data: bytes, chunks: Sequence[int] = ()) -> list[SSEMessage]:
    """Decode ``data`` split at the given offsets, then close."""
    decoder = SSEDecoder()
    out: list[SSEMessage] = []
    start = 0
    for cut in [*sorted(chunks), len(data)]:
        out.extend(decoder.feed(data[start:cut]))
        start = cut
    out.extend(decoder.close())
    return out


# -- the WHATWG algorithm ----------------------------------------------------------------


def test_one_event() -> None:
    assert decode_all(b"event: ping\ndata: {}\n\n") == [SSEMessage("ping", "{}")]


def test_default_event_name_is_message() -> None:
    assert decode_all(b"data: x\n\n") == [SSEMessage("message", "x")]


def test_multi_line_data_joins_with_lf() -> None:
    assert decode_all(b"data: a\ndata:b\ndata\n\n")[0].data == "a\nb\n"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    data = b"event: e" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + eol
    assert decode_all(data) == [SSEMessage("e", "1"), SSEMessage("message", "2")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    data = b": keep-alive\nfoo: bar\ndata: x\n:another\n\n"
    assert decode_all(data) == [SSEMessage("message", "x")]


def test_only_one_leading_space_is_removed() -> None:
    assert decode_all(b"data:  two\n\n")[0].data == " two"


def test_leading_bom_is_stripped_once() -> None:
    assert decode_all(b"\xef\xbb\xbfdata: x\n\n") == [SSEMessage("message", "x")]
    # A second BOM is part of the first field name, which then is not "data".
    assert decode_all(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_bom_split_across_chunks() -> None:
    data = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(1, 4):
        assert decode_all(data, [cut]) == [SSEMessage("message", "x")]


def test_event_without_data_is_not_dispatched_and_resets_the_name() -> None:
    assert decode_all(b"event: a\n\ndata: x\n\n") == [SSEMessage("message", "x")]


def test_id_persists_and_retry_is_per_message() -> None:
    messages = decode_all(b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert messages == [
        SSEMessage("message", "a", "7", 1500),
        SSEMessage("message", "b", "7", None),
        SSEMessage("message", "c", "", None),
    ]


def test_id_with_nul_and_non_numeric_retry_are_ignored() -> None:
    messages = decode_all(b"id: a\x00b\nretry: 1.5\ndata: x\n\n")
    assert messages == [SSEMessage("message", "x", None, None)]


def test_unterminated_event_is_discarded_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: partial\n") == [SSEMessage("message", "complete")]
    assert decoder.close() == []
    assert decoder.last_event_id is None


def test_feed_after_close_is_an_error() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: x\n\n")


@pytest.mark.parametrize("data", [b"data: \xff\n\n", b"data: \xc3\n\n", b"\xed\xa0\x80\n"])
def test_invalid_utf8_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_all(data)


def test_invalid_utf8_in_a_trailing_partial_line_is_caught_at_close() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: \xe2\x82")
    with pytest.raises(DecodeError):
        decoder.close()


def test_max_message_bytes_bounds_a_long_line() -> None:
    decoder = SSEDecoder(max_message_bytes=64)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(DecodeError, match="max_message_bytes"):
        decoder.feed(b"x" * 20)


def test_max_message_bytes_bounds_many_data_lines() -> None:
    decoder = SSEDecoder(max_message_bytes=64)
    with pytest.raises(DecodeError, match="max_message_bytes"):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_max_message_bytes_is_per_message() -> None:
    decoder = SSEDecoder(max_message_bytes=64)
    messages = decoder.feed(b"data: 0123456789012345678901234567890123456789\n\n" * 10)
    assert len(messages) == 10


# -- encoding ----------------------------------------------------------------------------


def test_encode_with_and_without_event() -> None:
    assert encode_sse(b'{"a":1}', "response.created") == (
        b'event: response.created\ndata: {"a":1}\n\n'
    )
    assert encode_sse(b"[DONE]") == b"data: [DONE]\n\n"


def test_encode_splits_multi_line_data() -> None:
    framed = encode_sse(b"a\nb\r\nc", "e")
    assert framed == b"event: e\ndata: a\ndata: b\ndata: c\n\n"
    assert decode_all(framed) == [SSEMessage("e", "a\nb\nc")]


def test_encode_rejects_event_names_with_line_breaks() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_sse(b"{}", "a\nb")


# -- any chunking gives the same result --------------------------------------------------

# Text with multi-byte UTF-8 (2, 3 and 4 bytes) but no line breaks, which end a field.
field_text = st.text(
    st.sampled_from(["a", "z", " ", ":", "{", '"', "é", "€", "你", "😀", "\t"]), max_size=10
)
eols = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A well-formed stream: events, comments, ids and retries with mixed line endings."""
    out: list[str] = ["\ufeff"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 5))):
        lines: list[str] = []
        if draw(st.booleans()):
            lines.append("event: " + draw(field_text).replace(":", ""))
        for _ in range(draw(st.integers(0, 3))):
            lines.append("data:" + draw(field_text))
        if draw(st.booleans()):
            lines.append(":" + draw(field_text))
        if draw(st.booleans()):
            lines.append("id: " + draw(field_text))
        if draw(st.booleans()):
            lines.append(f"retry: {draw(st.integers(0, 10_000))}")
        for line in lines:
            out.append(line + draw(eols))
        out.append(draw(eols))
    if draw(st.booleans()):
        out.append("data: trailing, never dispatched")
    return "".join(out).encode("utf-8")


@settings(max_examples=200)
@given(st.data())
def test_any_chunking_gives_the_same_messages(data: st.DataObject) -> None:
    stream = data.draw(streams())
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) + 1))
    assert decode_all(stream, cuts) == decode_all(stream)


@settings(max_examples=100)
@given(st.data())
def test_byte_at_a_time_gives_the_same_messages(data: st.DataObject) -> None:
    stream = data.draw(streams())
    assert decode_all(stream, range(len(stream))) == decode_all(stream)


# -- the typed Responses layer -----------------------------------------------------------


def canonical_events() -> list[ev.Event]:
    """The canonical function-call turn, with non-ASCII text in the arguments."""
    response = ResponseObject(id="resp_1", created_at=1, model="m", status="in_progress")
    call = FunctionCall(call_id="call_1", name="get_weather", arguments="", id="fc_1")
    done = FunctionCall(
        call_id="call_1", name="get_weather", arguments='{"city":"Zürich 😀"}', id="fc_1"
    )
    final = response.with_status("completed", output=(done,))
    return [
        ev.ResponseCreated(response=response, sequence_number=0),
        ev.ResponseInProgress(response=response, sequence_number=1),
        ev.OutputItemAdded(output_index=0, item=call, sequence_number=2),
        ev.FunctionCallArgumentsDelta(
            item_id="fc_1", output_index=0, delta='{"city":"Zür', sequence_number=3
        ),
        ev.FunctionCallArgumentsDelta(
            item_id="fc_1", output_index=0, delta='ich 😀"}', sequence_number=4
        ),
        ev.FunctionCallArgumentsDone(
            item_id="fc_1", output_index=0, arguments=done.arguments, sequence_number=5
        ),
        ev.OutputItemDone(output_index=0, item=done, sequence_number=6),
        ev.ResponseCompleted(response=final, sequence_number=7),
        ev.UnknownEvent({"type": "response.future", "sequence_number": 8}),
        ev.OutputTextDelta(
            item_id="msg_1", output_index=1, content_index=0, delta="a\nb", sequence_number=9
        ),
    ]


def encoded(events: list[ev.Event], eol: bytes = b"\n") -> bytes:
    body = b"".join(encode_sse(codec.encode_event(e), e.type) for e in events)
    return body.replace(b"\n", eol)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_responses_decoder_yields_typed_events(eol: bytes) -> None:
    decoder = ResponsesSSEDecoder()
    events = decoder.feed(encoded(canonical_events(), eol)) + decoder.close()
    assert events == canonical_events()
    assert not decoder.done


@settings(max_examples=150)
@given(st.data())
def test_responses_decoder_is_chunking_invariant(data: st.DataObject) -> None:
    eol = data.draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    stream = encoded(canonical_events(), eol) + b"data: [DONE]" + eol + eol
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    decoder = ResponsesSSEDecoder()
    events: list[ev.Event] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        events.extend(decoder.feed(stream[start:cut]))
        start = cut
    events.extend(decoder.close())
    assert events == canonical_events()
    assert decoder.done


def test_responses_decoder_drops_skipped_types_unread_but_never_the_end() -> None:
    events = canonical_events()
    kinds = {e.type for e in events}
    skip = {"response.output_text.delta", "response.completed", "error"}
    assert skip - {"error"} <= kinds
    decoder = ResponsesSSEDecoder(skip=skip)
    # A skipped message is not even decoded: garbage behind its type is never looked at.
    garbage = b'data: {"type":"response.output_text.delta" not json\n\n'
    kept = decoder.feed(garbage + encoded(events)) + decoder.close()
    assert kept == [e for e in events if e.type != "response.output_text.delta"]
    # The end of a response is never skipped.
    assert "response.completed" in {e.type for e in kept}


def test_done_ends_the_stream() -> None:
    decoder = ResponsesSSEDecoder()
    assert decoder.feed(b"data: [DONE]\n\n: comment\n\n") == []
    assert decoder.done
    with pytest.raises(ProtocolError, match=r"\[DONE\]"):
        decoder.feed(b"data: {}\n\n")


def test_event_line_is_ignored_and_json_type_decides() -> None:
    # The SDK picks the event class from the JSON type, not the event: line.
    decoder = ResponsesSSEDecoder()
    data = b'event: bogus\ndata: {"type":"error","code":"c","message":"m"}\n\n'
    (event,) = decoder.feed(data)
    assert isinstance(event, ev.ErrorEvent)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"data: {not json\n\n", DecodeError),
        (b"data: [1]\n\n", DecodeError),
        (b'data: {"type":"response.output_text.delta"}\n\n', InvalidMessage),
    ],
)
def test_responses_decoder_rejects_bad_payloads(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ResponsesSSEDecoder().feed(data)


# -- garbage -----------------------------------------------------------------------------

sse_pieces = st.sampled_from(
    [b"data: ", b"data:", b"event: x", b"id: 1", b"retry: 5", b":", b"\n", b"\r", b"\r\n",
     b"[DONE]", b'{"type":"response.created"}', b'{"type":"x"}', b"\xef\xbb\xbf", b"\xff",
     b"\xc3", b"\xa9", b"{", b"}"]
)  # fmt: skip
garbage = st.binary(max_size=200) | st.lists(sse_pieces | st.binary(max_size=4)).map(b"".join)


@settings(max_examples=200)
@given(garbage, st.lists(st.integers(0, 200), max_size=6))
def test_garbage_bytes_raise_only_our_errors(data: bytes, cuts: list[int]) -> None:
    for decoder in (SSEDecoder(max_message_bytes=128), ResponsesSSEDecoder(max_message_bytes=128)):
        start = 0
        try:
            for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
                decoder.feed(data[start:cut])
                start = cut
            decoder.close()
        except HotloopError:
            pass
