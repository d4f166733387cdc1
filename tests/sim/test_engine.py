"""The simulated model: what :meth:`SimEngine.plan` says and how :meth:`SimEngine.generate`
streams and paces it (scripted turns, tool choice, prefix cache, truncation, latency)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest, ToolDef
from hotloop.sim.engine import PlannedItem, SimEngine
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.wire import events as ev
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message
from hotloop.wire.responses import ResponseObject, Usage
from support import CITIES, WEATHER_TOOL, FakeClock, ten_turn_scenario

MODEL = "ten"
TASK = "Check the weather in ten cities."
FINAL = "All ten steps are done: the weather is fine everywhere."

WEATHER = ToolDef(
    name=WEATHER_TOOL.name,
    parameters=WEATHER_TOOL.parameters,
    description=WEATHER_TOOL.description,
)
LOOKUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 12},
        "limit": {"type": "integer", "minimum": 3},
        "mode": {"type": "string", "enum": ["fast", "thorough"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "exact": {"type": "boolean"},
    },
    "required": ["query", "limit", "mode", "tags", "exact"],
    "additionalProperties": False,
}
LOOKUP = ToolDef(name="lookup", parameters=LOOKUP_SCHEMA, description="Search.")


def engine(profile: LatencyProfile | None = None, **kwargs: Any) -> SimEngine:
    return SimEngine({MODEL: ten_turn_scenario()}, profile or get_profile("zero"), **kwargs)


def context_with_results(results: int, *, answered: bool = False) -> Conversation:
    """The task, then ``results`` call/result pairs; ``answered`` adds a final answer."""
    items: list[Item] = [Message(role="user", content=TASK)]
    for index in range(results):
        arguments = json.dumps({"city": (CITIES + ["Tokyo"] * 2)[index]})
        items.append(FunctionCall(call_id=f"call_{index}", name="get_weather", arguments=arguments))
        items.append(FunctionCallOutput(call_id=f"call_{index}", output="sunny"))
    if answered:
        items.append(Message(role="assistant", content=FINAL))
    return Conversation.start(items)


def request(
    context: Conversation,
    *,
    tools: Sequence[ToolDef] = (WEATHER,),
    processed_tokens: int | None = None,
    **fields: Any,
) -> GenerationRequest:
    return GenerationRequest(
        request=CreateRequest(model=MODEL, input=(), tools=tuple(tools), **fields),
        context=context,
        processed_tokens=context.tokens if processed_tokens is None else processed_tokens,
    )


def text(value: str) -> PlannedItem:
    return PlannedItem(value)


def weather(city: str) -> PlannedItem:
    return PlannedItem(json.dumps({"city": city}, separators=(",", ":")), "get_weather")


# What the engine writes to its builder, read back as one record per model step: an item
# starts, a token, the item ends, the turn finishes (with the usage recorded on the builder).


@dataclass(frozen=True)
class StartText:
    pass


@dataclass(frozen=True)
class StartCall:
    name: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class EndItem:
    pass


@dataclass(frozen=True)
class Finish:
    usage: Usage
    incomplete_reason: str | None = None


Output = StartText | StartCall | Delta | EndItem | Finish


def step(event: ev.Event) -> Output | None:
    if isinstance(event, ev.OutputItemAdded):
        item = event.item
        return StartCall(item.name) if isinstance(item, FunctionCall) else StartText()
    if isinstance(event, ev.OutputTextDelta | ev.FunctionCallArgumentsDelta):
        return Delta(event.delta)
    if isinstance(event, ev.OutputItemDone):
        return EndItem()
    return None


def builder() -> ResponseBuilder:
    out = ResponseBuilder(ResponseObject(id="resp_t", created_at=0, model=MODEL, status=""))
    out.start()
    return out


async def steps(sim: SimEngine, req: GenerationRequest) -> AsyncIterator[Output]:
    out = builder()
    async for events in sim.generate(req, out):
        for event in events:
            record = step(event)
            if record is not None:
                yield record
    assert out.usage is not None
    yield Finish(out.usage, out.incomplete_reason)


async def generate(sim: SimEngine, req: GenerationRequest) -> list[Output]:
    return [out async for out in steps(sim, req)]


def output_items(outputs: Sequence[Output]) -> list[Item]:
    """The items a stream produced, as the gateway would record them."""
    items: list[Item] = []
    name: str | None = None
    chunks: list[str] = []
    for out in outputs:
        if isinstance(out, StartText | StartCall):
            name = out.name if isinstance(out, StartCall) else None
            chunks = []
        elif isinstance(out, Delta):
            chunks.append(out.text)
        elif isinstance(out, EndItem):
            body = "".join(chunks)
            items.append(
                FunctionCall(call_id=f"call_{len(items)}", name=name, arguments=body)
                if name is not None
                else Message(role="assistant", content=body)
            )
    return items


def finish(outputs: Sequence[Output]) -> Finish:
    assert isinstance(outputs[-1], Finish)
    assert not any(isinstance(out, Finish) for out in outputs[:-1])
    return outputs[-1]


def check_schema(schema: dict[str, Any], value: Any) -> None:
    """The JSON-schema subset of LOOKUP_SCHEMA."""
    kind = schema.get("type")
    types = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}
    if kind is not None:
        assert isinstance(value, types[kind]), (schema, value)
    if "enum" in schema:
        assert value in schema["enum"]
    if "minLength" in schema:
        assert len(value) >= schema["minLength"]
    if "minimum" in schema:
        assert value >= schema["minimum"]
    if "minItems" in schema:
        assert len(value) >= schema["minItems"]
    if kind == "array":
        for entry in value:
            check_schema(schema["items"], entry)
    if kind == "object":
        assert set(schema.get("required", ())) <= set(value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema["properties"])
        for key, entry in value.items():
            check_schema(schema["properties"][key], entry)


# -- plan: what the model says ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (0, [text("Checking step 1."), weather("Paris")]),
        (1, [text("Checking step 2."), weather("Rome")]),
        (2, [text("Checking step 3."), weather("Oslo")]),
        (3, [text("Checking step 4."), weather("Lima"), weather("Tokyo")]),
        # Partial results: the same turn goes on with the remaining call, no new text.
        (4, [weather("Tokyo")]),
        (5, [text("Checking step 5."), weather("Quito")]),
        (9, [text("Checking step 9."), weather("Baku")]),
        (10, [text(FINAL)]),
    ],
)
def test_scripted_turn_follows_the_count_of_tool_results(
    results: int, expected: list[PlannedItem]
) -> None:
    assert engine().plan(request(context_with_results(results))) == expected


def test_after_the_final_answer_the_model_replies_generically() -> None:
    sim = engine()
    answered = context_with_results(10, answered=True)
    assert sim.plan(request(answered)) == [
        text(f"Understood. (Simulated reply to: {TASK!r}.)"),
    ]
    follow_up = answered.extend([Message(role="user", content="Thanks! And tomorrow?")])
    assert sim.plan(request(follow_up)) == [
        text("Understood. (Simulated reply to: 'Thanks! And tomorrow?'.)"),
    ]
    # More results than the script has calls: the script is over too.
    [item] = sim.plan(request(context_with_results(11)))
    assert not item.is_call and item.text.startswith("Understood.")


def test_forced_tool_choice_synthesizes_schema_valid_arguments_for_an_unscripted_tool() -> None:
    sim = engine()
    for results in (0, 3, 4, 10):
        planned = sim.plan(
            request(
                context_with_results(results),
                tools=(WEATHER, LOOKUP),
                tool_choice="function",
                forced_function="lookup",
            )
        )
        calls = [item for item in planned if item.is_call]
        assert [call.name for call in calls] == ["lookup"]
        arguments = json.loads(calls[0].text)
        check_schema(LOOKUP_SCHEMA, arguments)
        assert arguments["mode"] == "fast"  # deterministic: the first enum value
    # Forcing the scripted tool keeps the scripted call (only one).
    planned = sim.plan(
        request(
            context_with_results(3),
            tool_choice="function",
            forced_function="get_weather",
        )
    )
    assert planned == [text("Checking step 4."), weather("Lima")]


def test_tool_choice_none_gives_text_only() -> None:
    sim = engine()
    for results in range(12):
        planned = sim.plan(request(context_with_results(results), tool_choice="none"))
        assert planned and not any(item.is_call for item in planned)
    assert sim.plan(request(context_with_results(0), tool_choice="none")) == [
        text("Checking step 1.")
    ]
    [partial] = sim.plan(request(context_with_results(4), tool_choice="none"))
    assert partial.text.startswith("Understood.")


def test_tools_that_are_not_offered_are_never_called() -> None:
    sim = engine()
    for results in range(12):
        for tools in ((), (LOOKUP,)):
            planned = sim.plan(request(context_with_results(results), tools=tools))
            assert not any(item.is_call for item in planned), (results, tools)
            assert planned
        required = sim.plan(
            request(context_with_results(results), tools=(LOOKUP,), tool_choice="required")
        )
        assert [item.name for item in required if item.is_call] == ["lookup"]


def test_parallel_tool_calls_false_gives_one_call_at_a_time() -> None:
    sim = engine()
    first = sim.plan(request(context_with_results(3), parallel_tool_calls=False))
    assert first == [text("Checking step 4."), weather("Lima")]
    second = sim.plan(request(context_with_results(4), parallel_tool_calls=False))
    assert second == [weather("Tokyo")]
    assert sim.plan(request(context_with_results(3))) == [
        text("Checking step 4."),
        weather("Lima"),
        weather("Tokyo"),
    ]


# -- generate: how it is streamed --------------------------------------------------------------


async def test_generate_streams_the_plan_item_by_item() -> None:
    sim = engine()
    req = request(context_with_results(3))
    outputs = await generate(sim, req)
    kinds = [type(out) for out in outputs]
    assert kinds[0] is StartText
    starts = [out for out in outputs if isinstance(out, StartText | StartCall)]
    assert [getattr(start, "name", None) for start in starts] == [
        None,
        "get_weather",
        "get_weather",
    ]
    assert kinds.count(EndItem) == 3
    items = output_items(outputs)
    assert [getattr(item, "text", None) or item.arguments for item in items] == [  # type: ignore[union-attr]
        "Checking step 4.",
        '{"city":"Lima"}',
        '{"city":"Tokyo"}',
    ]
    done = finish(outputs)
    assert done.incomplete_reason is None
    assert done.usage.output_tokens == kinds.count(Delta)
    assert done.usage.input_tokens == req.context.tokens
    assert all(len(out.text) <= 4 for out in outputs if isinstance(out, Delta))


async def test_generation_is_deterministic() -> None:
    req = request(context_with_results(3), instructions="Be brief.")
    first = await generate(engine(), req)
    second = await generate(engine(), req)
    assert first == second  # two fresh engines: identical stream, usage included
    sim = engine()
    once = await generate(sim, req)
    again = await generate(sim, req)
    assert once[:-1] == again[:-1]  # same engine: same stream, only the cache hit differs
    assert finish(once).usage.cached_tokens == 0
    assert finish(again).usage.cached_tokens == req.context.tokens
    assert sim.plan(req) == engine().plan(req)


async def test_prefix_cache_hits_for_continuations_and_full_resends() -> None:
    sim = engine()
    first_context = context_with_results(0)
    first = await generate(sim, request(first_context))
    assert finish(first).usage.cached_tokens == 0
    after_first = first_context.extend(output_items(first))
    result = FunctionCallOutput(call_id="call_1", output="sunny")

    continued = after_first.extend([result])
    second = await generate(sim, request(continued, processed_tokens=1))
    assert finish(second).usage.cached_tokens == after_first.tokens > 0
    assert output_items(second)[1] == FunctionCall(  # the scenario moved on: turn 1
        call_id="call_1", name="get_weather", arguments='{"city":"Rome"}'
    )

    # The same history re-sent in full (a stateless client) hits the same prefix.
    resent = Conversation.start([*after_first.all_items(), result])
    assert resent.prefix_key == continued.prefix_key
    fresh = engine()
    await generate(fresh, request(first_context))
    third = await generate(fresh, request(resent))
    assert finish(third).usage.cached_tokens == after_first.tokens

    # A conversation the engine never saw misses.
    other = Conversation.start([Message(role="user", content="Something else entirely.")])
    assert finish(await generate(sim, request(other))).usage.cached_tokens == 0


async def test_max_output_tokens_truncates_with_incomplete_reason() -> None:
    sim = engine()
    outputs = await generate(sim, request(context_with_results(0), max_output_tokens=2))
    assert outputs[:4] == [StartText(), Delta("Chec"), Delta("king"), EndItem()]
    assert not any(isinstance(out, StartCall) for out in outputs)
    done = finish(outputs)
    assert done.incomplete_reason == "max_output_tokens"
    assert done.usage.output_tokens == 2
    roomy = await generate(sim, request(context_with_results(0), max_output_tokens=1000))
    assert finish(roomy).incomplete_reason is None


# -- latency, on a fake clock -----------------------------------------------------------------


PROFILE = LatencyProfile(
    name="test",
    ttft_s=0.25,
    decode_tokens_per_s=50.0,
    prefill_tokens_per_s=2000.0,
    service_overhead_s=0.02,
    service_s_per_1k_tokens=0.5,
)


async def test_latency_adds_up_on_a_fake_clock() -> None:
    """Service time, then TTFT with prefill of the uncached prompt, then one interval per
    further token: the first token is out at ``service + ttft + prefill``."""
    clock = FakeClock()
    sim = engine(PROFILE, clock=clock, sleep=clock.sleep)
    context = context_with_results(3)
    outputs = await generate(sim, request(context, processed_tokens=context.tokens))
    tokens = sum(isinstance(out, Delta) for out in outputs)
    assert tokens == finish(outputs).usage.output_tokens
    first_token = 0.02 + 0.5 * context.tokens / 1000 + 0.25 + context.tokens / 2000
    assert len(clock.sleeps) == tokens
    assert clock.sleeps[0] == pytest.approx(first_token)
    assert clock.sleeps[1:] == pytest.approx([1 / 50] * (tokens - 1))
    assert sum(clock.sleeps) == pytest.approx(first_token + (tokens - 1) / 50)

    # A continuation: service time only for the new items, prefill only for the uncached
    # suffix (the first turn's prompt and output are in the prefix cache).
    clock.sleeps.clear()
    after = context.extend(output_items(outputs))
    new_items = [FunctionCallOutput(call_id="call_x", output="sunny")] * 2
    continued = after.extend(new_items)
    processed = continued.tokens - after.tokens
    outputs = await generate(sim, request(continued, processed_tokens=processed))
    tokens = sum(isinstance(out, Delta) for out in outputs)
    assert finish(outputs).usage.cached_tokens == after.tokens
    first_token = 0.02 + 0.5 * processed / 1000 + 0.25 + (continued.tokens - after.tokens) / 2000
    assert clock.sleeps[0] == pytest.approx(first_token)
    assert sum(clock.sleeps) == pytest.approx(first_token + (tokens - 1) / 50)


async def test_each_item_begins_with_its_first_token_on_a_fake_clock() -> None:
    """As with a real model, an item is announced when its first token exists (only a token
    says whether it is text or a call): never before the first token's time."""
    clock = FakeClock()
    sim = engine(PROFILE, clock=clock, sleep=clock.sleep)
    start = clock.now
    timeline = [(out, clock.now) async for out in steps(sim, request(context_with_results(3)))]
    starts = [
        index for index, (out, _) in enumerate(timeline) if isinstance(out, StartText | StartCall)
    ]
    assert len(starts) == 3
    for index in starts:
        following, at = timeline[index + 1]
        assert isinstance(following, Delta) and at == timeline[index][1]  # with its first token
    assert timeline[starts[0]][1] - start == pytest.approx(clock.sleeps[0])  # after TTFT


async def test_zero_profile_never_sleeps() -> None:
    clock = FakeClock()
    sim = engine(get_profile("zero"), clock=clock, sleep=clock.sleep)
    outputs = await generate(sim, request(Conversation.start([Message(role="user", content="x")])))
    assert finish(outputs)
    assert clock.sleeps == []
