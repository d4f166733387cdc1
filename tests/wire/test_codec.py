"""Codec round trips: decode(encode(x)) == x for items, responses and every event type."""

from __future__ import annotations

import contextlib
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import DecodeError, InvalidMessage
from hotloop.wire import codec
from hotloop.wire import events as ev
from hotloop.wire.items import (
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    Item,
    ItemReference,
    Message,
    Reasoning,
    UnknownItem,
    item_from_dict,
)
from hotloop.wire.responses import ECHOED_SETTINGS, ResponseObject, Usage

# -- strategies --------------------------------------------------------------------------

# orjson refuses lone surrogates, which JSON text cannot carry anyway.
text = st.text(st.characters(codec="utf-8"), max_size=12)
ids = st.from_regex(r"[a-z]{2,4}_[A-Za-z0-9]{1,8}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def extras(known: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Fields a record does not model; they must survive a round trip."""
    keys = st.from_regex(r"x_[a-z]{1,6}", fullmatch=True).filter(lambda k: k not in known)
    return st.dictionaries(keys, json_values, max_size=2)


parts = st.builds(
    ContentPart,
    type=st.sampled_from(["input_text", "output_text", "input_image", "refusal"]),
    text=st.none() | text,
    extra=extras(ContentPart._KNOWN),
)
part_tuples = st.lists(parts, max_size=3).map(tuple)
statuses = st.none() | st.sampled_from(["in_progress", "completed", "incomplete"])

items: st.SearchStrategy[Item] = st.one_of(
    st.builds(
        Message,
        role=st.sampled_from(["user", "assistant", "system", "developer"]),
        content=text | part_tuples,
        id=st.none() | ids,
        status=statuses,
        extra=extras(Message._KNOWN),
    ),
    st.builds(
        FunctionCall,
        call_id=ids,
        name=text,
        arguments=text,
        id=st.none() | ids,
        status=statuses,
        extra=extras(FunctionCall._KNOWN),
    ),
    st.builds(
        FunctionCallOutput,
        call_id=ids,
        output=text | part_tuples,
        id=st.none() | ids,
        status=statuses,
        extra=extras(FunctionCallOutput._KNOWN),
    ),
    st.builds(
        Reasoning,
        id=st.none() | ids,
        summary=part_tuples,
        encrypted_content=st.none() | text,
        extra=extras(Reasoning._KNOWN),
    ),
    st.builds(ItemReference, id=ids, extra=extras(ItemReference._KNOWN)),
    st.builds(
        UnknownItem,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["web_search_call", "computer_call", "custom_tool_call"])},
            optional={"id": ids, "x_payload": json_values},
        ),
    ),
)

counts = st.integers(0, 10**6)
usages = st.builds(
    Usage, input_tokens=counts, cached_tokens=counts, output_tokens=counts, reasoning_tokens=counts
)
json_objects = st.dictionaries(text, json_values, max_size=2)
responses = st.builds(
    ResponseObject,
    id=ids,
    created_at=st.integers(0, 2**40),
    model=text,
    status=st.sampled_from(["in_progress", "completed", "incomplete", "failed"]),
    output=st.lists(items, max_size=3).map(tuple),
    usage=st.none() | usages,
    error=st.none() | json_objects,
    incomplete_details=st.none() | st.just({"reason": "max_output_tokens"}),
    previous_response_id=st.none() | ids,
    settings=st.dictionaries(st.sampled_from(ECHOED_SETTINGS), json_values, max_size=3),
    extra=extras(ResponseObject._KNOWN),
)

common = {"sequence_number": st.integers(0, 10**6), "stream_id": st.none() | ids}
index = st.integers(0, 64)
logprobs = st.lists(json_objects, max_size=2).map(tuple)
steer = st.fixed_dictionaries({"id": ids, "previous_response_id": ids})


def _response_event(cls: type[Any]) -> st.SearchStrategy[ev.Event]:
    return st.builds(cls, response=responses, **common)


def _part_event(cls: type[Any]) -> st.SearchStrategy[ev.Event]:
    return st.builds(
        cls, item_id=ids, output_index=index, content_index=index, part=parts, **common
    )


#: One strategy per event record; a test checks that every member of ``Event`` is here.
EVENT_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    ev.ResponseCreated: _response_event(ev.ResponseCreated),
    ev.ResponseQueued: _response_event(ev.ResponseQueued),
    ev.ResponseInProgress: _response_event(ev.ResponseInProgress),
    ev.ResponseCompleted: _response_event(ev.ResponseCompleted),
    ev.ResponseIncomplete: _response_event(ev.ResponseIncomplete),
    ev.ResponseFailed: _response_event(ev.ResponseFailed),
    ev.OutputItemAdded: st.builds(ev.OutputItemAdded, output_index=index, item=items, **common),
    ev.OutputItemDone: st.builds(ev.OutputItemDone, output_index=index, item=items, **common),
    ev.ContentPartAdded: _part_event(ev.ContentPartAdded),
    ev.ContentPartDone: _part_event(ev.ContentPartDone),
    ev.OutputTextDelta: st.builds(
        ev.OutputTextDelta,
        item_id=ids,
        output_index=index,
        content_index=index,
        delta=text,
        logprobs=logprobs,
        **common,
    ),
    ev.OutputTextDone: st.builds(
        ev.OutputTextDone,
        item_id=ids,
        output_index=index,
        content_index=index,
        text=text,
        logprobs=logprobs,
        **common,
    ),
    ev.FunctionCallArgumentsDelta: st.builds(
        ev.FunctionCallArgumentsDelta, item_id=ids, output_index=index, delta=text, **common
    ),
    ev.FunctionCallArgumentsDone: st.builds(
        ev.FunctionCallArgumentsDone,
        item_id=ids,
        output_index=index,
        arguments=text,
        name=st.none() | text,
        **common,
    ),
    ev.ErrorEvent: st.builds(
        ev.ErrorEvent, message=text, code=st.none() | ids, param=st.none() | text, **common
    ),
    ev.WebSocketError: st.builds(
        ev.WebSocketError,
        status=st.none() | st.integers(400, 599),
        error=st.fixed_dictionaries({"type": ids, "message": text}, optional={"code": ids}),
        **common,
    ),
    ev.SteerAccepted: st.builds(ev.SteerAccepted, steer=steer, **common),
    ev.SteerPending: st.builds(
        ev.SteerPending,
        steer=steer,
        reason=st.none() | text,
        required_input=st.lists(json_objects, max_size=2).map(tuple),
        **common,
    ),
    ev.SteerFailed: st.builds(ev.SteerFailed, steer=steer, error=json_objects, **common),
    ev.UnknownEvent: st.builds(
        ev.UnknownEvent,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["response.refusal.delta", "response.reasoning.delta"])},
            optional={"sequence_number": counts, "delta": text, "x_extra": json_values},
        ),
    ),
}


# -- tests -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(items)
def test_item_round_trip(item: Item) -> None:
    decoded = item_from_dict(codec.loads(codec.dumps(item.to_dict())))
    assert decoded == item
    # ``extra`` is excluded from equality; compare the wire form to prove it survived.
    assert decoded.to_dict() == item.to_dict()
    assert type(decoded) is type(item)


@settings(max_examples=150)
@given(responses)
def test_response_round_trip(response: ResponseObject) -> None:
    wire = response.to_dict()
    decoded = ResponseObject.from_dict(codec.decode_object(codec.dumps(wire)))
    assert decoded == response
    assert decoded.extra == response.extra
    assert decoded.to_dict() == wire
    for key, value in response.settings.items():
        assert decoded.settings[key] == value


def test_every_event_type_has_a_strategy() -> None:
    assert set(EVENT_STRATEGIES) == set(typing.get_args(ev.Event))


@pytest.mark.parametrize("cls", list(EVENT_STRATEGIES), ids=lambda cls: cls.__name__)
def test_event_round_trip(cls: type) -> None:
    @settings(max_examples=40, database=None)
    @given(EVENT_STRATEGIES[cls])
    def round_trip(event: ev.Event) -> None:
        data = codec.encode_event(event)
        decoded = codec.decode_event(data)
        assert decoded == event
        assert type(decoded) is cls
        # Equality skips ``extra``; identical bytes prove nothing was lost or added.
        assert codec.encode_event(decoded) == data

    round_trip()


def test_unknown_event_keeps_every_field() -> None:
    raw = b'{"type":"response.future.thing","sequence_number":3,"payload":{"a":[1,2]}}'
    event = codec.decode_event(raw)
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == "response.future.thing"
    assert event.sequence_number == 3
    assert codec.loads(codec.encode_event(event)) == codec.loads(raw)


def test_encode_event_stream_id_overrides_and_default_lane_omits_it() -> None:
    event = ev.FunctionCallArgumentsDelta(item_id="fc_1", output_index=0, delta="{")
    assert "stream_id" not in codec.loads(codec.encode_event(event))
    assert codec.loads(codec.encode_event(event, stream_id="lane-a"))["stream_id"] == "lane-a"


@pytest.mark.parametrize("raw", [b"", b"{", b"nul", b"\xff\xfe", b'{"a":}', "{'a': 1}"])
def test_loads_rejects_invalid_json(raw: bytes | str) -> None:
    with pytest.raises(DecodeError):
        codec.loads(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null"])
def test_decode_object_requires_an_object(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="expected a JSON object"):
        codec.decode_object(raw)


def test_dumps_rejects_values_json_cannot_carry() -> None:
    with pytest.raises(InvalidMessage):
        codec.dumps({"a": object()})
    with pytest.raises(InvalidMessage):
        codec.dumps("\ud800")  # a lone surrogate


def test_encode_event_rejects_unencodable_text_with_our_error() -> None:
    event = ev.OutputTextDelta(item_id="m", output_index=0, content_index=0, delta="\ud800")
    with pytest.raises(InvalidMessage):
        codec.encode_event(event)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_garbage_bytes_raise_decode_or_invalid(raw: bytes) -> None:
    with contextlib.suppress(DecodeError, InvalidMessage):
        codec.decode_event(raw)


# -- the delta fast path (msgspec straight into the record) -------------------------------

_DELTAS = [ev.OutputTextDelta, ev.FunctionCallArgumentsDelta]


@pytest.mark.parametrize("cls", _DELTAS, ids=lambda cls: cls.__name__)
def test_delta_fast_path_agrees_with_the_ordinary_path(cls: type) -> None:
    @settings(max_examples=60, database=None)
    @given(EVENT_STRATEGIES[cls], st.none() | text)
    def agree(event: ev.Event, obfuscation: str | None) -> None:
        wire = codec.loads(codec.encode_event(event))
        if obfuscation is not None:
            wire["obfuscation"] = obfuscation  # an extra field, as the OpenAI service adds
        data = codec.dumps(wire)
        assert data.startswith(b'{"type":')  # the shape the fast path takes
        fast = codec.decode_event(data)
        ordinary = ev.event_from_dict(codec.loads(data))
        assert type(fast) is type(ordinary) is cls
        assert fast == ordinary == event

    agree()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (
            b'{"type":"response.function_call_arguments.delta","item_id":"fc","output_index":"0",'
            b'"delta":"{"}',
            "output_index",
        ),
        (
            b'{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{"}',
            "item_id",
        ),
        (
            b'{"type":"response.output_text.delta","item_id":"m","output_index":0,'
            b'"content_index":true,"delta":"x"}',
            "content_index",
        ),
        (
            b'{"type":"response.output_text.delta","item_id":"m","output_index":0,'
            b'"content_index":0,"delta":"x","logprobs":"no"}',
            "logprobs",
        ),
    ],
)
def test_malformed_deltas_get_the_precise_error(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        codec.decode_event(raw)
    assert caught.value.param == param


def test_delta_with_invalid_json_after_the_prefix_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        codec.decode_event(b'{"type":"response.output_text.delta","delta":"\\ud800"}')


def test_delta_not_starting_with_its_type_still_decodes() -> None:
    raw = (
        b'{"item_id":"fc","type":"response.function_call_arguments.delta",'
        b'"output_index":2,"delta":"a"}'
    )
    event = codec.decode_event(raw)
    assert event == ev.FunctionCallArgumentsDelta(item_id="fc", output_index=2, delta="a")
