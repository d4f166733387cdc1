"""Summarisation requests in simulation: recognised by their metadata, a deterministic summary
of the asked size at the profile's decode speed, and a compacted conversation that still plays
the scenario's next turn."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest, ToolDef
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import get_profile
from hotloop.sim.summary import SUMMARY_TOKENS, is_summary_text, position
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message
from hotloop.wire.responses import ResponseObject
from support import CITIES, WEATHER_TOOL, FakeClock, ten_turn_scenario

MODEL = "ten"
TASK = "Check the weather in ten cities."
WEATHER = ToolDef(WEATHER_TOOL.name, WEATHER_TOOL.parameters, WEATHER_TOOL.description)
SUMMARY = {"hotloop_purpose": "summary"}


def engine(**kwargs: Any) -> SimEngine:
    profile = kwargs.pop("profile", get_profile("zero"))
    return SimEngine({MODEL: ten_turn_scenario()}, profile, generic_model="generic", **kwargs)


def pairs(start: int, count: int) -> list[Item]:
    items: list[Item] = []
    for index in range(start, start + count):
        arguments = json.dumps({"city": (CITIES + ["Tokyo"] * 2)[index]})
        items.append(FunctionCall(call_id=f"c{index}", name="get_weather", arguments=arguments))
        items.append(FunctionCallOutput(call_id=f"c{index}", output="sunny"))
    return items


def request(
    context: Conversation, *, model: str = MODEL, summary: bool = False, **fields: Any
) -> GenerationRequest:
    settings = {"metadata": SUMMARY} if summary else {}
    tools = () if summary else (WEATHER,)
    create = CreateRequest(model=model, input=(), tools=tools, settings=settings, **fields)
    return GenerationRequest(create, context, context.tokens)


def summarised(context: Conversation, tokens: int = 64) -> str:
    """The simulated summary of ``context``."""
    [item] = engine().plan(request(context, summary=True, max_output_tokens=tokens))
    return item.text


def test_a_summary_request_gets_a_summary_of_the_asked_size_and_plays_no_turn() -> None:
    context = Conversation.start([Message("user", TASK), *pairs(0, 5)])
    text = summarised(context, tokens=64)
    assert len(text) == 64 * 4 and text.startswith("[hotloop-sim summary: results=5 answers=0]")
    assert summarised(context, tokens=64) == text, "deterministic"
    [default] = engine().plan(request(context, summary=True))
    assert len(default.text) == SUMMARY_TOKENS * 4
    # Without the metadata, the same conversation plays its scenario turn.
    plain = engine().plan(request(context))
    assert plain[0].text == "Checking step 5." and plain[1].is_call


def test_a_compacted_conversation_plays_the_same_next_turn() -> None:
    sim = engine()
    whole = Conversation.start([Message("user", TASK), *pairs(0, 6)])
    summary = Message("user", "Summary of the earlier part:\n\n" + summarised(whole.extend([])))
    # Compacted after 4 results: the task, the summary of them, the last 2 pairs verbatim.
    older = Conversation.start([Message("user", TASK), *pairs(0, 4)])
    cut = Message("user", "Summary:\n\n" + summarised(older))
    compacted = Conversation.start([Message("user", TASK), cut, *pairs(4, 2)])
    assert position(compacted) == position(whole) == (6, 0)
    assert sim.plan(request(compacted)) == sim.plan(request(whole))
    # Continued incrementally: new segments count on top of the summary's results.
    further = compacted.extend(pairs(6, 1))
    assert sim.plan(request(further)) == sim.plan(request(whole.extend(pairs(6, 1))))
    # A summary of a compacted conversation stands for everything it summarised.
    again = Conversation.start([Message("user", TASK), summary])
    assert position(again) == (6, 0)
    assert "results=7 " in summarised(again.extend(pairs(6, 1)))
    # The generic answer still quotes the user's task, not the summary.
    done = Conversation.start([Message("user", TASK), cut, *pairs(4, 6)])
    [answer] = sim.plan(request(done))
    assert answer.text == "All ten steps are done: the weather is fine everywhere."
    [generic] = sim.plan(request(done, model="generic:3"))
    assert TASK in generic.text and "summary" not in generic.text
    assert generic.text.startswith("Done after 10 tool results.")
    assert is_summary_text(cut.text) and not is_summary_text(TASK)


def test_a_summary_after_the_final_answer_keeps_the_script_over() -> None:
    answered = [Message("user", TASK), *pairs(0, 10), Message("assistant", "done")]
    text = summarised(Conversation.start(answered))
    assert "results=10 answers=1" in text
    compacted = Conversation.start([Message("user", TASK), Message("user", text)])
    assert position(compacted) == (10, 1)
    [reply] = engine().plan(request(compacted))
    assert reply.text.startswith("Understood.")


async def test_a_summary_takes_its_decode_time() -> None:
    clock = FakeClock()
    profile = get_profile("zero").override(decode_tokens_per_s=100)
    sim = engine(profile=profile, clock=clock, sleep=clock.sleep)
    context = Conversation.start([Message("user", TASK), *pairs(0, 3)])
    out = ResponseBuilder(ResponseObject(id="resp_s", created_at=0, model=MODEL, status=""))
    out.start()
    start = clock.now
    async for _ in sim.generate(request(context, summary=True, max_output_tokens=50), out):
        pass
    assert out.usage is not None and out.usage.output_tokens == 50
    assert out.incomplete_reason is None
    assert clock.now - start == pytest.approx(49 / 100)  # the first token, then 49 intervals
