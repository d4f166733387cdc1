"""Chat Completions <-> Responses translation, checked against the SDK's chunk rules."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.errors import HotloopError, InvalidMessage, ProtocolError
from hotloop.protocol.assembler import FunctionCallReady, ResponseStream
from hotloop.protocol.chat import chat_request_to_responses, responses_to_chat_request
from hotloop.protocol.chat_stream import (
    ChatChunkEncoder,
    ChatStreamDecoder,
    chat_completion_from_response,
)
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
)
from hotloop.wire.responses import ResponseObject, Usage

USAGE = Usage(input_tokens=10, cached_tokens=4, output_tokens=6, reasoning_tokens=2)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def turn(
    text: Sequence[str] = (),
    calls: Sequence[Sequence[str]] = (),
    *,
    status: str = "completed",
    reason: str | None = None,
) -> list[ev.Event]:
    """A canonical turn: a message streamed as ``text``, then calls from fragments."""
    response = ResponseObject(id="resp_1", created_at=1, model="m", status="in_progress")
    out: list[ev.Event] = [ev.ResponseCreated(response=response)]
    items: list[Item] = []
    if text:
        joined = "".join(text)
        out.append(ev.OutputItemAdded(output_index=0, item=Message(role="assistant", content=())))
        blank = ContentPart("output_text", "")
        out.append(ev.ContentPartAdded(item_id="m", output_index=0, content_index=0, part=blank))
        out += [
            ev.OutputTextDelta(item_id="m", output_index=0, content_index=0, delta=fragment)
            for fragment in text
        ]
        out.append(ev.OutputTextDone(item_id="m", output_index=0, content_index=0, text=joined))
        message = Message(role="assistant", content=(ContentPart("output_text", joined),))
        out.append(ev.OutputItemDone(output_index=0, item=message))
        items.append(message)
    for fragments in calls:
        index = len(items)
        call = FunctionCall(call_id=f"call_{index}", name=f"tool_{index}", arguments="")
        out.append(ev.OutputItemAdded(output_index=index, item=call))
        out += [
            ev.FunctionCallArgumentsDelta(item_id="f", output_index=index, delta=fragment)
            for fragment in fragments
        ]
        arguments = "".join(fragments)
        out.append(
            ev.FunctionCallArgumentsDone(item_id="f", output_index=index, arguments=arguments)
        )
        done = replace(call, arguments=arguments, status="completed")
        out.append(ev.OutputItemDone(output_index=index, item=done))
        items.append(done)
    final = response.with_status(
        status,
        output=tuple(items),
        usage=USAGE,
        incomplete_details={"reason": reason} if reason else None,
    )
    if status == "completed":
        out.append(ev.ResponseCompleted(response=final))
    elif status == "incomplete":
        out.append(ev.ResponseIncomplete(response=final))
    else:
        out.append(ev.ResponseFailed(response=final))
    return out


def encode(events: Sequence[ev.Event], include_usage: bool = False) -> list[dict[str, Any]]:
    encoder = ChatChunkEncoder("chatcmpl-1", "m", 1700000000, include_usage=include_usage)
    return [chunk for event in events for chunk in encoder.feed(event)]


def deltas(chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk.get("choices")]


def check_chunk_rules(chunks: Sequence[dict[str, Any]], include_usage: bool) -> None:
    """Assert, over a whole chunk stream, the chunk rules the SDK accumulator depends on."""
    choice_chunks = [c for c in chunks if c["choices"]]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-1"  # one id for every chunk
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["system_fingerprint"] == "fp_hotloop"
        assert ("usage" in chunk) == include_usage
    roles = [i for i, d in enumerate(deltas(choice_chunks)) if "role" in d]
    assert roles == [0]  # the role appears once, in the very first chunk
    seen: dict[int, dict[str, str]] = {}
    for delta in deltas(choice_chunks):
        for tool in delta.get("tool_calls", []):
            index = tool["index"]  # mandatory in every tool delta
            if index not in seen:
                assert index == len(seen)  # parallel calls use 0, 1, ...
                assert tool["type"] == "function" and tool["function"]["arguments"] == ""
                seen[index] = {"id": tool["id"], "name": tool["function"]["name"], "args": ""}
            else:
                assert set(tool) == {"index", "function"}  # no repeated id/name
                assert set(tool["function"]) == {"arguments"}
                seen[index]["args"] += tool["function"]["arguments"]
    for call in seen.values():
        if call["args"]:
            codec.loads(call["args"])  # joined fragments are valid JSON
    last = choice_chunks[-1]["choices"][0]
    assert last["delta"] == {}  # the finish chunk has an empty delta
    assert last["finish_reason"] == ("tool_calls" if seen else last["finish_reason"])
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    if include_usage:  # a last usage chunk with choices: [], usage null before it
        assert chunks[-1]["choices"] == []
        usage = chunks[-1]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert chunks[-1] is choice_chunks[-1]


# -- requests ----------------------------------------------------------------------------


def agents_sdk_body() -> dict[str, Any]:
    """A tool round as the Agents SDK sends it."""
    return {
        "model": "m",
        "messages": [
            {"content": "Use tools.", "role": "system"},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "rain"}],
            },
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "unknown_field": "ignored",
    }


def test_chat_request_to_responses() -> None:
    request = chat_request_to_responses(agents_sdk_body())
    assert request.model == "m"
    assert request.instructions == "Use tools."
    assert request.input == (
        Message(role="user", content="Weather in Paris?"),
        FunctionCall(call_id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
        FunctionCall(call_id="call_2", name="get_weather", arguments='{"city":"Rome"}'),
        FunctionCallOutput(call_id="call_1", output="sunny"),
        FunctionCallOutput(call_id="call_2", output="rain"),
    )
    assert request.tools == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather of a city.",
            "parameters": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            "strict": True,
        }
    ]
    assert request.tool_choice == {"type": "function", "name": "get_weather"}
    assert request.max_output_tokens == 100
    assert request.stream and request.include_usage
    assert request.extra == {"temperature": 0.2, "top_p": 0.9}
    body = request.to_responses_body()
    assert body["instructions"] == "Use tools."
    assert body["input"][0] == {"type": "message", "role": "user", "content": "Weather in Paris?"}
    assert body["temperature"] == 0.2


def test_system_and_developer_messages_join_into_instructions() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "A"},
            {"role": "developer", "content": [{"type": "text", "text": "B"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "max_completion_tokens": 5,
        "max_tokens": 9,
        "tool_choice": "required",
        "reasoning_effort": "low",
    }
    request = chat_request_to_responses(body)
    assert request.instructions == "A\n\nB"
    assert request.input == (Message(role="user", content=(ContentPart("input_text", "hi"),)),)
    assert request.max_output_tokens == 5  # max_completion_tokens wins
    assert request.tool_choice == "required"
    assert request.extra == {"reasoning": {"effort": "low"}}
    assert not request.stream and not request.include_usage


def test_user_image_parts_become_input_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}
    request = chat_request_to_responses(
        {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    )
    (message,) = request.input
    assert isinstance(message, Message) and not isinstance(message.content, str)
    assert message.content[0].to_dict() == {
        "type": "input_image",
        "image_url": "data:x",
        "detail": "low",
    }


def _with(messages: list[Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages, **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (_with([]), "messages"),
        (_with(["hi"]), "messages[0]"),
        (_with([{"role": "robot", "content": "x"}]), "messages[0].role"),
        (_with([{"role": "user", "content": 5}]), "messages[0].content"),
        (_with([{"role": "user", "content": [{"type": "audio"}]}]), "messages[0].content[0]"),
        (
            _with([{"role": "user", "content": "a"}] * 3 + [{"role": "tool", "content": "x"}]),
            "messages[3].tool_call_id",
        ),
        (
            _with([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            _with([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]),
            "messages[0].tool_calls[0].id",
        ),
        (_with([{"role": "assistant", "tool_calls": {}}]), "messages[0].tool_calls"),
        (_with([{"role": "user", "content": "x"}], tools=[{"type": "x"}]), "tools[0].type"),
        (_with([{"role": "user", "content": "x"}], tool_choice="always"), "tool_choice"),
        (_with([{"role": "user", "content": "x"}], max_tokens=True), "max_tokens"),
        (_with([{"role": "user", "content": "x"}], stream="yes"), "stream"),
        (_with([{"role": "user", "content": "x"}], n=2), "n"),
        (
            _with([{"role": "user", "content": "x"}], stream_options={"include_usage": 1}),
            "stream_options.include_usage",
        ),
    ],
)
def test_malformed_requests_name_the_param(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidMessage) as info:
        chat_request_to_responses(body)
    assert info.value.param == param


def test_responses_to_chat_merges_consecutive_calls() -> None:
    items: list[Item] = [
        Message(role="user", content="q"),
        Reasoning(id="rs_1"),
        Message(role="assistant", content=(ContentPart("output_text", "Checking."),)),
        FunctionCall(call_id="c1", name="f", arguments="{}"),
        FunctionCall(call_id="c2", name="g", arguments="[]"),
        FunctionCallOutput(call_id="c1", output="1"),
        FunctionCallOutput(call_id="c2", output=(ContentPart("input_text", "2"),)),
        FunctionCall(call_id="c3", name="f", arguments="{}"),
    ]
    body = responses_to_chat_request(
        "m",
        items,
        "Be brief.",
        [{"type": "function", "name": "f", "parameters": {}, "strict": False}],
        {"type": "function", "name": "f"},
        parallel_tool_calls=True,
        max_output_tokens=50,
        stream=True,
        include_usage=True,
        extra={"temperature": 0, "reasoning": {"effort": "high"}},
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {}, "strict": False}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["max_completion_tokens"] == 50
    assert body["stream_options"] == {"include_usage": True}
    assert body["reasoning_effort"] == "high" and body["temperature"] == 0


def test_chat_request_round_trips_through_responses() -> None:
    original = agents_sdk_body()
    request = chat_request_to_responses(original)
    body = responses_to_chat_request(
        request.model,
        request.input,
        request.instructions,
        request.tools,
        request.tool_choice,
        max_output_tokens=request.max_output_tokens,
        stream=request.stream,
        include_usage=request.include_usage,
        extra=request.extra,
    )
    original["messages"][-1]["content"] = "rain"  # text parts are joined
    assert body["messages"] == original["messages"]
    assert body["tools"] == original["tools"]
    assert body["tool_choice"] == original["tool_choice"]
    assert chat_request_to_responses(body) == request


@pytest.mark.parametrize(
    "item", [ItemReference(id="msg_1"), Message(role="user", content=(ContentPart("input_file"),))]
)
def test_items_without_chat_equivalent_are_rejected(item: Item) -> None:
    with pytest.raises(InvalidMessage):
        responses_to_chat_request("m", [item])


# -- streaming: Responses -> chat --------------------------------------------------------


def test_tool_turn_chunks_exactly() -> None:
    chunks = encode(turn(calls=[['{"city":', '"Paris"}']]), include_usage=True)
    assert deltas(chunks) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "tool_0", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {},
    ]
    assert chunks[0] == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_hotloop",
        "choices": [
            {"index": 0, "delta": deltas(chunks)[0], "logprobs": None, "finish_reason": None}
        ],
        "usage": None,
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 6,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    check_chunk_rules(chunks, include_usage=True)


def test_text_turn_chunks() -> None:
    chunks = encode(turn(text=["Hel", "lo"]))
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[0]
    check_chunk_rules(chunks, include_usage=False)


def test_text_then_parallel_calls() -> None:
    chunks = encode(turn(text=["Let me look."], calls=[["{}"], ['{"a":1}']]))
    tools = [t for d in deltas(chunks) for t in d.get("tool_calls", [])]
    assert [t["index"] for t in tools] == [0, 0, 1, 1]
    assert "role" not in deltas(chunks)[2]  # the text chunk had it
    check_chunk_rules(chunks, include_usage=False)


def test_length_finish_reason() -> None:
    chunks = encode(turn(text=["x"], status="incomplete", reason="max_output_tokens"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_missing_deltas_are_filled_from_done_events() -> None:
    # Only created + completed with full output: the chunks still carry it all.
    full = turn(text=["Hi"], calls=[["{}"]])
    chunks = encode([full[0], full[-1]])
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "tool_1", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        {},
    ]


def test_empty_completion_still_names_the_role() -> None:
    chunks = encode(turn())
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]


def test_failed_response_and_error_events_become_error_bodies() -> None:
    response = ResponseObject(
        id="r", created_at=0, model="m", status="failed", error={"code": "c", "message": "boom"}
    )
    (body,) = encode([ev.ResponseFailed(response=response)])
    assert body == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "c"}
    }
    (body,) = encode([ev.ErrorEvent(message="m", code="x", param="p")])
    assert body["error"]["param"] == "p"
    ws = ev.WebSocketError(status=400, error={"type": "invalid_request_error", "message": "m"})
    (body,) = encode([ws])
    assert body["error"]["type"] == "invalid_request_error"


def test_events_after_the_end_raise() -> None:
    encoder = ChatChunkEncoder("chatcmpl-1", "m", 0)
    for event in turn(text=["x"]):
        encoder.feed(event)
    with pytest.raises(ProtocolError):
        encoder.feed(turn()[-1])


def test_arguments_before_added_raise() -> None:
    with pytest.raises(ProtocolError):
        encode([ev.FunctionCallArgumentsDelta(item_id="f", output_index=0, delta="{")])


@st.composite
def json_fragments(draw: st.DrawFn) -> list[str]:
    """A JSON object's text cut into argument fragments at arbitrary points."""
    chars = st.text(st.characters(codec="utf-8"), max_size=3)
    value = draw(st.dictionaries(chars, st.integers(-999, 999) | chars, max_size=3))
    arguments = codec.dumps(value).decode()
    cuts = sorted(draw(st.lists(st.integers(1, len(arguments) - 1), max_size=4)))
    bounds = [0, *cuts, len(arguments)]
    return [arguments[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=150)
@given(
    text=st.lists(st.text(max_size=4), max_size=3),
    calls=st.lists(json_fragments(), max_size=3),
    include_usage=st.booleans(),
)  # fmt: skip
def test_encoder_output_follows_the_chunk_rules(
    text: list[str], calls: list[list[str]], include_usage: bool
) -> None:
    chunks = encode(turn(text=text, calls=calls), include_usage=include_usage)
    check_chunk_rules(chunks, include_usage)
    content = "".join(d.get("content") or "" for d in deltas(chunks))
    assert content == "".join(text)


def test_non_streaming_completion() -> None:
    events = turn(text=["Sure."], calls=[["{}"]])
    final = events[-1]
    assert isinstance(final, ev.ResponseCompleted)
    body = chat_completion_from_response(final.response, "chatcmpl-9", 5)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-9"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Sure."
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "tool_1", "arguments": "{}"}}
    ]
    assert body["usage"]["total_tokens"] == 16
    empty = chat_completion_from_response(
        final.response.with_status("completed", output=()), "c", 0
    )
    assert empty["choices"][0]["message"]["content"] is None
    assert empty["choices"][0]["finish_reason"] == "stop"


# -- streaming: chat -> Responses --------------------------------------------------------


def decode(chunks: Sequence[dict[str, Any]]) -> list[ev.Event]:
    decoder = ChatStreamDecoder("resp_chat", "m", created_at=7)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


@settings(max_examples=150)
@given(
    text=st.lists(st.text(min_size=1, max_size=4), max_size=3),
    calls=st.lists(json_fragments(), max_size=3),
    include_usage=st.booleans(),
)
def test_chat_stream_round_trip_through_the_assembler(
    text: list[str], calls: list[list[str]], include_usage: bool
) -> None:
    chunks = encode(turn(text=text, calls=calls), include_usage=include_usage)
    events = decode(chunks)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    stream = ResponseStream()
    reports = [r for event in events for r in stream.receive(event)]
    assert stream.done and stream.response_id == "resp_chat"
    assert stream.text == "".join(text)
    ready = [r.call for r in reports if isinstance(r, FunctionCallReady)]
    assert [(c.call_id, c.arguments) for c in ready] == [
        (f"call_{i + bool(text)}", "".join(f)) for i, f in enumerate(calls)
    ]
    final = stream.final_response
    assert final is not None and final.status == "completed"
    assert len(final.output) == bool(text) + len(calls)
    assert final.usage == (USAGE if include_usage else None)


def test_call_is_closed_as_soon_as_the_next_one_starts() -> None:
    chunks = encode(turn(calls=[["{}"], ["[]"]]))
    decoder = ChatStreamDecoder("resp_x", "m")
    decoder.feed(chunks[0])  # call 0 starts
    decoder.feed(chunks[1])  # its arguments
    events = decoder.feed(chunks[2])  # call 1 starts
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["FunctionCallArgumentsDone", "OutputItemDone", "OutputItemAdded"]


def test_length_finish_becomes_incomplete() -> None:
    chunks = encode(turn(text=["x"], status="incomplete", reason="max_output_tokens"))
    terminal = decode(chunks)[-1]
    assert isinstance(terminal, ev.ResponseIncomplete)
    assert terminal.response.incomplete_details == {"reason": "max_output_tokens"}


def test_error_chunk_becomes_error_event() -> None:
    decoder = ChatStreamDecoder("resp_x", "m")
    events = decoder.feed({"error": {"message": "overloaded", "code": "busy"}})
    assert isinstance(events[-1], ev.ErrorEvent) and events[-1].code == "busy"
    assert decoder.done and decoder.close() == []
    with pytest.raises(ProtocolError):
        decoder.feed({"choices": []})


def test_usage_on_every_chunk_last_one_wins() -> None:
    # Servers with continuous usage stats attach usage to every chunk, the finish one too.
    chunks = encode(turn(text=["x"]), include_usage=True)
    chunks[-2]["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    terminal = decode(chunks)[-1]
    assert isinstance(terminal, ev.ResponseCompleted)
    assert terminal.response.usage == USAGE


def test_content_after_finish_reason_is_a_protocol_error() -> None:
    decoder = ChatStreamDecoder("resp_x", "m")
    decoder.feed({"choices": [{"delta": {"content": "a"}, "finish_reason": "stop"}]})
    decoder.feed({"choices": [{"delta": {"content": None}}]})  # empty deltas are harmless
    with pytest.raises(ProtocolError, match="after finish_reason"):
        decoder.feed({"choices": [{"delta": {"content": "b"}}]})


def test_stream_ending_without_finish_reason_is_a_protocol_error() -> None:
    decoder = ChatStreamDecoder("resp_x", "m")
    decoder.feed(encode(turn(text=["x"]))[0])
    with pytest.raises(ProtocolError, match="finish_reason"):
        decoder.close()


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": [{"delta": {"tool_calls": [{"id": "c", "function": {"name": "f"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"index": 1, "delta": {}}]},
        {"choices": {}},
        {"choices": [], "usage": {"prompt_tokens": "many"}},
    ],
)
def test_malformed_chunks_raise_invalid_message(chunk: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        ChatStreamDecoder("resp_x", "m").feed(chunk)


# -- garbage -----------------------------------------------------------------------------

text = st.text(max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
message_dicts = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])},
    optional={
        "content": json_values | st.just([{"type": "text", "text": "t"}]),
        "tool_calls": json_values
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": json_values,
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": json_values, "arguments": json_values}
                    ),
                },
            ),
            max_size=2,
        ),
        "tool_call_id": json_values,
    },
)
request_dicts = st.fixed_dictionaries(
    {"model": st.just("m") | json_values, "messages": st.lists(message_dicts, max_size=4)},
    optional={
        key: json_values
        for key in (
            "tools",
            "tool_choice",
            "stream",
            "stream_options",
            "max_tokens",
            "parallel_tool_calls",
            "reasoning_effort",
        )
    },
)


@settings(max_examples=300)
@given(json_values | request_dicts)
def test_garbage_requests_raise_only_our_errors(body: Any) -> None:
    with contextlib.suppress(HotloopError):
        chat_request_to_responses(body)


chunk_dicts = st.fixed_dictionaries(
    {},
    optional={
        "choices": json_values
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "delta": json_values
                    | st.fixed_dictionaries(
                        {},
                        optional={
                            "content": json_values,
                            "tool_calls": json_values
                            | st.lists(
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "index": st.integers(0, 2) | json_values,
                                        "id": st.just("c"),
                                        "function": json_values
                                        | st.just({"name": "f", "arguments": "{"}),
                                    },
                                ),
                                max_size=2,
                            ),
                        },
                    ),
                    "finish_reason": st.sampled_from(["stop", "tool_calls", "length"])
                    | json_values,
                },
            ),
            max_size=2,
        ),
        "usage": json_values,
        "error": json_values,
    },
)


@settings(max_examples=200)
@given(st.lists(json_values | chunk_dicts, max_size=6))
def test_garbage_chunks_raise_only_our_errors(chunks: list[Any]) -> None:
    decoder = ChatStreamDecoder("resp_x", "m")
    with contextlib.suppress(HotloopError):
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.close()
