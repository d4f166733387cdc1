"""Recovery over the wire.

The runtime talks to a real gateway through :class:`wsproxy.WebSocketProxy`, which breaks the
path the way deployments do: the socket drops mid-turn, a load balancer fails over to a gateway
connection that does not hold the previous response (``previous_response_not_found``), the
connection reaches its lifetime. In every case the run must end with the same final output and
item history as an undisturbed run, and no write may run twice. Every trigger is a count of
frames, never a time, and every assertion is about frames, counters and items (and one lower
bound: a wait the server asked for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Effects, ModelTurnFinished, RunFinished, Runner, RunResult, Tool
from hotloop.sim.latency import estimate_tokens, get_profile
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn, load_scenario
from hotloop.testing import Execution, ExecutionLog, scenario_tools
from hotloop.transport import TransportError, WebSocketTransport
from hotloop.wire import codec
from hotloop.wire.items import FunctionCallOutput
from support import normalized
from wsproxy import WebSocketProxy

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]

MODEL = "hotloop-sim"
CODING = load_scenario("coding")
WRITE = "apply_patch"
#: The first turn of ``coding`` that makes two parallel writes (1-based, as the proxy counts).
WRITE_TURN = next(
    number
    for number, turn in enumerate(CODING.turns, 1)
    if sum(call.name == WRITE for call in turn.calls) >= 2
)


# -- helpers ------------------------------------------------------------------------------


async def run_coding(url: str) -> tuple[RunResult, ExecutionLog, WebSocketTransport]:
    """One run of ``coding`` over a fresh transport to ``url``; tools take no time."""
    log = ExecutionLog()
    # Writes dispatched eagerly, as these tests are about reusing them after a drop.
    tools = scenario_tools(CODING, time_scale=0, log=log)
    agent = Agent(MODEL, CODING.instructions, tools, eager_writes=True)
    transport = WebSocketTransport(url)
    try:
        result = await Runner.run(agent, CODING.task, client=transport)
    finally:
        await transport.close()
    return result, log, transport


def assert_same_run(result: RunResult, baseline: RunResult) -> None:
    assert result.final_output == baseline.final_output
    assert normalized(result.items) == normalized(baseline.items)


def assert_writes_once(log: ExecutionLog, expected: int) -> None:
    writes = {key: n for key, n in log.by_arguments().items() if key[0] == WRITE}
    assert len(writes) == expected
    assert set(writes.values()) == {1}, writes


def write_count(scenario: Scenario) -> int:
    return len({(c.name, c.arguments) for t in scenario.turns for c in t.calls if c.name == WRITE})


def events_through_write(events: list[dict[str, Any]], nth: int = 1) -> int:
    """How many of a turn's events come up to its ``nth`` write's ``output_item.done``.

    By then the write's arguments are complete, so the runtime has dispatched it.
    """
    seen = 0
    for index, event in enumerate(events, 1):
        item = event.get("item") or {}
        if event["type"] == "response.output_item.done" and item.get("name") == WRITE:
            seen += 1
            if seen == nth:
                return index
    raise AssertionError(f"the turn has fewer than {nth} write(s)")


@pytest.fixture
async def coding_gateway(gateway_factory: GatewayFactory) -> AsyncIterator[GatewayServer]:
    async with gateway_factory(scenario=CODING, profile="zero") as server:
        yield server


# -- undisturbed --------------------------------------------------------------------------


async def test_undisturbed_run_over_the_proxy(coding_gateway: GatewayServer) -> None:
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        result, log, transport = await run_coding(proxy.url)

    assert result.final_output == CODING.turns[-1].text
    assert len(result.steps) == len(CODING.turns)
    assert sum(isinstance(item, FunctionCallOutput) for item in result.items) == (
        CODING.total_calls
    )
    assert_writes_once(log, write_count(CODING))
    # One socket, one full request, then incremental turns only.
    assert len(proxy.connections) == 1
    assert proxy.connections[0].creates == len(CODING.turns)
    assert proxy.connections[0].terminals == len(CODING.turns)
    assert transport.stats.connections_opened == 1
    assert transport.stats.full_resends == 1
    assert transport.stats.incremental_requests == len(CODING.turns) - 1


# -- the upgrade is refused ----------------------------------------------------------------


async def test_an_upgrade_refused_with_a_retry_after_is_tried_again_no_sooner(
    coding_gateway: GatewayServer,
) -> None:
    # A front end rate limits the WebSocket upgrade (429, Retry-After: 0.6), then lets it
    # through: the transport stays away that long instead of its 25 ms backoff, then runs.
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        proxy.refuse_next_upgrade(429, {"Retry-After": "0.6"})
        result, _, transport = await run_coding(proxy.url)

    assert result.final_output == CODING.turns[-1].text
    assert len(proxy.upgrades) == 2 and len(proxy.connections) == 1
    assert proxy.upgrades[1] - proxy.upgrades[0] >= 0.6
    assert transport.stats.connections_opened == 1


# -- the gateway drops the socket mid-turn ------------------------------------------------


async def test_socket_drop_mid_turn_reuses_the_dispatched_write(
    coding_gateway: GatewayServer,
) -> None:
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        baseline, _, plain = await run_coding(proxy.url)
        # Drop right after the first write's item is complete: the runtime has dispatched it.
        drop_at = events_through_write(proxy.turn_events[WRITE_TURN - 1])
    assert drop_at < len(proxy.turn_events[WRITE_TURN - 1])  # mid-stream, not at the end

    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        proxy.drop_client_after(n_events=drop_at, on_turn=WRITE_TURN)
        result, log, transport = await run_coding(proxy.url)

    assert_same_run(result, baseline)
    assert_writes_once(log, write_count(CODING))
    assert log.count() == CODING.total_calls
    step = result.steps[WRITE_TURN - 1]
    assert step.attempts == 2
    assert [(t.name, t.reused) for t in step.tools] == [(WRITE, True), (WRITE, False)]
    # The first socket carried the broken turn; a second one the full history and the rest.
    assert [c.dropped for c in proxy.connections] == [True, False]
    assert proxy.connections[0].creates == WRITE_TURN
    assert proxy.connections[1].creates == len(CODING.turns) - WRITE_TURN + 1
    assert transport.stats.connections_opened == 2
    assert transport.stats.reconnects == 1
    assert transport.stats.full_resends == plain.stats.full_resends + 1
    assert transport.stats.requests == plain.stats.requests + 1
    assert transport.stats.cache_misses == 0


async def test_socket_drop_before_any_event_is_retried_inside_the_transport(
    coding_gateway: GatewayServer,
) -> None:
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        baseline, _, plain = await run_coding(proxy.url)

    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        proxy.drop_client_after(n_events=0, on_turn=WRITE_TURN)
        result, log, transport = await run_coding(proxy.url)

    assert_same_run(result, baseline)
    assert_writes_once(log, write_count(CODING))
    # The runner never saw a failure: one attempt per turn.
    assert [step.attempts for step in result.steps] == [1] * len(CODING.turns)
    assert [c.dropped for c in proxy.connections] == [True, False]
    assert proxy.turn_events[WRITE_TURN - 1] == []  # the dropped request got no event through
    assert transport.stats.connections_opened == 2
    assert transport.stats.reconnects == 1
    assert transport.stats.full_resends == plain.stats.full_resends + 1


# -- the gateway answers previous_response_not_found --------------------------------------


async def test_previous_response_not_found_resends_the_history_on_the_same_socket(
    coding_gateway: GatewayServer,
) -> None:
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        baseline, _, plain = await run_coding(proxy.url)

    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        proxy.swap_upstream_before_turn(WRITE_TURN)
        result, log, transport = await run_coding(proxy.url)

    assert_same_run(result, baseline)
    assert_writes_once(log, write_count(CODING))
    assert [step.attempts for step in result.steps] == [1] * len(CODING.turns)
    # The gateway's answer to the continuation, then the full resend, on one client socket.
    refused = proxy.turn_events[WRITE_TURN - 1]
    assert [event["type"] for event in refused] == ["error"]
    assert refused[0]["error"]["code"] == "previous_response_not_found"
    assert len(proxy.connections) == 1
    assert proxy.connections[0].upstreams_opened == 2
    assert proxy.connections[0].creates == len(CODING.turns) + 1
    assert transport.stats.cache_misses == 1
    assert transport.stats.connections_opened == 1
    assert transport.stats.reconnects == 0
    assert transport.stats.full_resends == plain.stats.full_resends + 1


# -- the connection lifetime --------------------------------------------------------------


async def test_connection_lifetime_limit_mid_run(gateway_factory: GatewayFactory) -> None:
    decode = 2000.0
    profile = get_profile("zero").override(decode_tokens_per_s=decode)
    # The run lasts at least its decode time (the sim paces tokens against deadlines), so a
    # lifetime of a fifth of it must expire mid-run, at least once.
    decode_s = (
        sum(
            estimate_tokens(turn.text or "") + sum(estimate_tokens(c.arguments) for c in turn.calls)
            for turn in CODING.turns
        )
        / decode
    )
    lifetime = decode_s / 5
    async with gateway_factory(scenario=CODING, profile="zero") as server:
        baseline, _, _ = await run_coding(server.websocket_url)
    async with gateway_factory(
        scenario=CODING, profile=profile, connection_lifetime=lifetime
    ) as server:
        result, log, transport = await run_coding(server.websocket_url)

    assert_same_run(result, baseline)
    assert_writes_once(log, write_count(CODING))
    assert [step.attempts for step in result.steps] == [1] * len(CODING.turns)
    assert transport.stats.reconnects >= 1
    assert transport.stats.connections_opened == transport.stats.reconnects + 1
    assert transport.stats.full_resends == transport.stats.reconnects + 1


# -- errors that must not be retried ------------------------------------------------------


async def test_model_not_found_is_raised_and_not_retried(coding_gateway: GatewayServer) -> None:
    log = ExecutionLog()
    agent = Agent("no-such-model", CODING.instructions, scenario_tools(CODING, time_scale=0))
    async with WebSocketProxy(coding_gateway.websocket_url) as proxy:
        transport = WebSocketTransport(proxy.url)
        try:
            with pytest.raises(TransportError) as caught:
                await Runner.run(agent, CODING.task, client=transport)
        finally:
            await transport.close()

    assert caught.value.code == "model_not_found"
    assert caught.value.status == 404
    assert not caught.value.replay_safe
    assert proxy.creates == 1
    assert transport.stats.requests == 1
    assert transport.stats.connections_opened == 1
    assert log.count() == 0


# -- writes that conflict, across a retry -------------------------------------------------


def same_file_scenario() -> Scenario:
    """One turn with two patches of the same file (they must run in order), then an answer."""
    patches = [
        codec.dumps({"path": "src/app/billing/money.py", "patch": f"--- a\n+++ b\n@@ {n} @@\n"})
        for n in (1, 2)
    ]
    return Scenario(
        name="same-file",
        turns=(
            Turn(
                text="Two patches.", calls=tuple(ScriptedCall(WRITE, p.decode()) for p in patches)
            ),
            Turn(text="Both applied."),
        ),
        tools={WRITE: CODING.tools[WRITE]},
        task="Patch money.py twice.",
    )


class GatedWrites:
    """``apply_patch`` that waits for a gate, and records overlap and cancellation."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.log = ExecutionLog()
        self.running = 0
        self.max_running = 0
        self.cancelled = 0

    async def apply_patch(self, **args: Any) -> str:
        started = time.perf_counter_ns()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        arguments = codec.dumps(args).decode()
        self.log.executions.append(Execution(WRITE, arguments, started, time.perf_counter_ns()))
        return f"patched {args['path']}"

    def tool(self) -> Tool:
        spec = CODING.tools[WRITE]
        # Declared as the scenario declares it: the two calls conflict through their file only.
        effects = Effects(writes=("file:{path}",), exclusive=False)
        return Tool.from_schema(WRITE, spec.parameters, self.apply_patch, effects=effects)


async def run_gated(url: str, writes: GatedWrites, *, max_attempts: int = 3) -> RunResult:
    """Run ``same_file_scenario``; the gate opens when the first turn's stream has ended."""
    agent = Agent(MODEL, None, [writes.tool()], max_attempts=max_attempts, eager_writes=True)
    transport = WebSocketTransport(url)
    try:
        async for event in Runner.run_stream(agent, "Patch money.py twice.", client=transport):
            if isinstance(event, ModelTurnFinished) and event.turn == 1:
                writes.gate.set()
            if isinstance(event, RunFinished):
                return event.result
    finally:
        await transport.close()
    raise AssertionError("the run ended without RunFinished")


async def test_drop_with_a_write_running_and_a_conflicting_one_waiting(
    gateway_factory: GatewayFactory,
) -> None:
    scenario = same_file_scenario()
    async with gateway_factory(scenario=scenario) as server:
        async with WebSocketProxy(server.websocket_url) as proxy:
            baseline = await run_gated(proxy.url, GatedWrites())
            # Both writes are complete in the stream, the first runs, the second waits for it.
            drop_at = events_through_write(proxy.turn_events[0], nth=2)
        assert drop_at < len(proxy.turn_events[0])

        writes = GatedWrites()
        async with WebSocketProxy(server.websocket_url) as proxy:
            proxy.drop_client_after(n_events=drop_at, on_turn=1)
            result = await run_gated(proxy.url, writes)

    assert_same_run(result, baseline)
    assert result.steps[0].attempts == 2
    assert [t.reused for t in result.steps[0].tools] == [True, False]
    # Each write ran once, and the two never overlapped: the second waited for the first.
    assert_writes_once(writes.log, 2)
    assert writes.max_running == 1
    assert [call.arguments for call in scenario.turns[0].calls] == [
        e.arguments for e in writes.log.executions
    ]


async def test_a_turn_that_cannot_be_recovered_lets_its_dispatched_write_finish(
    gateway_factory: GatewayFactory,
) -> None:
    writes = GatedWrites()
    async with gateway_factory(scenario=same_file_scenario()) as server:
        async with WebSocketProxy(server.websocket_url) as proxy:
            probe = GatedWrites()
            probe.gate.set()
            await run_gated(proxy.url, probe)
            drop_at = events_through_write(proxy.turn_events[0])
        async with WebSocketProxy(server.websocket_url) as proxy:
            # One attempt only: the drop after the first write's item ends the run.
            proxy.drop_client_after(n_events=drop_at, on_turn=1)
            run = asyncio.create_task(run_gated(proxy.url, writes, max_attempts=1))
            while not any(connection.dropped for connection in proxy.connections):
                await asyncio.sleep(0.01)
            # The run has failed, but a write (eagerly dispatched) is half done: the run waits
            # for it rather than cut it off (a cut-off run ends within milliseconds of the drop
            # on loopback; a second is a wide margin), and keeps its result.
            done, _ = await asyncio.wait([run], timeout=1.0)
            assert not done and writes.running == 1
            writes.gate.set()
            with pytest.raises(TransportError) as caught:
                await run

    assert caught.value.replay_safe
    assert caught.value.code == "connection_lost"
    assert writes.cancelled == 0 and writes.running == 0
    assert writes.log.count() == 1
    partial = caught.value.partial
    assert partial is not None
    assert [call.name for call in partial.finished] == [WRITE]
    assert partial.finished[0].output.startswith("patched ")
