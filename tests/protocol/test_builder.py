"""The response builder is the stream assembler's inverse: whatever a backend writes to it, the
assembler (on the far side of the wire codec) gets back the same items, for every item kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import ProtocolError
from hotloop.protocol.assembler import FunctionCallReady, ItemDone, ResponseDone, ResponseStream
from hotloop.protocol.builder import ResponseBuilder
from hotloop.wire import codec
from hotloop.wire import events as ev
from hotloop.wire.items import (
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    Item,
    Message,
    Reasoning,
    UnknownItem,
)
from hotloop.wire.responses import ResponseObject, Usage

fragments = st.lists(st.text(max_size=5), max_size=4)


@dataclass(frozen=True)
class Streamed:
    """An item the model streams: its kind, its parts (kind, fragments), call fields."""

    kind: str
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    name: str = ""
    call_id: str | None = None
    encrypted: str | None = None


@dataclass(frozen=True)
class Whole:
    item: Item


def parts(kinds: list[str]) -> st.SearchStrategy[tuple[tuple[str, tuple[str, ...]], ...]]:
    return st.lists(
        st.tuples(st.sampled_from(kinds), fragments.map(tuple)), min_size=1, max_size=3
    ).map(tuple)


messages = parts(["output_text", "refusal"]).map(lambda p: Streamed("message", p))
calls = st.builds(
    lambda args, name, call_id: Streamed(
        "function_call", (("arguments", tuple(args)),), name, call_id
    ),
    fragments,
    st.sampled_from(["read_file", "run_tests"]),
    st.none() | st.just("call_upstream_7"),
)
reasonings = st.builds(
    lambda p, enc: Streamed("reasoning", p, encrypted=enc),
    parts(["summary_text", "reasoning_text"]),
    st.none() | st.just("gAAAA-opaque"),
)
wholes = st.sampled_from(
    [
        Whole(Reasoning(id="rs_up", summary=(), encrypted_content="enc", extra={"status": None})),
        Whole(FunctionCall(call_id="call_9", name="f", arguments="{}", id="fc_9")),
        Whole(Message(role="assistant", content=(ContentPart("output_text", "hi"),), id="m1")),
        Whole(UnknownItem({"type": "web_search_call", "id": "ws_1", "status": "completed"})),
        Whole(FunctionCallOutput(call_id="call_9", output="ok")),
    ]
)
turns = st.lists(messages | calls | reasonings | wholes, max_size=5)


def write(out: ResponseBuilder, spec: Streamed | Whole) -> list[ev.Event]:
    if isinstance(spec, Whole):
        return list(out.add_item(spec.item))
    events: list[ev.Event] = []
    if spec.kind == "function_call":
        events += out.open_call(spec.name, call_id=spec.call_id)
        for fragment in spec.parts[0][1]:
            events += out.delta(fragment)
        return events + list(out.close_item())
    events += out.open_message() if spec.kind == "message" else out.open_reasoning()
    for kind, chunks in spec.parts:
        events += out.open_part(kind)
        for fragment in chunks:
            events += out.delta(fragment)
    return events + list(out.close_item(encrypted_content=spec.encrypted))


def new_builder() -> ResponseBuilder:
    return ResponseBuilder(
        ResponseObject(id="resp_abc", created_at=1, model="m", status="in_progress")
    )


def over_the_wire(event: ev.Event) -> ev.Event:
    return codec.decode_event(codec.encode_event(event, "lane-1"))


@settings(max_examples=300)
@given(turns, st.booleans())
def test_assembler_gets_back_every_item_the_builder_wrote(
    specs: list[Streamed | Whole], incomplete: bool
) -> None:
    out = new_builder()
    events = list(out.start())
    for spec in specs:
        events += write(out, spec)
    out.set_usage(Usage(input_tokens=10, output_tokens=3))
    if incomplete:
        out.set_incomplete("max_output_tokens")
    events += out.finish()

    assert [e.sequence_number for e in events] == list(range(len(events)))
    stream = ResponseStream()
    reports = [report for event in events for report in stream.receive(over_the_wire(event))]

    assert stream.done and stream.status == ("incomplete" if incomplete else "completed")
    built = [item.to_dict() for item in out.output]
    assert [item.to_dict() for item in stream.output] == built
    final = stream.final_response
    assert final is not None and [item.to_dict() for item in final.output] == built
    assert final.usage == Usage(input_tokens=10, output_tokens=3)
    # Each call is reported ready exactly once, with its complete arguments and its own id.
    ready = [r.call for r in reports if isinstance(r, FunctionCallReady)]
    assert [(c.call_id, c.name, c.arguments) for c in ready] == [
        (item.call_id, item.name, item.arguments)
        for item in out.output
        if isinstance(item, FunctionCall)
    ]
    assert sum(isinstance(r, ItemDone) for r in reports) == len(specs)
    assert isinstance(reports[-1], ResponseDone)
    # The text a client shows is the output_text of the messages, never reasoning or refusals.
    assert stream.text == "".join(
        part.text or ""
        for item in out.output
        if isinstance(item, Message) and not isinstance(item.content, str)
        for part in item.content
        if part.type == "output_text"
    )


def test_streamed_items_have_the_shapes_clients_expect() -> None:
    out = new_builder()
    out.start()
    out.open_message()
    out.open_part("output_text")
    out.delta("Sure")
    out.open_part("refusal")
    out.delta("not that")
    out.close_item()
    out.open_reasoning()
    out.open_part("summary_text")
    out.delta("thinking")
    out.close_item(encrypted_content="opaque")
    out.open_call("f")
    out.delta('{"a":1}')
    out.close_item()
    message, reasoning, call = (item.to_dict() for item in out.output)
    assert message == {
        "type": "message",
        "id": "msg_abc_0",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "Sure", "annotations": [], "logprobs": []},
            {"type": "refusal", "refusal": "not that"},
        ],
    }
    assert reasoning == {
        "type": "reasoning",
        "id": "rs_abc_1",
        "summary": [{"type": "summary_text", "text": "thinking"}],
        "encrypted_content": "opaque",
    }
    assert call == {
        "type": "function_call",
        "id": "fc_abc_2",
        "call_id": "call_abc_2",
        "name": "f",
        "arguments": '{"a":1}',
        "status": "completed",
    }


def test_failure_keeps_the_closed_items_and_drops_the_open_one() -> None:
    out = new_builder()
    out.start()
    out.open_text()
    out.delta("done")
    out.close_item()
    out.open_call("f")
    out.delta("{")
    (failed,) = out.fail("upstream_error", "The upstream closed the stream.")
    assert isinstance(failed, ev.ResponseFailed)
    assert failed.response.status == "failed"
    assert [item.type for item in failed.response.output] == ["message"]
    assert failed.response.error == {
        "code": "upstream_error",
        "message": "The upstream closed the stream.",
    }


def test_finish_closes_an_item_left_open() -> None:
    out = new_builder()
    out.start()
    out.open_text()
    out.delta("cut")
    *closing, terminal = out.finish({"hotloop": {"x": 1}})
    assert [type(e).__name__ for e in closing] == [
        "OutputTextDone",
        "ContentPartDone",
        "OutputItemDone",
    ]
    assert isinstance(terminal, ev.ResponseCompleted)
    assert terminal.response.extra == {"hotloop": {"x": 1}}
    annotated = out.annotate(terminal, {"late": True})
    assert isinstance(annotated, ev.ResponseCompleted)
    assert annotated.response.extra == {"hotloop": {"x": 1}, "late": True}
    assert out.response is annotated.response


@pytest.mark.parametrize(
    "misuse",
    [
        lambda out: out.delta("x"),
        lambda out: out.close_item(),
        lambda out: out.open_part("output_text"),
        lambda out: (out.open_text(), out.open_text()),
        lambda out: (out.open_message(), out.open_part("summary_text")),
        lambda out: (out.open_message(), out.delta("no part yet")),
        lambda out: out.start(),
        lambda out: (out.finish(), out.finish()),
        lambda out: (out.fail("c", "m"), out.open_text()),
        lambda out: out.annotate(ev.ErrorEvent(message="x"), {}),
    ],
)
def test_misuse_is_a_protocol_error(misuse: Any) -> None:
    out = new_builder()
    out.start()
    with pytest.raises(ProtocolError):
        misuse(out)


def test_items_need_a_started_response() -> None:
    with pytest.raises(ProtocolError, match="start"):
        new_builder().open_text()
