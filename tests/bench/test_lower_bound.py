"""The critical-path lower bound: exact on hand-computable scenarios, and below a real run.

The hand-computed cases use a profile in which every turn's first token comes 0.15 s after its
request (0.05 s service + 0.10 s to first token, nothing per token) and output tokens follow
0.1 s apart; every call's arguments are 9 characters (3 tokens), so the first call of a turn is
complete at 0.15 + 2 x 0.1 = 0.35 s and the second at 0.15 + 5 x 0.1 = 0.65 s. Tools take 0.5 s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

import hotloop
from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.bench import lower_bound
from hotloop.bench.runner import scaled_tools
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Runner
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolEffects, ToolSpec, Turn, load_scenario
from hotloop.testing import ExecutionLog, scenario_tools, session_task

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]

PROFILE = LatencyProfile(
    "hand", ttft_s=0.10, decode_tokens_per_s=10.0, prefill_tokens_per_s=0.0, service_overhead_s=0.05
)
PARAMETERS = {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}


def _tool(name: str, effects: ToolEffects) -> ToolSpec:
    return ToolSpec(name, name, PARAMETERS, latency_ms=500, output_bytes=16, effects=effects)


TOOLS = {
    "read": _tool("read", ToolEffects(reads=("file:{k}",))),
    "write": _tool("write", ToolEffects(writes=("file:{k}",))),
    "shell": _tool("shell", ToolEffects()),  # nothing declared: exclusive
}


def _call(name: str, key: str) -> ScriptedCall:
    arguments = f'{{"k":"{key}"}}'
    assert len(arguments) == 9  # 3 tokens
    return ScriptedCall(name, arguments)


def _scenario(*calls: ScriptedCall) -> Scenario:
    # One turn of calls, then a final answer of one token ("done"): 0.15 s.
    return Scenario("hand", (Turn(calls=calls), Turn(text="done")), dict(TOOLS), task="do it")


@pytest.mark.parametrize(
    ("calls", "expected_s"),
    [
        # Arguments complete at 0.35, tool until 0.85; the answer: 0.15.
        pytest.param((_call("read", "a"),), 0.85 + 0.15, id="one call"),
        # Reads of different files overlap: the second runs 0.65 → 1.15.
        pytest.param((_call("read", "a"), _call("read", "b")), 1.15 + 0.15, id="parallel reads"),
        # Reads of the same file overlap too.
        pytest.param((_call("read", "a"), _call("read", "a")), 1.15 + 0.15, id="same-file reads"),
        # A write after a read of the same file waits for it: 0.85 → 1.35.
        pytest.param((_call("read", "a"), _call("write", "a")), 1.35 + 0.15, id="write after read"),
        # A write of another file does not.
        pytest.param(
            (_call("read", "a"), _call("write", "b")), 1.15 + 0.15, id="write of another file"
        ),
        # An undeclared tool runs alone: after the read, 0.85 → 1.35.
        pytest.param((_call("read", "a"), _call("shell", "x")), 1.35 + 0.15, id="exclusive"),
        # ... and anything after it waits for it: shell 0.35 → 0.85, then the read 0.85 → 1.35.
        pytest.param(
            (_call("shell", "x"), _call("read", "a")), 1.35 + 0.15, id="after an exclusive"
        ),
    ],
)
def test_hand_computed_bounds(calls: tuple[ScriptedCall, ...], expected_s: float) -> None:
    bound = lower_bound(_scenario(*calls), PROFILE)
    assert bound.total_s == pytest.approx(expected_s)
    assert bound.turns[0].first_token_s == pytest.approx(0.15)
    assert bound.turns[1].total_s == pytest.approx(0.15)
    assert bound.scenario == "hand"
    assert bound.profile == "hand"


def test_the_model_may_be_the_critical_path() -> None:
    # Instant tools: the turn ends when the model's output does (0.65 s), not the tools.
    instant = scaled_tools(_scenario(_call("read", "a"), _call("read", "b")), 0.0)
    bound = lower_bound(instant, PROFILE)
    assert bound.turns[0].model_s == pytest.approx(0.65)
    assert bound.turns[0].tools_s == pytest.approx(0.65)
    assert bound.total_s == pytest.approx(0.65 + 0.15)
    assert bound.model_s == pytest.approx(0.65 + 0.15)


def test_scaling_tools_by_one_is_the_scenario_itself() -> None:
    scenario = _scenario(_call("read", "a"))
    assert scaled_tools(scenario, 1.0) is scenario
    assert scaled_tools(scenario, 2.0).tools["read"].latency_ms == 1000


async def _hotloop_wall_s(server: GatewayServer, scenario: Scenario) -> float:
    log = ExecutionLog()
    agent = Agent(
        f"{DEFAULT_MODEL}:{scenario.name}",
        scenario.instructions,
        scenario_tools(scenario, log=log),
        max_turns=len(scenario.turns) + 2,
        eager=True,
        max_concurrency=8,
    )
    client = hotloop.connect(server.base_url, transport="websocket")
    try:
        result = await Runner.run(agent, session_task(scenario, "bound"), client=client)
    finally:
        await client.close()
    assert result.turns == len(scenario.turns)
    assert log.count() == scenario.total_calls
    return result.wall_ns / 1e9


@pytest.mark.parametrize(
    ("scenario", "profile"),
    [
        pytest.param(_scenario(_call("read", "a"), _call("write", "a")), PROFILE, id="hand"),
        pytest.param(load_scenario("support"), get_profile("fast"), id="support-fast"),
    ],
)
async def test_no_real_run_beats_the_bound(
    gateway_factory: GatewayFactory, scenario: Scenario, profile: LatencyProfile
) -> None:
    # A property, not a timing threshold: the bound must hold however fast the machine is.
    async with gateway_factory(scenario=scenario, profile=profile) as server:
        wall_s = await _hotloop_wall_s(server, scenario)
    assert wall_s >= lower_bound(scenario, profile).total_s
