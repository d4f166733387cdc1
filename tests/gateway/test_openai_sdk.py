"""The real gateway on loopback, driven by the official ``openai`` SDK, unmodified.

Every mode of the API runs the ten-turn scenario of ``support.ten_turn_scenario``
to the end: HTTP SSE with full-history resends (a), HTTP JSON chained by
``previous_response_id`` with ``store: true`` (b), WebSocket mode chained with
``store: false`` (c), and Chat Completions (d). Only deterministic facts are asserted:
which calls arrive in which order with which arguments, event order and brackets
(the canonical event order), ids, counts and usage.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai import AsyncOpenAI, NotFoundError, OpenAI

from hotloop.gateway import GatewayServer
from hotloop.wire import codec
from support import ten_turn_scenario

MODEL = "hotloop-sim"
API_KEY = "test-key"
SCENARIO = ten_turn_scenario()
INSTRUCTIONS = SCENARIO.instructions
TASK = SCENARIO.task
TOOLS: list[dict[str, Any]] = SCENARIO.responses_tools()
CHAT_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": tool["parameters"],
        },
    }
    for tool in TOOLS
]
#: The scripted calls, in order: (tool name, decoded arguments).
EXPECTED_CALLS: list[tuple[str, dict[str, Any]]] = [
    (call.name, codec.loads(call.arguments)) for turn in SCENARIO.turns for call in turn.calls
]
EXPECTED_TURNS = len(SCENARIO.turns)
FINAL_TEXT = SCENARIO.turns[-1].text
#: The text each function-calling turn says before its calls.
TURN_TEXTS = [turn.text for turn in SCENARIO.turns]

TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}
LIFECYCLE = {"response.created", "response.in_progress", *TERMINAL - {"error"}}

pytestmark = pytest.mark.timeout(60)


def test_scenario_shape() -> None:
    """The scenario the tests rely on: 10 turns, 10 calls, turn 4 makes two calls."""
    assert EXPECTED_TURNS == 10
    assert len(EXPECTED_CALLS) == 10
    assert [len(turn.calls) for turn in SCENARIO.turns] == [1, 1, 1, 2, 1, 1, 1, 1, 1, 0]
    assert FINAL_TEXT


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the gateway under test may be reached, whatever the environment says.
    for name in ("OPENAI_BASE_URL", "OPENAI_WEBSOCKET_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


# -- helpers -----------------------------------------------------------------------------


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of an SDK model (constructed without validation), or a dict as is."""
    if isinstance(obj, dict):
        return obj
    data: dict[str, Any] = obj.model_dump(mode="json", warnings=False, by_alias=True)
    return data


def tool_result(name: str, arguments: str) -> str:
    """What our client-side tool returns: deterministic, derived from the arguments."""
    city = codec.loads(arguments)["city"]
    return codec.dumps({"tool": name, "city": city, "weather": "sunny"}).decode()


def calls_of(output: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in output if item["type"] == "function_call"]


def text_of(output: Iterable[dict[str, Any]]) -> str:
    return "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def outputs_for(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function_call_output",
            "call_id": call["call_id"],
            "output": tool_result(call["name"], call["arguments"]),
        }
        for call in calls
    ]


def replay(output: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as input items for a full-history resend (what a stateless client does)."""
    items: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "function_call":
            keys = ("type", "id", "call_id", "name", "arguments", "status")
            items.append({key: item[key] for key in keys})
        elif item["type"] == "message":
            items.append(
                {
                    "type": "message",
                    "id": item["id"],
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": part["text"], "annotations": []}
                        for part in item["content"]
                    ],
                }
            )
        else:  # pragma: no cover - the sim emits messages and calls only
            raise AssertionError(f"unexpected output item {item['type']}")
    return items


@dataclass
class Transcript:
    """What a client saw over a whole conversation: one entry per model turn."""

    response_ids: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)

    def add(self, response_id: str, output: list[dict[str, Any]], usage: dict[str, Any]) -> None:
        self.response_ids.append(response_id)
        for call in calls_of(output):
            self.calls.append((call["name"], codec.loads(call["arguments"])))
            self.call_ids.append(call["call_id"])
        self.texts.append(text_of(output))
        self.usages.append(usage)

    def check(self, *, cached_after_first: bool) -> None:
        assert len(self.response_ids) == EXPECTED_TURNS
        assert len(set(self.response_ids)) == EXPECTED_TURNS, "response ids must be unique"
        assert all(rid.startswith("resp_") for rid in self.response_ids)
        assert self.calls == EXPECTED_CALLS
        assert len(set(self.call_ids)) == len(self.call_ids), "call ids must be unique"
        assert self.texts == TURN_TEXTS
        assert self.texts[-1] == FINAL_TEXT
        for usage in self.usages:
            assert usage["input_tokens"] > 0
            assert usage["output_tokens"] > 0
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            assert usage["input_tokens_details"]["cached_tokens"] >= 0
        if cached_after_first:
            assert self.usages[0]["input_tokens_details"]["cached_tokens"] == 0
            for usage in self.usages[1:]:
                cached = usage["input_tokens_details"]["cached_tokens"]
                assert 0 < cached <= usage["input_tokens"]


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Check one response's events against the canonical event order; return its response.

    Created first, ``sequence_number`` strictly rising from 0, one terminal event and it is
    last, one ``response.id`` throughout, every item bracketed by added/done with a stable
    index and id, text and argument deltas inside their brackets and joining to the final
    values, and the terminal response carrying every item and usage.
    """
    types = [event["type"] for event in events]
    assert types[0] == "response.created", types
    assert types[1] == "response.in_progress", types
    sequence = [event["sequence_number"] for event in events]
    assert sequence[0] == 0
    assert all(later > earlier for earlier, later in itertools.pairwise(sequence))
    assert [i for i, kind in enumerate(types) if kind in TERMINAL] == [len(events) - 1], types
    assert types[-1] == "response.completed", types
    response = events[-1]["response"]
    lifecycle_ids = {event["response"]["id"] for event in events if event["type"] in LIFECYCLE}
    assert lifecycle_ids == {response["id"]}
    created = events[0]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []

    open_items: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    for event in events[2:-1]:
        kind = event["type"]
        index = event["output_index"]
        if kind == "response.output_item.added":
            item = event["item"]
            assert index not in open_items and index not in done
            assert index == len(open_items) + len(done), "output_index must count up from 0"
            assert item["status"] == "in_progress"
            if item["type"] == "function_call":
                assert item["arguments"] == ""
            else:
                assert item["type"] == "message" and item["content"] == []
            open_items[index] = {
                "id": item["id"],
                "type": item["type"],
                "deltas": [],
                "part": None,
                "text_done": None,
                "part_done": None,
            }
            continue
        assert index in open_items, f"{kind} outside its item's added/done brackets"
        state = open_items[index]
        if kind == "response.output_item.done":
            item = event["item"]
            assert item["id"] == state["id"]
            assert item["type"] == state["type"]
            assert item["status"] == "completed"
            joined = "".join(state["deltas"])
            if item["type"] == "message":
                assert state["part"] == "done"
                assert text_of([item]) == joined == state["text_done"] == state["part_done"]
            else:
                assert item["arguments"] == joined == state["text_done"]
                codec.loads(item["arguments"])  # valid JSON
            done[index] = item
            del open_items[index]
            continue
        assert event["item_id"] == state["id"]
        if kind == "response.content_part.added":
            assert state["type"] == "message" and state["part"] is None
            assert event["content_index"] == 0
            assert event["part"]["type"] == "output_text" and event["part"]["text"] == ""
            state["part"] = "open"
        elif kind == "response.output_text.delta":
            assert state["part"] == "open", "text delta before content_part.added"
            assert event["content_index"] == 0
            state["deltas"].append(event["delta"])
        elif kind == "response.output_text.done":
            assert state["part"] == "open"
            state["text_done"] = event["text"]
        elif kind == "response.content_part.done":
            assert state["part"] == "open" and state["text_done"] is not None
            state["part"] = "done"
            state["part_done"] = event["part"]["text"]
        elif kind == "response.function_call_arguments.delta":
            assert state["type"] == "function_call" and state["text_done"] is None
            state["deltas"].append(event["delta"])
        elif kind == "response.function_call_arguments.done":
            assert state["type"] == "function_call"
            state["text_done"] = event["arguments"]
        else:
            raise AssertionError(f"unexpected event {kind}")
    assert not open_items, "every output_item.added needs its output_item.done"
    assert response["status"] == "completed"
    assert [summary(item) for item in response["output"]] == [
        summary(done[index]) for index in range(len(done))
    ]
    assert response["usage"] is not None
    return response


def summary(item: dict[str, Any]) -> tuple[Any, ...]:
    if item["type"] == "function_call":
        return ("function_call", item["id"], item["call_id"], item["name"], item["arguments"])
    return ("message", item["id"], item["role"], text_of([item]))


def check_json_response(response: dict[str, Any]) -> None:
    """A non-streaming reply is a full Response object (checklist 7, 8)."""
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert response["model"] == MODEL
    assert response["error"] is None
    assert response["usage"] is not None
    for item in response["output"]:
        assert item["status"] == "completed"
        if item["type"] == "function_call":
            assert item["id"].startswith("fc_") and item["call_id"].startswith("call_")


# -- (a) HTTP streaming, full history, no previous_response_id, store=False --------------


async def stream_turn(
    client: AsyncOpenAI, *, helper: bool, **kwargs: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One streamed turn, via ``responses.stream()`` or ``create(stream=True)``."""
    events: list[dict[str, Any]] = []
    if helper:
        async with client.responses.stream(**kwargs) as stream:
            async for event in stream:
                events.append(as_dict(event))
            final = as_dict(await stream.get_final_response())
    else:
        raw = await client.responses.create(stream=True, **kwargs)
        async for event in raw:
            events.append(as_dict(event))
        final = events[-1]["response"]
    return events, final


@pytest.mark.parametrize("helper", [False, True], ids=["create_stream", "stream_helper"])
async def test_http_streaming_full_history(client: AsyncOpenAI, helper: bool) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    transcript = Transcript()
    for _ in range(EXPECTED_TURNS + 2):
        events, final = await stream_turn(
            client,
            helper=helper,
            model=MODEL,
            input=history,
            instructions=INSTRUCTIONS,
            tools=TOOLS,
            store=False,
        )
        response = check_stream(events)
        assert final["id"] == response["id"]
        assert [summary(item) for item in final["output"]] == [
            summary(item) for item in response["output"]
        ]
        assert response["previous_response_id"] is None
        assert response["store"] is False
        transcript.add(response["id"], response["output"], response["usage"])
        calls = calls_of(response["output"])
        history += replay(response["output"])
        if not calls:
            break
        history += outputs_for(calls)
    # The whole history is re-sent, yet the sim's prefix cache still matches it.
    transcript.check(cached_after_first=True)
    # store=False responses are never persisted.
    with pytest.raises(NotFoundError):
        await client.responses.retrieve(transcript.response_ids[0])


async def test_check_stream_rejects_broken_streams(client: AsyncOpenAI) -> None:
    """The event-order checker is not vacuous: each break of the canonical order is caught."""
    events, _ = await stream_turn(
        client, helper=False, model=MODEL, input=TASK, tools=TOOLS, store=False
    )
    check_stream(events)
    kinds = [event["type"] for event in events]
    first_text_delta = kinds.index("response.output_text.delta")
    first_added = kinds.index("response.output_item.added")

    def broken(mutate: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
        copy = [codec.loads(codec.dumps(event)) for event in events]
        mutate(copy)
        return copy

    def move_delta_first(copy: list[dict[str, Any]]) -> None:
        copy.insert(first_added, copy.pop(first_text_delta))

    def repeat_sequence(copy: list[dict[str, Any]]) -> None:
        copy[3]["sequence_number"] = copy[2]["sequence_number"]

    def change_id(copy: list[dict[str, Any]]) -> None:
        copy[-1]["response"]["id"] = "resp_other"

    def drop_item_done(copy: list[dict[str, Any]]) -> None:
        del copy[kinds.index("response.output_item.done")]

    def alter_delta(copy: list[dict[str, Any]]) -> None:
        copy[first_text_delta]["delta"] += "!"

    def two_terminals(copy: list[dict[str, Any]]) -> None:
        copy.insert(-1, dict(copy[-1]))

    def drop_created(copy: list[dict[str, Any]]) -> None:
        del copy[0]

    for mutate in (
        move_delta_first,
        repeat_sequence,
        change_id,
        drop_item_done,
        alter_delta,
        two_terminals,
        drop_created,
    ):
        with pytest.raises((AssertionError, KeyError)):
            check_stream(broken(mutate))


# -- (b) HTTP JSON, previous_response_id, store=True --------------------------------------


async def test_http_json_previous_response_id(client: AsyncOpenAI) -> None:
    transcript = Transcript()
    new_input: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    previous: str | None = None
    for _ in range(EXPECTED_TURNS + 2):
        extra: dict[str, Any] = {} if previous is None else {"previous_response_id": previous}
        result = await client.responses.create(
            model=MODEL,
            input=new_input,
            instructions=INSTRUCTIONS,
            tools=TOOLS,
            store=True,
            **extra,
        )
        response = as_dict(result)
        check_json_response(response)
        assert response["previous_response_id"] == previous
        assert response["store"] is True
        assert result.output_text == text_of(response["output"])
        transcript.add(response["id"], response["output"], response["usage"])

        stored = as_dict(await client.responses.retrieve(response["id"]))
        assert stored["id"] == response["id"]
        assert stored["status"] == "completed"
        assert stored["previous_response_id"] == previous
        assert [summary(item) for item in stored["output"]] == [
            summary(item) for item in response["output"]
        ]
        calls = calls_of(response["output"])
        if not calls:
            break
        previous = response["id"]
        new_input = outputs_for(calls)
    transcript.check(cached_after_first=True)


# -- (c) WebSocket mode, previous_response_id, store=False --------------------------------


async def ws_turn(connection: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Send one ``response.create`` and read the connection's events to the terminal one."""
    await connection.response.create(**kwargs)
    events: list[dict[str, Any]] = []
    async for event in connection:
        data = as_dict(event)
        # Default lane: no event carries stream_id.
        assert "stream_id" not in event.to_dict()
        events.append(data)
        if data["type"] in TERMINAL:
            break
    return events


async def test_websocket_previous_response_id(client: AsyncOpenAI) -> None:
    transcript = Transcript()
    new_input: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    previous: str | None = None
    async with client.responses.connect() as connection:
        for _ in range(EXPECTED_TURNS + 2):
            extra: dict[str, Any] = {} if previous is None else {"previous_response_id": previous}
            events = await ws_turn(
                connection,
                model=MODEL,
                input=new_input,
                instructions=INSTRUCTIONS,
                tools=TOOLS,
                store=False,
                **extra,
            )
            response = check_stream(events)
            assert response["previous_response_id"] == previous
            assert response["store"] is False
            transcript.add(response["id"], response["output"], response["usage"])
            calls = calls_of(response["output"])
            if not calls:
                break
            previous = response["id"]
            new_input = outputs_for(calls)
    transcript.check(cached_after_first=True)
    # store=False: the chain lived in that socket's cache only.
    with pytest.raises(NotFoundError):
        await client.responses.retrieve(transcript.response_ids[-1])


async def test_websocket_store_false_parent_unknown_on_new_socket(client: AsyncOpenAI) -> None:
    async with client.responses.connect() as connection:
        events = await ws_turn(
            connection, model=MODEL, input=TASK, instructions=INSTRUCTIONS, tools=TOOLS, store=False
        )
        first = check_stream(events)
    async with client.responses.connect() as connection:
        events = await ws_turn(
            connection,
            model=MODEL,
            input=outputs_for(calls_of(first["output"])),
            tools=TOOLS,
            store=False,
            previous_response_id=first["id"],
        )
        assert len(events) == 1
        error = events[0]
        assert error["type"] == "error"
        assert error["error"]["code"] == "previous_response_not_found"
        assert error["error"]["param"] == "previous_response_id"
        # The socket stays usable after a request-scoped error.
        events = await ws_turn(
            connection, model=MODEL, input=TASK, instructions=INSTRUCTIONS, tools=TOOLS, store=False
        )
        check_stream(events)


def sync_ws_conversation(base_url: str, turns: int) -> list[dict[str, Any]]:
    """The sync client's ``responses.connect()``: ``turns`` chained turns."""
    responses: list[dict[str, Any]] = []
    with OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0) as sdk:
        with sdk.responses.connect() as connection:
            new_input: Any = TASK
            previous: str | None = None
            for _ in range(turns):
                extra: dict[str, Any] = (
                    {} if previous is None else {"previous_response_id": previous}
                )
                connection.response.create(
                    model=MODEL,
                    input=new_input,
                    instructions=INSTRUCTIONS,
                    tools=TOOLS,
                    store=False,
                    **extra,
                )
                events: list[dict[str, Any]] = []
                for event in connection:
                    events.append(as_dict(event))
                    if event.type in TERMINAL:
                        break
                response = check_stream(events)
                responses.append(response)
                previous = response["id"]
                new_input = outputs_for(calls_of(response["output"]))
    return responses


async def test_sync_client_websocket(gateway: GatewayServer) -> None:
    # The sync client blocks, and the gateway runs on this event loop: use a thread.
    responses = await asyncio.to_thread(sync_ws_conversation, gateway.base_url, 2)
    transcript = Transcript()
    for response in responses:
        transcript.add(response["id"], response["output"], response["usage"])
    assert transcript.calls == EXPECTED_CALLS[:2]
    assert transcript.texts == TURN_TEXTS[:2]
    assert len(set(transcript.response_ids)) == 2
    assert transcript.usages[1]["input_tokens_details"]["cached_tokens"] > 0


# -- (d) Chat Completions ----------------------------------------------------------------


@dataclass
class ChatTurn:
    completion_id: str
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, Any]


def completion_turn(completion: Any) -> ChatTurn:
    """A whole ``ChatCompletion`` (the SDK's own or accumulated) as a :class:`ChatTurn`."""
    choice = completion.choices[0]
    message = choice.message
    tool_calls = [
        {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
        for call in message.tool_calls or []
    ]
    assert completion.usage is not None
    return ChatTurn(
        completion.id,
        message.content or "",
        tool_calls,
        choice.finish_reason,
        as_dict(completion.usage),
    )


def check_chat_chunks(chunks: list[dict[str, Any]], *, include_usage: bool) -> ChatTurn:
    """Check one streamed completion against the chat chunk rules and accumulate it."""
    assert chunks
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    usage: dict[str, Any] | None = None
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == []
        usage = last["usage"]
        assert usage is not None
        assert all(chunk["usage"] is None for chunk in chunks)
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: list[str] = []
    for position, chunk in enumerate(chunks):
        assert len(chunk["choices"]) == 1
        choice = chunk["choices"][0]
        assert choice["index"] == 0
        delta = choice["delta"]
        assert not finish, "nothing may follow the finish chunk but the usage chunk"
        if choice["finish_reason"] is not None:
            assert position == len(chunks) - 1
            assert not delta.get("content") and not delta.get("tool_calls")
            finish.append(choice["finish_reason"])
            continue
        if position == 0:
            assert delta["role"] == "assistant"
        else:
            assert delta.get("role") is None, "the role appears once, in the first chunk"
        if delta.get("content"):
            text.append(delta["content"])
        for tool in delta.get("tool_calls") or []:
            index = tool["index"]  # mandatory in every delta
            if index not in calls:
                assert index == len(calls)
                assert tool["id"].startswith("call_")
                assert tool["type"] == "function"
                assert tool["function"]["arguments"] == ""
                calls[index] = {
                    "id": tool["id"],
                    "name": tool["function"]["name"],
                    "arguments": [],
                }
            else:
                # Later deltas carry only index and an arguments fragment.
                assert tool.get("id") is None and tool.get("type") is None
                assert tool["function"].get("name") is None
                assert list(calls) and index == max(calls)
                calls[index]["arguments"].append(tool["function"]["arguments"])
    assert len(finish) == 1
    tool_calls = [
        {"id": call["id"], "name": call["name"], "arguments": "".join(call["arguments"])}
        for _, call in sorted(calls.items())
    ]
    for call in tool_calls:
        codec.loads(call["arguments"])  # fragments join into valid JSON
    assert finish[0] == ("tool_calls" if tool_calls else "stop")
    return ChatTurn(chunks[0]["id"], "".join(text), tool_calls, finish[0], usage or {})


def chat_followup(turn: ChatTurn) -> list[dict[str, Any]]:
    """The assistant message with its tool calls, then one ``tool`` message per call."""
    assistant: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        assistant["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in turn.tool_calls
        ]
    messages = [assistant]
    for call in turn.tool_calls:
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": tool_result(call["name"], call["arguments"]),
            }
        )
    return messages


def check_chat_transcript(turns: list[ChatTurn]) -> None:
    assert len(turns) == EXPECTED_TURNS
    assert len({turn.completion_id for turn in turns}) == EXPECTED_TURNS
    assert all(turn.completion_id.startswith("chatcmpl") for turn in turns)
    calls = [(c["name"], codec.loads(c["arguments"])) for turn in turns for c in turn.tool_calls]
    assert calls == EXPECTED_CALLS
    all_ids = [c["id"] for turn in turns for c in turn.tool_calls]
    assert len(set(all_ids)) == len(all_ids)
    assert [turn.text for turn in turns] == TURN_TEXTS
    assert turns[-1].text == FINAL_TEXT
    assert [turn.finish_reason for turn in turns] == ["tool_calls"] * 9 + ["stop"]
    for turn in turns:
        usage = turn.usage
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


async def run_chat(turn: Callable[[list[dict[str, Any]]], Any]) -> list[ChatTurn]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": TASK},
    ]
    turns: list[ChatTurn] = []
    for _ in range(EXPECTED_TURNS + 2):
        result: ChatTurn = await turn(messages)
        turns.append(result)
        messages += chat_followup(result)
        if not result.tool_calls:
            break
    return turns


async def test_chat_streaming_tool_calls(client: AsyncOpenAI) -> None:
    async def turn(messages: list[dict[str, Any]]) -> ChatTurn:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=CHAT_TOOLS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [as_dict(chunk) async for chunk in stream]
        return check_chat_chunks(chunks, include_usage=True)

    check_chat_transcript(await run_chat(turn))


async def test_chat_stream_helper(client: AsyncOpenAI) -> None:
    """``client.chat.completions.stream()``: the SDK's own accumulator builds each message."""

    async def turn(messages: list[dict[str, Any]]) -> ChatTurn:
        kinds: list[str] = []
        arguments_done: list[tuple[str, str]] = []
        async with client.chat.completions.stream(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=CHAT_TOOLS,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        ) as stream:
            async for event in stream:
                kinds.append(event.type)
                if event.type == "tool_calls.function.arguments.done":
                    arguments_done.append((event.name, event.arguments))
            completion = await stream.get_final_completion()
        assert kinds[-1] == "chunk"
        accumulated = completion_turn(completion)
        # No id/name was repeated: the accumulator would have concatenated it.
        assert all(call["name"] == "get_weather" for call in accumulated.tool_calls)
        assert arguments_done == [
            (call["name"], call["arguments"]) for call in accumulated.tool_calls
        ]
        return accumulated

    check_chat_transcript(await run_chat(turn))


async def test_chat_non_streaming(client: AsyncOpenAI) -> None:
    async def turn(messages: list[dict[str, Any]]) -> ChatTurn:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=CHAT_TOOLS,  # type: ignore[arg-type]
        )
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.role == "assistant"
        return completion_turn(completion)

    check_chat_transcript(await run_chat(turn))
