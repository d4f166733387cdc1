"""Policies around a model call: fallbacks, timeouts that act, per-turn routing.

The decisions are pure (a policy sees a :class:`TurnState` and returns a request or nothing),
so they are pinned without sockets; end to end, a fallback and a retried stall run over a real
gateway, and every tool still runs once.
"""

from __future__ import annotations

from typing import Any

import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import (
    Agent,
    Fallback,
    MessageStarted,
    ModelError,
    RetryOnTimeout,
    RouteTurns,
    RunFinished,
    Runner,
    TurnState,
)
from hotloop.runtime.runner import TurnTimeout
from hotloop.sim.latency import get_profile
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.testing.faults import Fault, FaultProxy
from hotloop.transport import ModelRequest, TransportError, connect
from support import RecordingTransport, ten_turn_scenario

MODEL = "hotloop-sim"
TEN = ten_turn_scenario()


def state(request: ModelRequest, failure: Any = None, **fields: Any) -> TurnState:
    agent = Agent(MODEL)
    return TurnState(agent, fields.get("turn", 2), fields.get("attempt", 1), request, failure)


REQUEST = ModelRequest(model=MODEL, history=(), previous_response_id="resp_1")


def test_fallback_walks_its_chain_and_sticks() -> None:
    policy = Fallback("hotloop-sim:small", "hotloop-sim:tiny")
    lost = TransportError("gone", code="connection_lost")
    first = state(REQUEST, lost)
    to_small = policy.after_failure(first)
    assert to_small is not None and to_small.model == "hotloop-sim:small"
    # The fallback continues no response of the failed model: the whole history goes.
    assert to_small.previous_response_id is None
    to_tiny = policy.after_failure(state(to_small, lost))
    assert to_tiny is not None and to_tiny.model == "hotloop-sim:tiny"
    assert policy.after_failure(state(to_tiny, lost)) is None  # nothing left
    # Sticky: the run's later turns go to the fallback (kept in the run's memo).
    later = TurnState(Agent(MODEL), 3, 1, REQUEST, memo=first.memo)
    routed = policy.before_request(later)
    assert routed is not None and routed.model == "hotloop-sim:small"
    assert (
        Fallback("x", sticky=False).before_request(TurnState(Agent(MODEL), 3, 1, REQUEST)) is None
    )


def test_fallback_codes_filter_failures() -> None:
    policy = Fallback("hotloop-sim:small", codes={"rate_limited"})
    assert policy.after_failure(state(REQUEST, TransportError("x", code="server_error"))) is None
    assert policy.after_failure(state(REQUEST, ModelError("x", code="rate_limited"))) is not None


def test_retry_on_timeout_acts_on_stalls_but_never_on_the_turn_deadline() -> None:
    policy = RetryOnTimeout()
    stalled = TurnTimeout("stalled", code="stall_timeout")
    assert policy.after_failure(state(REQUEST, stalled)) is REQUEST
    assert policy.after_failure(state(REQUEST, TurnTimeout("x", code="turn_timeout"))) is None
    assert RetryOnTimeout(codes={"turn_timeout"}).codes == frozenset()
    assert policy.after_failure(state(REQUEST, TransportError("x", code="other"))) is None


def test_route_turns_chooses_per_turn_and_keeps_re_sends_where_they_were() -> None:
    policy = RouteTurns(lambda s: "hotloop-sim:small" if s.turn > 1 else None)
    assert policy.before_request(state(REQUEST, turn=1)) is None
    routed = policy.before_request(state(REQUEST, turn=2))
    assert routed is not None and routed.model == "hotloop-sim:small"
    assert policy.before_request(state(REQUEST, turn=2, attempt=2)) is None


async def test_a_model_that_fails_falls_back_for_the_rest_of_the_run(
    gateway: GatewayServer,
) -> None:
    log = ExecutionLog()
    tools = scenario_tools(TEN, time_scale=0, log=log)
    broken = Agent("hotloop-sim:no-such-model", TEN.instructions, tools)
    async with connect(gateway.base_url) as client:
        with pytest.raises(TransportError) as caught:
            await Runner.run(broken, TEN.task, client=client)
        assert caught.value.code == "model_not_found"
        agent = Agent(
            "hotloop-sim:no-such-model", TEN.instructions, tools, policies=[Fallback(MODEL)]
        )
        result = await Runner.run(agent, TEN.task, client=client)
    assert check_run(TEN, result, log) == ()
    assert [step.attempts for step in result.steps] == [2] + [1] * (len(TEN.turns) - 1)
    assert all(step.response_model == MODEL for step in result.steps)
    # After the fallback, the run continues incrementally on the fallback's own chain.
    assert all(step.incremental for step in result.steps[1:])


#: 10 ms per token: a turn streams for long enough to be stalled in the middle.
STREAMING = get_profile("zero").override(decode_tokens_per_s=100)


async def test_a_stalled_turn_is_sent_again_and_no_tool_runs_twice(gateway_factory: Any) -> None:
    async def run(policies: list[Any]) -> tuple[Any, ExecutionLog]:
        log = ExecutionLog()
        tools = scenario_tools(TEN, time_scale=0, log=log)
        agent = Agent(MODEL, TEN.instructions, tools, stall_timeout=0.3, policies=policies)
        async with (
            gateway_factory(profile=STREAMING) as gateway,
            FaultProxy("127.0.0.1", gateway.port) as proxy,
        ):
            # HTTP: the re-sent turn goes out on a new connection, past the stalled one.
            async with connect(f"{proxy.url}/v1", transport="http") as client:
                outcome: Any = None
                stalled: list[int] = []  # once: the re-sent turn streams again
                try:
                    async for event in Runner.run_stream(agent, TEN.task, client=client):
                        if isinstance(event, MessageStarted) and event.turn == 2 and not stalled:
                            stalled.append(proxy.inject(Fault.STALL, seconds=5))
                        elif isinstance(event, RunFinished):
                            outcome = event.result
                except TurnTimeout as exc:
                    outcome = exc
        assert stalled == [1]
        return outcome, log

    failed, _ = await run([])
    assert isinstance(failed, TurnTimeout) and failed.code == "stall_timeout"
    result, log = await run([RetryOnTimeout()])
    assert check_run(TEN, result, log) == ()
    assert result.steps[1].attempts == 2
    assert set(log.by_arguments().values()) == {1}


async def test_switching_back_to_a_model_continues_its_own_chain(gateway: GatewayServer) -> None:
    # Two model ids playing the same script: odd turns on one, even turns on the other.
    other = f"{MODEL}:{TEN.name}"
    route = RouteTurns(lambda state: other if state.turn % 2 == 0 else None)
    log = ExecutionLog()
    agent = Agent(
        MODEL, TEN.instructions, scenario_tools(TEN, time_scale=0, log=log), policies=[route]
    )
    client = RecordingTransport(connect(gateway.base_url))
    async with client.inner:
        result = await Runner.run(agent, TEN.task, client=client)
    assert check_run(TEN, result, log) == ()
    sent, steps = client.sent, result.steps
    assert [request.model for request in sent[:4]] == [MODEL, other, MODEL, other]
    # Turn 2 is the other model's first: it continues the run's last response.
    assert sent[1].previous_response_id == steps[0].response_id
    # Turn 3 goes back: it continues turn 1's response, not turn 2's, with everything since.
    assert sent[2].previous_response_id == steps[0].response_id
    assert sent[3].previous_response_id == steps[1].response_id
    # ... so its new items start where turn 2's did: right after turn 1's output.
    assert sent[2].new_from == sent[1].new_from < sent[3].new_from
    # Over one WebSocket both chains live on the connection: every switch stays incremental.
    assert all(step.incremental for step in steps[1:])
