"""Per-step routing: the digest rule, each model's own chain, and chains turned off.

The rule is pinned without sockets (a policy sees a :class:`TurnState` and returns a request;
its hold on an answer sees scripted events); end to end, two simulated models on one loopback
gateway play the generic mode, and every request the runner hands the transport is kept, so
what each switch sent is checked exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest

from hotloop.backends.sim import SimBackend, model_id
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Agent, RouteTurns, Runner, RunResult, TurnState, TurnTimeout, tool
from hotloop.sim.scenario import load_scenario
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.trace.spans import spans_from_result, steps_from_spans
from hotloop.transport import ModelRequest, PushingTransport, TransportStats, connect
from hotloop.transport.base import OnEvent, RequestTimings
from hotloop.wire.events import (
    Event,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    ResponseCompleted,
    ResponseCreated,
)
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Message, Reasoning
from hotloop.wire.responses import ResponseObject
from support import RecordingTransport

TURNS = 4
SMALL = model_id("small", f"generic:{TURNS}")
LARGE = model_id("large", f"generic:{TURNS}")

USER = Message(role="user", content="look into it")
CALL = FunctionCall(call_id="c1", name="lookup", arguments="{}")
OUTPUT = FunctionCallOutput(call_id="c1", output="found it")


def state(request: ModelRequest, turn: int = 2, attempt: int = 1) -> TurnState:
    return TurnState(Agent(LARGE), turn, attempt, request)


def test_digest_sends_tool_results_to_the_small_model_and_the_rest_to_the_large_one() -> None:
    policy = RouteTurns.digest(SMALL, LARGE)
    first = ModelRequest(model=LARGE, history=(USER,))
    assert policy.before_request(state(first, turn=1)) is None  # already the large model
    digest = ModelRequest(model=LARGE, history=(USER, CALL, OUTPUT), new_from=2)
    routed = policy.before_request(state(digest))
    assert routed is not None and routed.model == SMALL
    # A re-sent attempt keeps the model its first attempt chose.
    assert policy.before_request(state(digest, attempt=2)) is None
    # A message among the new items (a follow-up, a request to fix the answer): large.
    mixed = ModelRequest(model=SMALL, history=(USER, CALL, OUTPUT, USER), new_from=2)
    back = policy.before_request(state(mixed))
    assert back is not None and back.model == LARGE
    # No new input at all is no digest either; ``large=None`` leaves the turn on the agent's
    # model.
    empty = ModelRequest(model=LARGE, history=(USER, CALL), new_from=2)
    assert RouteTurns.digest(SMALL).before_request(state(empty)) is None
    assert RouteTurns.digest(SMALL).before_request(state(digest)) == routed
    assert RouteTurns.digest(SMALL).keep_chains
    assert not RouteTurns.digest(SMALL, keep_chains=False).keep_chains
    # The answer comes from the large model unless asked otherwise: only then does the policy
    # wrap the call.
    assert RouteTurns.digest(SMALL, LARGE).answers == {SMALL: LARGE}
    assert RouteTurns.digest(SMALL).sends
    assert RouteTurns.digest(SMALL, answer="small").answers == {}
    assert not RouteTurns.digest(SMALL, answer="small").sends
    assert not RouteTurns(lambda state: None).sends
    with pytest.raises(ValueError, match="answer"):
        RouteTurns.digest(SMALL, answer="medium")  # type: ignore[arg-type]


def response(status: str = "completed") -> ResponseObject:
    return ResponseObject(id="r", created_at=0, model=SMALL, status=status)


THINKING = Reasoning(id="rs1")
ANSWER = Message(role="assistant", content="done")


class Scripted:
    """A ``send`` that plays scripted events per model and keeps what it was asked to send."""

    def __init__(self, scripts: dict[str, list[Event]]) -> None:
        self.scripts = scripts
        self.sent: list[ModelRequest] = []
        self.cancelled = 0

    async def __call__(
        self, request: ModelRequest, on_event: OnEvent, skip: Collection[str]
    ) -> None:
        self.sent.append(request)
        try:
            for event in self.scripts[request.model]:
                on_event(event)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def hold(scripts: dict[str, list[Event]]) -> tuple[RouteTurns, Scripted, list[Event]]:
    policy = RouteTurns.digest(SMALL, LARGE)
    send = Scripted(scripts)
    seen: list[Event] = []
    digest = ModelRequest(
        model=SMALL,
        history=(USER, CALL, OUTPUT),
        new_from=2,
        previous_response_id="r1",
        timings=RequestTimings(),
    )
    await policy.send(state(digest), digest, seen.append, (), send)
    return policy, send, seen


async def test_a_call_after_reasoning_streams_on_from_the_small_model() -> None:
    created = ResponseCreated(response=response("in_progress"))
    script: list[Event] = [
        created,
        OutputItemAdded(output_index=0, item=THINKING),
        OutputItemAdded(output_index=1, item=CALL),
        ResponseCompleted(response=response()),
    ]
    policy, send, seen = await hold({SMALL: script})
    # Held until the call showed, then handed over whole: reasoning included.
    assert seen == script
    assert [request.model for request in send.sent] == [SMALL]
    assert policy.escalations == 0


async def test_an_answer_after_reasoning_goes_to_the_large_model() -> None:
    small: list[Event] = [
        ResponseCreated(response=response("in_progress")),
        OutputItemAdded(output_index=0, item=THINKING),
        OutputItemAdded(output_index=1, item=ANSWER),
        OutputTextDelta(item_id="m", output_index=1, content_index=0, delta="do"),
        ResponseCompleted(response=response()),
    ]
    large: list[Event] = [
        ResponseCreated(response=response("in_progress")),
        OutputItemAdded(output_index=0, item=ANSWER),
        ResponseCompleted(response=response()),
    ]
    policy, send, seen = await hold({SMALL: small, LARGE: large})
    # Only the large model's events reached the run; the small call was cut at its message.
    assert seen == large
    assert [request.model for request in send.sent] == [SMALL, LARGE]
    assert send.cancelled == 1
    assert policy.escalations == 1 and policy.escalated_s >= 0
    # Outside a run the rerouted request sends the whole history.
    assert send.sent[1].previous_response_id is None
    assert send.sent[1].history == send.sent[0].history


async def test_a_response_that_ends_before_any_item_is_judged_by_its_output() -> None:
    answered = dataclasses.replace(response(), output=(THINKING, ANSWER))
    called = dataclasses.replace(response(), output=(CALL,))
    large: list[Event] = [ResponseCompleted(response=response())]
    policy, send, seen = await hold({SMALL: [ResponseCompleted(response=answered)], LARGE: large})
    assert seen == large and policy.escalations == 1
    policy, send, seen = await hold({SMALL: [ResponseCompleted(response=called)]})
    assert len(seen) == 1 and policy.escalations == 0
    assert [request.model for request in send.sent] == [SMALL]


class Paced(PushingTransport):
    """A transport that plays each model's scripted responses in order; a number in a script
    is a pause of that many seconds."""

    def __init__(self, scripts: dict[str, list[list[Event | float]]]) -> None:
        self.scripts = scripts
        self.stats = TransportStats()

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        for step in self.scripts[request.model].pop(0):
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                on_event(step)

    async def close(self) -> None:
        return None


def called(call_id: str, index: int = 0) -> list[Event]:
    call = FunctionCall(call_id=call_id, name="lookup", arguments='{"query": "q"}')
    return [
        OutputItemAdded(output_index=index, item=call),
        OutputItemDone(output_index=index, item=call),
    ]


async def test_events_a_policy_holds_count_for_the_turns_deadlines() -> None:
    """The small model reasons for 0.8 s before its call; its events are held from the run
    until the call shows, yet they arrive, so a 0.3 s first-event deadline does not fire. A
    model that then goes silent still meets the stall deadline, and the turn, of which
    nothing reached the run, is safe to send again."""
    created = ResponseCreated(response=response("in_progress"))
    done = ResponseCompleted(response=response())
    thinking: list[Event | float] = [created]
    for index in range(4):
        reasoning = Reasoning(id=f"rs{index}")
        added = OutputItemAdded(output_index=index, item=reasoning)
        thinking += [0.2, added, OutputItemDone(output_index=index, item=reasoning)]
    answer = [
        created,
        OutputItemAdded(output_index=0, item=ANSWER),
        OutputItemDone(output_index=0, item=ANSWER),
        done,
    ]
    client = Paced(
        {
            LARGE: [[created, *called("c1"), done], answer],
            SMALL: [[*thinking, *called("c2", 4), done], answer],
        }
    )
    route = RouteTurns.digest(SMALL, LARGE)
    agent = Agent(LARGE, tools=[lookup], policies=[route], first_event_timeout=0.3)
    result = await Runner.run(agent, "look into it", client=client)
    assert [step.request_model for step in result.steps] == [LARGE, SMALL, LARGE]
    assert result.steps[1].attempts == 1 and result.final_output == "done"

    silent = Paced({LARGE: [[created, *called("c1"), done]], SMALL: [[created, 1.0]]})
    agent = Agent(LARGE, tools=[lookup], policies=[route], stall_timeout=0.3, max_attempts=1)
    with pytest.raises(TurnTimeout) as raised:
        await Runner.run(agent, "look into it", client=silent)
    assert raised.value.code == "stall_timeout" and raised.value.replay_safe


PREAMBLE = Message(role="assistant", content="Now let me look.")
#: A run whose model wrote a message before its call: it writes preambles.
NARRATED = (USER, Message(role="assistant", content="First, the logs."), CALL, OUTPUT)


async def preamble_hold(
    small: list[Event], history: tuple[Any, ...] = NARRATED, preamble_chars: int = 40
) -> tuple[RouteTurns, Scripted, list[Event]]:
    policy = RouteTurns.digest(SMALL, LARGE, preamble_chars=preamble_chars)
    large: list[Event] = [ResponseCompleted(response=response())]
    send = Scripted({SMALL: small, LARGE: large})
    seen: list[Event] = []
    digest = ModelRequest(model=SMALL, history=history, new_from=len(history) - 1)
    await policy.send(state(digest), digest, seen.append, (), send)
    return policy, send, seen


def message_events(text: str, index: int = 0) -> list[Event]:
    """A message streamed as it is: added empty, its text in two deltas, done."""
    half = len(text) // 2
    return [
        OutputItemAdded(output_index=index, item=Message(role="assistant", content="")),
        OutputTextDelta(item_id="m", output_index=index, content_index=0, delta=text[:half]),
        OutputTextDelta(item_id="m", output_index=index, content_index=0, delta=text[half:]),
        OutputItemDone(output_index=index, item=Message(role="assistant", content=text)),
    ]


async def test_a_short_message_before_a_call_is_a_preamble_once_the_run_showed_the_habit() -> None:
    created = ResponseCreated(response=response("in_progress"))
    script: list[Event] = [
        created,
        *message_events(PREAMBLE.text),
        OutputItemAdded(output_index=1, item=CALL),
        ResponseCompleted(response=dataclasses.replace(response(), output=(PREAMBLE, CALL))),
    ]
    policy, send, seen = await preamble_hold(script)
    # Held until the call showed, then handed over whole, the preamble included.
    assert seen == script and policy.escalations == 0
    assert [request.model for request in send.sent] == [SMALL]
    # A run that never wrote a message before a call: the same message is taken for an
    # answer at once (and so it is with preamble_chars=0).
    for history, chars in (((USER, CALL, OUTPUT), 40), (NARRATED, 0)):
        policy, send, seen = await preamble_hold(script, history, chars)
        assert policy.escalations == 1 and [r.model for r in send.sent] == [SMALL, LARGE]
        assert seen == [ResponseCompleted(response=response())]


async def test_a_message_too_long_for_a_preamble_or_ending_the_response_is_an_answer() -> None:
    created = ResponseCreated(response=response("in_progress"))
    long = "The answer: " + "x" * 60  # over 40 characters: cut at its second delta
    policy, send, seen = await preamble_hold([created, *message_events(long)])
    assert policy.escalations == 1 and send.cancelled == 1
    assert seen == [ResponseCompleted(response=response())]
    ended = dataclasses.replace(response(), output=(PREAMBLE,))
    short = [created, *message_events(PREAMBLE.text), ResponseCompleted(response=ended)]
    policy, send, seen = await preamble_hold(short)
    assert policy.escalations == 1 and seen == [ResponseCompleted(response=response())]


#: Every execution of ``lookup``, in order.
LOOKUPS: list[str] = []


@tool(pure=True)
async def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    LOOKUPS.append(query)
    return f"found {query}: " + "x" * 200


@pytest.fixture
async def two_models() -> AsyncIterator[GatewayServer]:
    """A gateway serving ``hotloop-sim@small`` and ``hotloop-sim@large`` (``zero`` profile)."""
    backend = SimBackend(profile="zero", models={"small": "zero", "large": "zero"})
    async with GatewayServer(backend, GatewayConfig()) as server:
        yield server


async def run(
    gateway: GatewayServer, route: RouteTurns, **connect_args: Any
) -> tuple[RunResult, list[ModelRequest]]:
    agent = Agent(LARGE, tools=[lookup], max_turns=TURNS + 2, policies=[route])
    client: Any = RecordingTransport(connect(gateway.base_url, **connect_args))
    async with client.inner:
        result = await Runner.run(agent, "look into it", client=client)
    return result, client.sent


def models(result: RunResult) -> list[str | None]:
    return [step.response_model for step in result.steps]


async def test_digest_routes_the_first_turn_large_and_the_digest_turns_small(
    two_models: GatewayServer,
) -> None:
    result, sent = await run(two_models, RouteTurns.digest(SMALL, answer="small"))
    assert [request.model for request in sent] == [LARGE] + [SMALL] * TURNS
    assert models(result) == [LARGE] + [SMALL] * TURNS
    assert result.final_output.startswith(f"Done after {TURNS} tool results")
    # The small model's first turn continues the run's last response (the large model's).
    assert sent[1].previous_response_id == result.steps[0].response_id
    assert all(step.incremental for step in result.steps[1:])
    assert all(step.rerouted_from is None for step in result.steps)


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_the_answer_comes_from_the_large_model(
    two_models: GatewayServer, transport: str
) -> None:
    route = RouteTurns.digest(SMALL)
    connect_args: dict[str, Any] = {"transport": transport}
    if transport == "http":
        connect_args["incremental"] = True
    LOOKUPS.clear()
    result, sent = await run(two_models, route, **connect_args)
    steps = result.steps
    # The tool turns on the small model; its answer was cut short and the large model gave it.
    assert [request.model for request in sent] == [LARGE] + [SMALL] * TURNS + [LARGE]
    assert models(result) == [LARGE] + [SMALL] * (TURNS - 1) + [LARGE]
    assert result.final_output.startswith(f"Done after {TURNS} tool results")
    assert result.last_response_id == steps[-1].response_id
    # Each tool ran once: one call per tool turn, none from the answer given up.
    assert len(LOOKUPS) == TURNS
    assert sum(len(step.tools) for step in steps) == TURNS
    assert route.escalations == 1 and route.escalated_s > 0
    # The answer continues the large model's own chain: turn 1's response, with every item
    # after it; on the connection that still holds it.
    assert sent[-1].previous_response_id == steps[0].response_id
    assert sent[-1].new_from == steps[1].input_from
    assert steps[-1].incremental
    # The step record: one attempt, the model given up and when; the first event is the
    # large model's (nothing of the small call reached the run).
    last = steps[-1]
    assert last.attempts == 1
    assert last.rerouted_from == SMALL
    assert last.rerouted_ns is not None and last.first_event_ns is not None
    assert last.request_sent_ns < last.rerouted_ns <= last.first_event_ns
    assert all(step.rerouted_from is None for step in steps[:-1])
    # Each step names the model its request went to: the answer's, the model that took over.
    assert [step.request_model for step in steps] == [LARGE] + [SMALL] * (TURNS - 1) + [LARGE]
    # The trace shows it too, and reads back.
    spans = [span for span in spans_from_result(result) if span.name == "model.request"]
    assert spans[-1].attributes["hotloop.rerouted_from"] == SMALL
    after = spans[-1].attributes["hotloop.rerouted_after_ns"]
    assert after == last.rerouted_ns - last.request_sent_ns
    assert all("hotloop.rerouted_from" not in span.attributes for span in spans[:-1])
    assert [span.attributes["gen_ai.request.model"] for span in spans] == [
        step.request_model for step in steps
    ]
    read = steps_from_spans(spans_from_result(result))
    assert read[-1].rerouted_from == SMALL and read[-1].request_model == LARGE
    assert read[-1].rerouted_ns == read[-1].request_sent_ns + after
    # One escalation per run: a second run on the same policy adds one.
    await run(two_models, route, **connect_args)
    assert route.escalations == 2


async def test_each_model_continues_its_own_chain(two_models: GatewayServer) -> None:
    # Turns 1, 3, 5 on the large model, 2 and 4 on the small one.
    route = RouteTurns(lambda state: SMALL if state.turn % 2 == 0 else LARGE)
    result, sent = await run(two_models, route)
    steps, items = result.steps, result.items
    assert models(result) == [LARGE, SMALL, LARGE, SMALL, LARGE]
    # Turn 3 goes back to the large model: it continues turn 1's response, not turn 2's, and
    # sends only the items after it (turn 1's tool result, turn 2's call and its result).
    assert sent[2].previous_response_id == steps[0].response_id
    assert sent[2].new_from == steps[1].input_from
    # (The request's history is the run's own list, which grew since: cut at turn 3's input.)
    new = items[sent[2].new_from : steps[2].output_from]
    assert [item.type for item in new] == [
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert sent[3].previous_response_id == steps[1].response_id
    assert sent[4].previous_response_id == steps[2].response_id
    # Every switch stays incremental on the one WebSocket, and costs more than one result.
    assert all(step.incremental for step in steps[1:])
    assert steps[2].request_bytes > steps[1].request_bytes


async def test_without_chains_a_switch_sends_the_whole_history(two_models: GatewayServer) -> None:
    route = RouteTurns(lambda state: SMALL if state.turn in (2, 3) else LARGE, keep_chains=False)
    result, sent = await run(two_models, route)
    steps = result.steps
    assert models(result) == [LARGE, SMALL, SMALL, LARGE, LARGE]
    # Turns 2 and 4 switched: no response to continue, the whole history went.
    for switched in (1, 3):
        assert sent[switched].previous_response_id is None
        assert not steps[switched].incremental
    # Turns 3 and 5 stayed on the model of the turn before: incremental as always.
    assert sent[2].previous_response_id == steps[1].response_id
    assert sent[4].previous_response_id == steps[3].response_id
    assert steps[2].incremental and steps[4].incremental
    assert steps[3].request_bytes > steps[2].request_bytes > 0
    # The trace shows each turn's model (asked for, and answering) and what it sent.
    spans = [span for span in spans_from_result(result) if span.name == "model.request"]
    assert [step.request_model for step in steps] == [LARGE, SMALL, SMALL, LARGE, LARGE]
    assert [span.attributes["gen_ai.request.model"] for span in spans] == [
        step.request_model for step in steps
    ]
    assert [span.attributes["gen_ai.response.model"] for span in spans] == models(result)
    assert [span.attributes["hotloop.request.incremental"] for span in spans] == [
        step.incremental for step in steps
    ]
    assert [span.attributes["hotloop.request.bytes"] for span in spans] == [
        step.request_bytes for step in steps
    ]
    assert all("hotloop.usage.cached_tokens" in span.attributes for span in spans)


async def test_with_chains_the_same_switches_stay_incremental_over_http(
    two_models: GatewayServer,
) -> None:
    route = RouteTurns(lambda state: SMALL if state.turn in (2, 3) else LARGE)
    result, sent = await run(two_models, route, transport="http", incremental=True)
    assert models(result) == [LARGE, SMALL, SMALL, LARGE, LARGE]
    # Turn 4 goes back to the large model's own response over HTTP too (the server stored it).
    assert sent[3].previous_response_id == result.steps[0].response_id
    assert all(step.incremental for step in result.steps[1:])


async def test_a_model_that_writes_preambles_keeps_its_digest_turns_on_the_small_model(
    two_models: GatewayServer,
) -> None:
    # The coding scenario opens most turns with a short message ("Now let me reproduce the
    # failure.") before its calls. The first turn (large) shows the habit; from then on a
    # digest turn's preamble is held, the call after it keeps the turn on the small model,
    # and only the final answer goes to the large one.
    coding = load_scenario("coding")
    small, large = model_id("small", "coding"), model_id("large", "coding")
    escalations = {}
    for chars in (400, 0):
        log = ExecutionLog()
        route = RouteTurns.digest(small, large, preamble_chars=chars)
        tools = scenario_tools(coding, time_scale=0, log=log)
        agent = Agent(large, coding.instructions, tools, policies=[route], max_turns=30)
        async with connect(two_models.base_url) as client:
            result = await Runner.run(agent, coding.task, client=client)
        assert check_run(coding, result, log) == ()
        escalations[chars] = route.escalations
        if chars:
            answered = [step.response_model for step in result.steps]
            assert answered == [large] + [small] * (len(coding.turns) - 2) + [large]
            assert result.steps[-1].rerouted_from == small
    # Without preambles every digest turn that opens with a message went to the large model.
    assert escalations[400] == 1 < escalations[0]


async def test_a_continued_conversation_goes_on_with_each_models_chain(
    two_models: GatewayServer,
) -> None:
    # The first run ends on the small model (answer="small"); the follow-up's first turn
    # (a user message: large) continues the large model's own last response of that run,
    # sending everything after it, not the small model's answer.
    route = RouteTurns.digest(SMALL, answer="small")
    agent = Agent(LARGE, tools=[lookup], max_turns=2 * TURNS + 4, policies=[route])
    client: Any = RecordingTransport(connect(two_models.base_url))
    async with client.inner:
        first = await Runner.run(agent, "look into it", client=client)
        sent_before = len(client.sent)
        second = await Runner.run(agent, "and once more", client=client, previous=first)
    sent = client.sent[sent_before:]
    assert [step.request_model for step in first.steps] == [LARGE] + [SMALL] * TURNS
    assert sent[0].model == LARGE
    assert sent[0].previous_response_id == first.steps[0].response_id
    assert sent[0].new_from == first.steps[1].input_from
    assert second.steps[0].incremental and second.final_output
