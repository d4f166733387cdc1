"""Fixtures of the trace tests: real runs of the ten-turn scenario over a loopback gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import pytest

from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, RunHook, Runner, RunResult
from hotloop.testing import scenario_tools
from hotloop.transport import connect
from support import ten_turn_scenario

SCENARIO = ten_turn_scenario()


@pytest.fixture
def run_ten(gateway: GatewayServer) -> Callable[..., Awaitable[RunResult]]:
    """``await run_ten(transport="websocket", trace=hook, runs=1, incremental=False)``.

    Returns the last run's result.

    Each call opens a fresh client (so turn 1 opens a connection) and plays the ten-turn
    scenario ``runs`` times on it with instant tools.
    """

    async def run(
        transport: Literal["websocket", "http", "chat"] = "websocket",
        trace: RunHook | None = None,
        runs: int = 1,
        incremental: bool = False,
    ) -> RunResult:
        agent = Agent(
            f"{DEFAULT_MODEL}:{SCENARIO.name}",
            SCENARIO.instructions,
            scenario_tools(SCENARIO, time_scale=0),
        )
        client = connect(gateway.base_url, transport=transport, incremental=incremental)
        try:
            for _ in range(runs):
                result = await Runner.run(agent, SCENARIO.task, client=client, trace=trace)
        finally:
            await client.close()
        return result

    return run
