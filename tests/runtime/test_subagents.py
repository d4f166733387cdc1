"""Agents as tools of other agents: concurrent, on one socket, nested in the trace.

Concurrency is proven with a barrier, not with timing: each sub-agent's tool waits until the
other's has started too, so the run completes only if both sub-agents run at once.
"""

from __future__ import annotations

import asyncio

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, RunContext, Runner, tool
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn
from hotloop.trace.spans import spans_from_result
from hotloop.transport import WebSocketTransport, connect

MODEL = "hotloop-sim"


def specialist(name: str, barrier: asyncio.Barrier) -> Agent:
    @tool(reads=[f"{name}:{{query}}"], name=f"search_{name}")
    async def search(context: RunContext[list[str]], query: str) -> str:
        """Search.

        Args:
            query: What to look for.
        """
        context.deps.append(name)
        async with asyncio.timeout(10):
            await barrier.wait()  # returns only once the other specialist is searching too
        return f"{name} found {query}"

    return Agent(f"{MODEL}:{name}", f"You search {name}.", [search], name=name)


def script(name: str) -> Scenario:
    return Scenario(
        name=name,
        turns=(
            Turn(calls=(ScriptedCall(f"search_{name}", '{"query":"Rome"}'),)),
            Turn(text=f"{name}: done"),
        ),
    )


MANAGER = Scenario(
    name="manager",
    turns=(
        Turn(
            calls=(
                ScriptedCall("flights", '{"task":"flights to Rome"}'),
                ScriptedCall("hotels", '{"task":"hotels in Rome"}'),
            )
        ),
        Turn(text="Both specialists answered."),
    ),
)


async def test_sub_agents_run_concurrently_on_one_socket_and_nest_in_the_trace() -> None:
    barrier = asyncio.Barrier(2)
    flights, hotels = specialist("flights", barrier), specialist("hotels", barrier)
    manager = Agent(
        f"{MODEL}:manager", "You delegate.", [flights.as_tool(), hotels.as_tool()], name="manager"
    )
    assert manager.tools[0].parameters["required"] == ["task"]
    assert "context" not in manager.tools[0].parameters["properties"]
    backend = SimBackend(
        MANAGER, "zero", extra_scenarios={"flights": script("flights"), "hotels": script("hotels")}
    )
    seen: list[str] = []
    async with GatewayServer(backend) as server:
        client = connect(server.base_url)
        async with client:
            result = await Runner.run(manager, "Plan a trip.", client=client, deps=seen)
    assert result.final_output == "Both specialists answered."
    assert sorted(seen) == ["flights", "hotels"]
    calls = [call for step in result.steps for call in step.tools]
    assert [call.name for call in calls] == ["flights", "hotels"]
    assert all(call.error is None for call in calls)
    outputs = {call.name: call.subruns[0].final_output for call in calls}
    assert outputs == {"flights": "flights: done", "hotels": "hotels: done"}
    # One socket for the manager and both sub-agents: each ran on a lane of it.
    assert isinstance(client, WebSocketTransport)
    assert client.stats.connections_opened == 1
    # Each sub-agent's conversation is its own: its first turn sent only its own task.
    for call in calls:
        first = call.subruns[0].steps[0]
        assert first.request_bytes < result.steps[0].request_bytes
    # The trace nests each sub-run under the manager's call.
    spans = spans_from_result(result)
    by_id = {span.span_id: span for span in spans}
    runs = [span for span in spans if span.name == "run"]
    assert len(runs) == 3
    for sub in runs[1:]:
        assert sub.parent_id is not None and by_id[sub.parent_id].name == "tool.call"
        call_span = by_id[sub.parent_id]
        assert call_span.start_ns <= sub.start_ns and sub.end_ns <= call_span.end_ns + 1
