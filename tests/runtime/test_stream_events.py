"""What ``Runner.run_stream`` reports, and when.

A call's ``ToolCallFinished`` comes the moment its tool finishes, while the model may still be
streaming the rest of the turn (not when the turn ends), and streamed text is bracketed by
``MessageStarted`` and ``MessageFinished``. Orders of events are checked, never times.
"""

from __future__ import annotations

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import (
    Agent,
    MessageFinished,
    MessageStarted,
    ModelTurnFinished,
    RunEvent,
    RunFinished,
    Runner,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolEffects, ToolSpec, Turn
from hotloop.testing import ExecutionLog, scenario_tools
from hotloop.transport import connect

MODEL = "hotloop-sim"
#: 5 ms per token: the long second call streams for a while after the first is complete.
SLOW = get_profile("zero").override(decode_tokens_per_s=200)
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
SCENARIO = Scenario(
    name="stream",
    turns=(
        Turn(
            calls=(
                ScriptedCall("lookup", '{"q":"a"}'),
                ScriptedCall("lookup", '{"q":"' + "b" * 400 + '"}'),
            )
        ),
        Turn(text="All done, both looked up."),
    ),
    tools={"lookup": ToolSpec("lookup", "Look up.", SCHEMA, effects=ToolEffects(pure=True))},
    task="Look both up.",
)


async def stream_events() -> list[RunEvent]:
    async with GatewayServer(SimBackend(SCENARIO, SLOW), GatewayConfig()) as server:
        tools = scenario_tools(SCENARIO, time_scale=0, log=ExecutionLog())
        client = connect(server.base_url)
        try:
            agent = Agent(MODEL, tools=tools)
            return [event async for event in Runner.run_stream(agent, SCENARIO.task, client=client)]
        finally:
            await client.close()


async def test_a_call_is_reported_finished_when_its_tool_finishes_not_when_the_turn_ends() -> None:
    events = await stream_events()
    kinds = [type(event).__name__ for event in events]
    first_turn_end = next(
        i for i, e in enumerate(events) if isinstance(e, ModelTurnFinished) and e.turn == 1
    )
    finished = [i for i, e in enumerate(events) if isinstance(e, ToolCallFinished)]
    started = [i for i, e in enumerate(events) if isinstance(e, ToolCallStarted)]
    assert len(finished) == len(started) == 2, kinds
    # The short call finished while the long one was still streaming.
    assert finished[0] < first_turn_end, kinds
    assert started[0] < finished[0]
    first = events[finished[0]]
    assert isinstance(first, ToolCallFinished)
    assert first.name == "lookup" and first.error is None and first.turn == 1
    # Each call is reported finished once, and both before the next turn starts.
    second_turn_end = next(
        i for i, e in enumerate(events) if isinstance(e, ModelTurnFinished) and e.turn == 2
    )
    assert finished[1] < second_turn_end


async def test_streamed_text_is_bracketed_by_message_events() -> None:
    events = await stream_events()
    text_events = [e for e in events if isinstance(e, (MessageStarted, TextDelta, MessageFinished))]
    assert isinstance(text_events[0], MessageStarted) and text_events[0].turn == 2
    assert isinstance(text_events[-1], MessageFinished)
    deltas = text_events[1:-1]
    assert deltas and all(isinstance(e, TextDelta) for e in deltas)
    streamed = "".join(e.delta for e in deltas if isinstance(e, TextDelta))
    assert streamed == text_events[-1].text == "All done, both looked up."
    assert isinstance(events[-1], RunFinished)
    assert events[-1].result.final_output == streamed
