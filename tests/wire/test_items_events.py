"""Item and event records: the shapes clients send, and garbage never crashes."""

from __future__ import annotations

import contextlib
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import HotloopError, InvalidMessage
from hotloop.wire import events as ev
from hotloop.wire.events import event_from_dict, event_to_dict
from hotloop.wire.items import (
    FunctionCall,
    FunctionCallOutput,
    ItemReference,
    Message,
    Reasoning,
    UnknownItem,
    item_from_dict,
    items_from_input,
)
from hotloop.wire.responses import ResponseObject, Usage

# -- items -------------------------------------------------------------------------------


def test_typeless_message_is_a_message() -> None:
    # The Agents SDK sends {"role", "content"} without a type.
    item = item_from_dict({"role": "user", "content": "hi"})
    assert item == Message(role="user", content="hi")


def test_string_input_is_one_user_message() -> None:
    assert items_from_input("hello") == (Message(role="user", content="hello"),)
    assert items_from_input(None) == ()


def test_client_item_shapes_decode_to_their_records() -> None:
    raw = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
        {"type": "item_reference", "id": "msg_1"},
        {"type": "web_search_call", "id": "ws_1"},
    ]
    items = items_from_input(raw)
    kinds = [type(item) for item in items]
    expected = [Message, FunctionCall, FunctionCallOutput, Reasoning, ItemReference, UnknownItem]
    assert kinds == expected
    assert isinstance(items[0], Message) and items[0].text == "a"
    assert [item.to_dict() for item in items] == raw


def test_extra_fields_survive() -> None:
    raw = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "", "x": [1]}
    item = item_from_dict(raw)
    assert item.to_dict() == raw


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"role": "robot", "content": "x"}, "input.role"),
        ({"role": "user", "content": 3}, "input.content"),
        ({"role": "user", "content": [{"text": "x"}]}, "input.content[0].type"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input.call_id"),
        ({"type": "function_call_output", "call_id": "c"}, "input.output"),
        ({"type": "reasoning", "summary": "no"}, "input.summary"),
        ({"type": 7}, "input.type"),
    ],
)
def test_malformed_items_name_the_field(raw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        item_from_dict(raw)
    assert info.value.param == param


def test_input_must_be_a_string_or_list() -> None:
    with pytest.raises(InvalidMessage):
        items_from_input({"role": "user"})


# -- responses ---------------------------------------------------------------------------


def test_response_object_carries_the_fields_the_sdk_requires() -> None:
    # The SDK types require id, object, created_at, model, output, parallel_tool_calls,
    # tool_choice and tools.
    wire = ResponseObject(id="resp_1", created_at=1, model="m", status="completed").to_dict()
    for key in ("id", "object", "created_at", "model", "output", "tools", "tool_choice"):
        assert key in wire
    assert wire["parallel_tool_calls"] is True
    assert wire["usage"] is None


def test_usage_totals() -> None:
    usage = Usage(input_tokens=10, cached_tokens=4, output_tokens=5, reasoning_tokens=1)
    assert usage.to_dict()["total_tokens"] == 15
    assert Usage.from_dict(usage.to_dict()) == usage


@pytest.mark.parametrize(
    "raw",
    [
        {"input_tokens": "ten"},
        {"input_tokens": [1]},
        {"input_tokens_details": "x"},
        {"output_tokens_details": {"reasoning_tokens": {}}},
        {"output_tokens": 1e400},
    ],
)
def test_malformed_usage_is_invalid_message(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        Usage.from_dict(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "r", "created_at": "soon"},
        {"id": "r", "error": "boom"},
        {"id": "r", "incomplete_details": ["x"]},
        {"id": "r", "previous_response_id": 5},
        {"id": 1},
        {"id": "r", "output": {}},
    ],
)
def test_malformed_response_is_invalid_message(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        ResponseObject.from_dict(raw)


# -- events ------------------------------------------------------------------------------


def test_unknown_event_types_pass_through() -> None:
    raw = {"type": "response.reasoning_summary_text.delta", "delta": "x", "sequence_number": 4}
    event = event_from_dict(raw)
    assert isinstance(event, ev.UnknownEvent)
    assert event.sequence_number == 4
    assert event_to_dict(event) == raw


def test_error_shapes_are_told_apart() -> None:
    # SSE puts code/message at the top level, WebSocket nests them in "error".
    sse = event_from_dict({"type": "error", "code": "c", "message": "m", "param": None})
    assert isinstance(sse, ev.ErrorEvent) and sse.code == "c"
    ws = event_from_dict(
        {"type": "error", "status": 400, "error": {"type": "t", "code": "c", "message": "m"}}
    )
    assert isinstance(ws, ev.WebSocketError)
    assert (ws.status, ws.code, ws.message) == (400, "c", "m")


def test_default_lane_events_omit_stream_id() -> None:
    event = ev.OutputTextDelta(item_id="m", output_index=0, content_index=0, delta="x")
    assert "stream_id" not in event_to_dict(event)
    laned = ev.OutputTextDelta(
        item_id="m", output_index=0, content_index=0, delta="x", stream_id="a"
    )
    assert event_to_dict(laned)["stream_id"] == "a"


def test_terminal_event_types() -> None:
    assert {
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    } == ev.TERMINAL_EVENT_TYPES


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "response.output_text.delta", "item_id": "m", "output_index": 0},
        {"type": "response.output_item.added", "output_index": True, "item": {}},
        {"type": "response.completed"},
        {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
         "content_index": 0, "delta": "", "logprobs": 5},
        {"type": "response.steer.pending", "steer": {}, "required_input": 3},
        {"type": "response.steer.failed", "steer": {}, "error": "no"},
        {"type": 3},
        [],
    ],
)  # fmt: skip
def test_malformed_events_are_invalid_message(raw: Any) -> None:
    with pytest.raises(InvalidMessage):
        event_from_dict(raw)


# -- garbage never escapes as anything but our errors ------------------------------------

text = st.text(max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
EVENT_TYPES = sorted({cls.type for cls in typing.get_args(ev.Event) if cls is not ev.UnknownEvent})
FIELDS = [
    "item",
    "response",
    "output",
    "usage",
    "content",
    "part",
    "role",
    "output_index",
    "content_index",
    "item_id",
    "delta",
    "arguments",
    "logprobs",
    "error",
    "status",
    "steer",
    "required_input",
    "summary",
    "call_id",
    "name",
    "sequence_number",
    "created_at",
    "input_tokens_details",
]


def shaped(types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with a real ``type`` and plausible field names holding arbitrary JSON."""
    return st.builds(
        lambda kind, fields: {"type": kind, **fields},
        st.sampled_from(types),
        st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    )


def nested(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Put a shaped dict where a decoder looks deeper (an item, a response, a part)."""
    return st.builds(
        lambda outer, inner, key: {**outer, key: inner},
        base,
        shaped(["message", "function_call", "reasoning", "output_text"]) | json_values,
        st.sampled_from(["item", "response", "part", "usage", "output"]),
    )


ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "item_reference"]


def _only_our_errors(fn: Any, data: Any) -> None:
    with contextlib.suppress(HotloopError):
        fn(data)


@settings(max_examples=200)
@given(json_values | shaped(ITEM_TYPES) | nested(shaped(ITEM_TYPES)))
def test_item_from_dict_garbage_raises_our_errors(data: Any) -> None:
    _only_our_errors(item_from_dict, data)


@settings(max_examples=300)
@given(json_values | shaped(EVENT_TYPES) | nested(shaped(EVENT_TYPES)))
def test_event_from_dict_garbage_raises_our_errors(data: Any) -> None:
    _only_our_errors(event_from_dict, data)


@settings(max_examples=200)
@given(json_values | st.dictionaries(st.sampled_from([*FIELDS, "id", "model"]), json_values))
def test_response_and_usage_garbage_raise_our_errors(data: Any) -> None:
    _only_our_errors(ResponseObject.from_dict, data)
    _only_our_errors(Usage.from_dict, data)
