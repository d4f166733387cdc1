"""ResponseStream: complete items from deltas, calls reported the moment they are ready."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import HotloopError, ProtocolError
from hotloop.protocol.assembler import (
    FunctionCallReady,
    ItemDone,
    Report,
    ResponseDone,
    ResponseStream,
    StreamError,
    StreamOrderError,
    TextDelta,
)
from hotloop.wire import events as ev
from hotloop.wire.events import event_from_dict
from hotloop.wire.items import ContentPart, FunctionCall, Item, Message
from hotloop.wire.responses import ResponseObject, Usage

USAGE = Usage(input_tokens=10, cached_tokens=2, output_tokens=7, reasoning_tokens=1)


def turn(
    text: Sequence[str] = (),
    calls: Sequence[Sequence[str]] = (),
    *,
    rid: str = "resp_1",
    full_output: bool = True,
    args_done: bool = True,
    terminal: type[Any] = ev.ResponseCompleted,
) -> list[ev.Event]:
    """The canonical event sequence of a turn: a message (text fragments), then calls.

    Each call is given as its argument fragments; call *i* is named ``tool_i``.
    """
    response = ResponseObject(id=rid, created_at=1, model="m", status="in_progress")
    out: list[ev.Event] = [
        ev.ResponseCreated(response=response),
        ev.ResponseInProgress(response=response),
    ]
    items: list[Item] = []
    if text:
        mid, joined = "msg_0", "".join(text)
        out.append(
            ev.OutputItemAdded(output_index=0, item=Message(role="assistant", content=(), id=mid))
        )
        part = ContentPart("output_text", "")
        out.append(ev.ContentPartAdded(item_id=mid, output_index=0, content_index=0, part=part))
        for fragment in text:
            out.append(
                ev.OutputTextDelta(item_id=mid, output_index=0, content_index=0, delta=fragment)
            )
        final_part = ContentPart("output_text", joined)
        out.append(ev.OutputTextDone(item_id=mid, output_index=0, content_index=0, text=joined))
        out.append(
            ev.ContentPartDone(item_id=mid, output_index=0, content_index=0, part=final_part)
        )
        message = Message(role="assistant", content=(final_part,), id=mid, status="completed")
        out.append(ev.OutputItemDone(output_index=0, item=message))
        items.append(message)
    for fragments in calls:
        index = len(items)
        fid, call_id, name = f"fc_{index}", f"call_{index}", f"tool_{index}"
        added = FunctionCall(call_id=call_id, name=name, arguments="", id=fid)
        out.append(ev.OutputItemAdded(output_index=index, item=added))
        for fragment in fragments:
            out.append(
                ev.FunctionCallArgumentsDelta(item_id=fid, output_index=index, delta=fragment)
            )
        arguments = "".join(fragments)
        if args_done:
            out.append(
                ev.FunctionCallArgumentsDone(item_id=fid, output_index=index, arguments=arguments)
            )
        done = replace(added, arguments=arguments, status="completed")
        out.append(ev.OutputItemDone(output_index=index, item=done))
        items.append(done)
    status = {ev.ResponseCompleted: "completed", ev.ResponseIncomplete: "incomplete"}.get(
        terminal, "failed"
    )
    final = response.with_status(status, output=tuple(items) if full_output else (), usage=USAGE)
    out.append(terminal(response=final))
    numbered: list[Any] = out  # every event here has a sequence_number field
    return [replace(event, sequence_number=i) for i, event in enumerate(numbered)]


def feed(events: Sequence[ev.Event]) -> tuple[ResponseStream, list[tuple[int, Report]]]:
    """Feed every event; return the stream and each report with the event index it came at."""
    stream = ResponseStream()
    reports = [(i, report) for i, event in enumerate(events) for report in stream.receive(event)]
    return stream, reports


# -- assembling --------------------------------------------------------------------------


def test_text_turn() -> None:
    events = turn(text=["Hel", "lo"])
    stream, reports = feed(events)
    assert [r for _, r in reports if isinstance(r, TextDelta)] == [
        TextDelta(0, "Hel"),
        TextDelta(0, "lo"),
    ]
    assert stream.done and stream.status == "completed"
    assert stream.text == "Hello"
    assert stream.response_id == "resp_1"
    assert stream.usage == USAGE
    assert stream.events_received() == len(events)
    assert isinstance(reports[-1][1], ResponseDone)
    assert stream.final_response is not None
    assert stream.final_response.output == stream.output


def test_text_is_available_mid_stream() -> None:
    events = turn(text=["a", "b", "c"])
    stream = ResponseStream()
    for event in events[:6]:  # up to the second delta
        stream.receive(event)
    assert stream.text == "ab"
    assert not stream.done
    assert stream.final_response is None and stream.usage is None


def test_call_is_reported_at_arguments_done_before_the_terminal_event() -> None:
    events = turn(calls=[['{"city":', '"Paris"}']])
    _, reports = feed(events)
    ready = [(i, r) for i, r in reports if isinstance(r, FunctionCallReady)]
    assert len(ready) == 1
    at, report = ready[0]
    assert isinstance(events[at], ev.FunctionCallArgumentsDone)
    assert report.call.arguments == '{"city":"Paris"}'
    assert report.call.call_id == "call_0" and report.call.name == "tool_0"
    assert report.call.status == "completed"
    assert at < len(events) - 1


def test_call_is_reported_at_item_done_without_arguments_done() -> None:
    events = turn(calls=[["{}"]], args_done=False)
    _, reports = feed(events)
    kinds = [(type(events[i]).__name__, type(r).__name__) for i, r in reports]
    assert kinds == [
        ("OutputItemDone", "FunctionCallReady"),
        ("OutputItemDone", "ItemDone"),
        ("ResponseCompleted", "ResponseDone"),
    ]


def test_parallel_calls_each_reported_once_as_soon_as_ready() -> None:
    events = turn(text=["ok"], calls=[["{}"], ['{"a"', ":1}"], ["[]"]])
    stream, reports = feed(events)
    ready = [(i, r) for i, r in reports if isinstance(r, FunctionCallReady)]
    assert [r.output_index for _, r in ready] == [1, 2, 3]
    for at, report in ready:
        # Reported before the next item even starts: the caller can run it right away.
        next_added = [
            i
            for i, e in enumerate(events)
            if isinstance(e, ev.OutputItemAdded) and e.output_index == report.output_index + 1
        ]
        assert all(at < i for i in next_added)
    done = [r for _, r in reports if isinstance(r, ItemDone)]
    assert [r.output_index for r in done] == [0, 1, 2, 3]
    assert [type(item) for item in stream.output] == [Message, *[FunctionCall] * 3]


def test_calls_only_in_the_terminal_output_are_still_reported_once() -> None:
    # A server may send no item events at all, only the full output in response.completed.
    full = turn(calls=[["{}"], ["{}"]])
    terminal = full[-1]
    assert isinstance(terminal, ev.ResponseCompleted)
    stream, reports = feed([full[0], terminal])
    kinds = [type(r) for _, r in reports]
    assert kinds == [FunctionCallReady, ItemDone, FunctionCallReady, ItemDone, ResponseDone]
    assert len(stream.output) == 2


def test_empty_terminal_output_is_filled_from_streamed_items() -> None:
    # Non-streaming consumers need the full output in the terminal response.
    events = turn(text=["hi"], calls=[["{}"]], full_output=False)
    stream, reports = feed(events)
    final = stream.final_response
    assert final is not None and len(final.output) == 2
    assert final.output == stream.output
    assert reports[-1][1] == ResponseDone(final)


@pytest.mark.parametrize("terminal", [ev.ResponseIncomplete, ev.ResponseFailed])
def test_incomplete_and_failed_are_terminal(terminal: type[Any]) -> None:
    stream, reports = feed(turn(text=["x"], terminal=terminal))
    assert stream.done
    assert stream.status in ("incomplete", "failed")
    assert isinstance(reports[-1][1], ResponseDone)


def test_sse_error_event_is_reported() -> None:
    events = turn(text=["x"])[:3]
    stream, reports = feed([*events, ev.ErrorEvent(code="server_error", message="boom")])
    assert reports[-1][1] == StreamError("server_error", "boom", None, None)
    assert stream.done and stream.status == "error"
    assert stream.error == StreamError("server_error", "boom", None, None)
    assert stream.final_response is None


def test_websocket_error_event_is_reported() -> None:
    error = ev.WebSocketError(
        status=400,
        error={"type": "invalid_request_error", "code": "c", "message": "m", "param": "p"},
    )
    stream = ResponseStream()
    assert stream.receive(error) == (StreamError("c", "m", "p", 400),)
    assert stream.done


def test_unknown_and_steering_events_pass_through() -> None:
    events = turn(text=["x"])
    unknown = ev.UnknownEvent({"type": "response.reasoning_summary_text.delta", "delta": "?"})
    steer = ev.SteerPending(steer={"id": "s", "previous_response_id": "resp_1"})
    stream, _ = feed([*events[:3], unknown, *events[3:], steer])
    assert stream.text == "x"
    assert stream.events_received() == len(events) + 2


# -- protocol violations -----------------------------------------------------------------


def _text_added() -> list[ev.Event]:
    return turn(text=["x"])[:3]


@pytest.mark.parametrize(
    ("events", "match"),
    [
        (
            [ev.OutputTextDelta(item_id="m", output_index=0, content_index=0, delta="x")],
            "before its output_item.added",
        ),
        (
            [ev.FunctionCallArgumentsDelta(item_id="f", output_index=2, delta="{")],
            "before its output_item.added",
        ),
        (
            [
                *_text_added(),
                ev.OutputTextDelta(item_id="msg_0", output_index=0, content_index=0, delta="x"),
            ],
            "before its content_part.added",
        ),
        (
            [*_text_added(), ev.FunctionCallArgumentsDelta(item_id="m", output_index=0, delta="")],
            "not a function_call",
        ),
        ([*_text_added(), _text_added()[2]], "added twice"),
        (
            [
                *turn(text=["x"])[:2],
                ev.ResponseCompleted(
                    response=ResponseObject(id="resp_2", created_at=1, model="m", status="x")
                ),
            ],
            "response.id changed",
        ),
        ([*turn(text=["x"]), turn(text=["x"])[-1]], "after the response ended"),
        ([ev.ErrorEvent(message="m"), ev.ErrorEvent(message="m")], "after the response ended"),
    ],
)
def test_order_violations_raise(events: list[ev.Event], match: str) -> None:
    stream = ResponseStream()
    with pytest.raises(StreamOrderError, match=match):
        for event in events:
            stream.receive(event)


def test_item_done_twice_raises() -> None:
    events = turn(calls=[["{}"]])
    item_done = next(e for e in events if isinstance(e, ev.OutputItemDone))
    with pytest.raises(StreamOrderError, match="done twice"):
        feed([*events[:-1], item_done])


def test_stream_order_error_is_a_protocol_error() -> None:
    assert issubclass(StreamOrderError, ProtocolError)


# -- properties --------------------------------------------------------------------------

fragments = st.lists(st.text(max_size=5), max_size=4)


@settings(max_examples=200)
@given(
    text=fragments,
    calls=st.lists(fragments, max_size=4),
    args_done=st.booleans(),
    full_output=st.booleans(),
)
def test_every_call_reported_exactly_once_before_the_end(
    text: list[str], calls: list[list[str]], args_done: bool, full_output: bool
) -> None:
    events = turn(text=text, calls=calls, args_done=args_done, full_output=full_output)
    stream, reports = feed(events)
    ready = [(i, r) for i, r in reports if isinstance(r, FunctionCallReady)]
    assert [r.call.arguments for _, r in ready] == ["".join(f) for f in calls]
    done_kind = ev.FunctionCallArgumentsDone if args_done else ev.OutputItemDone
    for at, report in ready:
        # The moment its arguments are complete: at that very event, never later.
        assert isinstance(events[at], done_kind)
        assert getattr(events[at], "output_index", None) == report.output_index
    assert stream.text == "".join(text)
    final = stream.final_response
    assert final is not None
    calls_out = [item.arguments for item in final.output if isinstance(item, FunctionCall)]
    assert calls_out == ["".join(f) for f in calls]


# -- garbage -----------------------------------------------------------------------------

EVENT_TYPES = [
    "response.created",
    "response.completed",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "error",
    "response.unknown",
]
small = st.integers(0, 2)
item_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "reasoning"])},
    optional={
        "role": st.just("assistant"),
        "content": st.just([]),
        "call_id": st.just("c"),
        "name": st.just("f"),
        "arguments": st.sampled_from(["", "{}"]),
    },
)
response_dicts = st.fixed_dictionaries(
    {"id": st.sampled_from(["resp_1", "resp_2"])},
    optional={"status": st.just("completed"), "output": st.lists(item_dicts, max_size=2)},
)
event_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={
        "output_index": small,
        "content_index": small,
        "item_id": st.just("i"),
        "delta": st.just("d"),
        "text": st.just("t"),
        "arguments": st.just("{}"),
        "item": item_dicts,
        "part": st.just({"type": "output_text", "text": ""}),
        "response": response_dicts,
        "message": st.just("m"),
    },
)


@settings(max_examples=300)
@given(st.lists(event_dicts, max_size=12))
def test_random_event_sequences_raise_only_protocol_errors(raws: list[dict[str, Any]]) -> None:
    stream = ResponseStream()
    with contextlib.suppress(HotloopError):
        for raw in raws:
            stream.receive(event_from_dict(raw))
    # Whatever happened, the accessors still work.
    assert isinstance(stream.text, str)
    assert isinstance(stream.output, tuple)
