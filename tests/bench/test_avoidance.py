"""Work avoidance in ``hotloop bench``: scenario declarations, the room, the policy strategies.

The hand-computed room uses the profile of ``test_lower_bound``: every turn's first token comes
0.15 s after its request, output tokens 0.1 s apart, every call's arguments are 3 tokens (the
first call of a turn is complete at 0.35 s, the second at 0.65 s) and tools take 0.5 s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from hotloop.bench.lower_bound import Early, avoidable, lower_bound, room
from hotloop.bench.report import avoidance_table, summarize
from hotloop.bench.runner import BenchConfig
from hotloop.bench.strategies import (
    RunRecord,
    Strategy,
    run_once,
    strategy_agent,
    strategy_named,
)
from hotloop.errors import ScenarioError
from hotloop.gateway import GatewayServer
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.sim.tools import follow_ups, listed, tool_output
from hotloop.testing import ExecutionLog
from hotloop.wire import codec

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]

PROFILE = LatencyProfile(
    "hand", ttft_s=0.10, decode_tokens_per_s=10.0, prefill_tokens_per_s=0.0, service_overhead_s=0.05
)
PARAMETERS = {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}


def _tool(effects: dict[str, Any]) -> dict[str, Any]:
    return {"parameters": PARAMETERS, "latency_ms": 500, "output_bytes": 16, "effects": effects}


def _call(name: str, key: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "arguments": {"k": key}, **more}


def _hand(**overrides: Any) -> dict[str, Any]:
    """``find`` lists the key ``b``; its follow-up reads each key it lists.

    0: find x, read a      → 1.15 s (read a 0.65 → 1.15)
    1: read b, read a      → 1.15 s; read a repeats 0 (no write since): 0.85 s without it;
                             read b was predicted by find: 0.65 s (the model's end) without both
    2: write a             → 0.85 s
    3: read a, find x      → 1.15 s; neither avoidable: write a is below find's ``repo``
    4: "done"              → 0.15 s
    """
    data: dict[str, Any] = {
        "name": "hand",
        "task": "do it",
        "tools": {
            "find": {
                **_tool({"reads": ["repo"]}),
                "cache": True,
                "follows": [{"tool": "read", "argument": "k", "from": "keys"}],
            },
            "read": {**_tool({"reads": ["repo/{k}"]}), "cache": True},
            "write": _tool({"writes": ["repo/{k}"]}),
        },
        "turns": [
            {"calls": [_call("find", "x", lists={"keys": ["b"]}), _call("read", "a")]},
            {"calls": [_call("read", "b"), _call("read", "a")]},
            {"calls": [_call("write", "a")]},
            {"calls": [_call("read", "a"), _call("find", "x")]},
            {"text": "done"},
        ],
    }
    data.update(overrides)
    return data


def test_the_room_of_a_hand_made_scenario() -> None:
    scenario = Scenario.from_dict(_hand())
    calls = avoidable(scenario)
    assert calls.repeats == {(1, 1): Early(((0, 1),))}
    # Predicted by find (0, 0); it must also see no write: there is none before it.
    assert calls.predicted == {(1, 0): Early(((0, 0),), (), runs=True)}
    result = room(scenario, PROFILE)
    assert result.bound.total_s == pytest.approx(1.15 + 1.15 + 0.85 + 1.15 + 0.15)
    assert result.bound.total_s == pytest.approx(lower_bound(scenario, PROFILE).total_s)
    assert result.without_repeats.total_s == pytest.approx(4.45 - 0.3)
    assert result.without_avoidable.total_s == pytest.approx(4.45 - 0.5)
    assert result.room_s == pytest.approx(0.5)
    assert result.describe()["repeats"] == 1
    assert result.describe()["predicted_reads"] == 1


def test_a_prefetch_cannot_start_before_its_prediction_or_the_write_it_must_see() -> None:
    """The room counts a predicted read as running from when it can first be known, never as
    free: here the read is asked for before a prefetch could finish, and after a write."""
    data = _hand()
    data["tools"]["read"]["latency_ms"] = 1000
    data["tools"]["write"]["latency_ms"] = 1000
    data["tools"]["lookup"] = {
        **_tool({"reads": ["index/{k}"]}),  # does not read what write b changes
        "latency_ms": 100,
        "follows": [{"tool": "read", "argument": "k", "from": "keys"}],
    }
    data["turns"] = [
        # write b: 0.35 → 1.35; lookup x: 0.65 → 0.75 (turn 0 is 1.35 s)
        {"calls": [_call("write", "b"), _call("lookup", "x", lists={"keys": ["b"]})]},
        # read b is predicted by lookup (done at 0.75) but must see write b (done at 1.35):
        # it can start at 1.35 and is done at 2.35; asked for at 1.35 + 0.35 = 1.70, it is
        # done 1.0 s into its turn instead of 1.35 s: 0.35 s saved, not its whole second.
        {"calls": [_call("read", "b")]},
        {"text": "done"},
    ]
    scenario = Scenario.from_dict(data)
    calls = avoidable(scenario)
    assert not calls.repeats
    assert calls.predicted == {(1, 0): Early(((0, 1),), ((0, 0),), runs=True)}
    result = room(scenario, PROFILE)
    assert result.bound.total_s == pytest.approx(1.35 + 1.35 + 0.15)
    assert result.without_avoidable.total_s == pytest.approx(1.35 + 1.0 + 0.15)
    assert result.room_s == pytest.approx(0.35)


def test_a_prediction_in_the_same_turn_or_across_a_write_is_no_room() -> None:
    data = _hand()
    # find and the read it predicts in one turn: the read cannot start before the model asks.
    data["turns"] = [
        {"calls": [_call("find", "x", lists={"keys": ["b"]}), _call("read", "b")]},
        {"calls": [_call("write", "b")]},
        {"calls": [_call("read", "b")]},  # after a write to it: neither repeat nor predicted
        {"text": "done"},
    ]
    calls = avoidable(Scenario.from_dict(data))
    assert not calls.repeats and not calls.predicted


def test_outputs_list_what_follow_ups_read() -> None:
    scenario = Scenario.from_dict(_hand())
    spec = scenario.tools["find"]
    arguments = scenario.turns[0].calls[0].arguments
    output = tool_output(spec, arguments)
    assert listed(output, "keys") == ["b"]
    assert output.splitlines()[1] == 'keys: ["b"]'
    assert follow_ups(spec, codec.loads(arguments), output) == [("read", {"k": "b"})]
    # The same call made with its keys in another order lists the same.
    assert listed(tool_output(spec, '{ "k" : "x" }'), "keys") == ["b"]
    # A call the scenario does not script lists nothing.
    assert listed(tool_output(spec, '{"k":"y"}'), "keys") == []


def test_templated_follow_ups_fill_the_call_arguments() -> None:
    data = _hand()
    data["tools"]["write"]["follows"] = [{"tool": "read", "arguments": {"k": "{k}"}}]
    spec = Scenario.from_dict(data).tools["write"]
    assert follow_ups(spec, {"k": "a"}, "") == [("read", {"k": "a"})]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["tools"]["write"].update(cache=True), "only a tool that cannot write"),
        (lambda d: d["tools"]["read"].update(cache="yes"), "cache must be true or false"),
        (
            lambda d: d["tools"]["find"].update(follows=[{"tool": "nope"}]),
            "follows unknown tool 'nope'",
        ),
        (
            lambda d: d["tools"]["find"].update(follows=[{"tool": "read", "from": "keys"}]),
            "'from' and 'argument' go together",
        ),
        (
            lambda d: d["turns"][3]["calls"][1].update(lists={"keys": ["c"]}),
            "repeats a call with different lists",
        ),
    ],
)
def test_declarations_are_validated(change: Callable[[dict[str, Any]], None], message: str) -> None:
    data = _hand()
    change(data)
    with pytest.raises(ScenarioError, match=message):
        Scenario.from_dict(data)


@pytest.mark.parametrize("name", ["coding-session", "support-research"])
def test_the_bundled_declarations(name: str) -> None:
    scenario = load_scenario(name)
    cached = {tool for tool, spec in scenario.tools.items() if spec.cache}
    assert all(scenario.tools[tool].writes_nothing for tool in cached)
    calls = avoidable(scenario)
    # Every cacheable repeat docs/sim.md lists, and no other.
    expected = {
        "coding-session": {(9, 0), (9, 1), (12, 0), (13, 1), (19, 0)},
        "support-research": {(5, 1), (10, 0), (10, 1)},
    }[name]
    assert set(calls.repeats) == expected
    assert calls.predicted and not set(calls.predicted) & expected
    assert room(scenario, get_profile("fast")).room_s > 0


POLICY_STRATEGIES = ["hotloop+cache", "hotloop+speculate", "hotloop+compact", "hotloop+all"]


def test_the_policy_strategies_are_hotloop_with_policies() -> None:
    plain = strategy_named("hotloop")
    for name in POLICY_STRATEGIES:
        strategy = strategy_named(name)
        assert (strategy.transport, strategy.eager, strategy.max_concurrency) == (
            plain.transport,
            plain.eager,
            plain.max_concurrency,
        )
        assert strategy.policies
    scenario = load_scenario("coding-session")
    tools = strategy_agent(plain, scenario, 0, ExecutionLog()).tools
    assert all(tool.cache is None for tool in tools)  # plain hotloop caches nothing
    cached = strategy_agent(strategy_named("hotloop+cache"), scenario, 0, ExecutionLog()).tools
    assert {tool.name for tool in cached if tool.cache is not None} == {
        "list_dir",
        "read_file",
        "grep",
        "git_diff",
    }


async def _run(server: GatewayServer, strategy: Strategy, scenario: Scenario) -> RunRecord:
    return await run_once(
        strategy,
        scenario,
        server.base_url,
        time_scale=0.0,
        repetition=1,
        position=0,
        session="same",  # one session for every run: the same conversation, byte for byte
    )


@pytest.mark.parametrize("name", ["coding-session", "support-research"])
async def test_every_policy_gives_the_model_what_plain_hotloop_does(
    gateway_factory: GatewayFactory, name: str
) -> None:
    scenario = load_scenario(name)
    async with gateway_factory(scenario=scenario) as server:
        plain = await _run(server, strategy_named("hotloop"), scenario)
        records = {n: await _run(server, strategy_named(n), scenario) for n in POLICY_STRATEGIES}
    assert plain.ok, plain.error
    assert (plain.cache_hits, plain.speculations_used, plain.speculations_wasted) == (0, 0, 0)
    for strategy, record in records.items():
        assert record.ok, f"{strategy}: {record.error}"
        assert record.outputs_digest == plain.outputs_digest, strategy
        assert record.tool_calls == plain.tool_calls == scenario.total_calls
    repeats = len(avoidable(scenario).repeats)
    # Instant tools: each cacheable repeat is a hit, nothing else is.
    assert records["hotloop+cache"].cache_hits == repeats
    assert records["hotloop+cache"].executions == scenario.total_calls - repeats
    speculate = records["hotloop+speculate"]
    assert speculate.speculations_used + speculate.speculations_wasted >= 1
    assert records["hotloop+compact"].summaries >= 1
    assert records["hotloop+compact"].executions == scenario.total_calls


async def test_the_report_shows_the_room_and_the_counts(gateway_factory: GatewayFactory) -> None:
    scenario = load_scenario("support-research")
    async with gateway_factory(scenario=scenario) as server:
        records = [
            await _run(server, strategy_named(name), scenario)
            for name in ["hotloop", "hotloop+cache"]
        ]
    config = BenchConfig(
        scenario,
        get_profile("zero"),
        (strategy_named("hotloop"), strategy_named("hotloop+cache")),
        runs=1,
        tool_time_scale=0.0,
    )
    report = summarize(config, records)
    assert report["room"]["repeats"] == 3
    cache = report["strategies"]["hotloop+cache"]
    assert cache["cache_hits"] == 3
    assert cache["outputs_identical_to_hotloop"] is True
    assert cache["policies"] == ["cache"]
    table = avoidance_table(report)
    assert [row[0] for row in table.rows] == ["hotloop", "hotloop+cache"]
    assert codec.loads(codec.dumps(report))["room"] == report["room"]
