"""Stateful tool outputs and the two work-avoidance scenarios, ``coding-session`` and
``support-research``.

A :class:`ScenarioState` counts writes per resource key, and a read's output carries the
versions of what it reads, so a result served stale (from a cache, or prefetched before a write)
differs from the one executing the call returns. The scenarios' repeat structure (which repeated
calls a cache could serve, which follow a write and must be executed again) is pinned here as
the docs state it, and both scenarios are played over a real gateway: they complete, two runs
are identical, and one stale read changes what the model is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import httpx
import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Runner, RunResult, Tool
from hotloop.sim.scenario import (
    Scenario,
    ScriptedCall,
    ToolEffects,
    ToolSpec,
    bundled_scenarios,
    load_scenario,
)
from hotloop.sim.tools import ScenarioState, resource_keys, run_tool, tool_output
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.transport import connect
from hotloop.wire import codec
from hotloop.wire.items import FunctionCallOutput
from support import normalized

NAMES = ("coding-session", "support-research")
CODING = load_scenario("coding-session")
SUPPORT = load_scenario("support-research")

READ = ToolSpec(
    "read", "", {}, output_bytes=300, effects=ToolEffects(reads=("repo/{path}",), idempotent=True)
)
GREP = ToolSpec("grep", "", {}, output_bytes=300, effects=ToolEffects(reads=("repo",)))
WRITE = ToolSpec("write", "", {}, output_bytes=300, effects=ToolEffects(writes=("repo/{path}",)))
SET = ToolSpec(
    "set", "", {}, output_bytes=300, effects=ToolEffects(writes=("repo/{path}",), idempotent=True)
)


def args(**values: Any) -> str:
    return codec.dumps(values).decode()


# -- the state ------------------------------------------------------------------------------


def test_a_call_that_saw_no_write_returns_the_stateless_output() -> None:
    state = ScenarioState()
    assert state.execute(READ, args(path="a.py")) == tool_output(READ, args(path="a.py"))
    assert state.execute(GREP, args(pattern="x")) == tool_output(GREP, args(pattern="x"))


def test_reads_see_writes_hierarchically() -> None:
    state = ScenarioState()
    before = {
        "file": state.execute(READ, args(path="src/a.py")),
        "sibling": state.execute(READ, args(path="src/b.py")),
        "prefix": state.execute(READ, args(path="srcs/a.py")),
        "repo": state.execute(GREP, args(pattern="x")),
    }
    written = state.execute(WRITE, args(path="src/a.py"))
    assert written.startswith("[write ") and "repo/src/a.py@1] " in written
    after = {
        "file": state.execute(READ, args(path="src/a.py")),
        "sibling": state.execute(READ, args(path="src/b.py")),
        "prefix": state.execute(READ, args(path="srcs/a.py")),
        "repo": state.execute(GREP, args(pattern="x")),
    }
    # The file and every key above it moved; a sibling and a mere string prefix did not.
    assert after["file"] != before["file"] and "repo/src/a.py@1] " in after["file"]
    assert after["repo"] != before["repo"] and "repo@1] " in after["repo"]
    assert after["sibling"] == before["sibling"] and after["prefix"] == before["prefix"]
    # A write to a directory reaches the files below it.
    state.execute(WRITE, args(path="src"))
    assert "repo/src/b.py@1] " in state.execute(READ, args(path="src/b.py"))
    assert "repo/src/a.py@2] " in state.execute(READ, args(path="src/a.py"))
    assert state.version("repo") == 2 and state.writes == {"repo/src/a.py": 1, "repo/src": 1}
    # The output keeps its size whatever it saw.
    assert {len(text) for text in (*before.values(), *after.values())} == {300}


def test_an_idempotent_write_repeated_changes_nothing_and_others_count() -> None:
    state = ScenarioState()
    first = state.execute(SET, args(path="a", value=1))
    assert state.execute(SET, args(path="a", value=1)) == first
    assert state.version("repo/a") == 1
    state.execute(SET, args(path="a", value=2))
    state.execute(SET, args(path="a", value=1))  # not a repeat of the last write any more
    assert state.version("repo/a") == 3
    state.execute(WRITE, args(path="b"))
    state.execute(WRITE, args(path="b"))  # not idempotent: every execution counts
    assert state.version("repo/b") == 2
    # A write to the directory above comes between two identical idempotent writes.
    state.execute(SET, args(path="d/x", value=1))
    state.execute(WRITE, args(path="d"))
    state.execute(SET, args(path="d/x", value=1))
    assert state.version("repo/d/x") == 3


async def test_a_read_sees_the_state_when_it_started() -> None:
    state = ScenarioState()
    observed = state.observe(READ, args(path="a"))
    state.execute(WRITE, args(path="a"))  # lands while the read is in flight
    assert state.complete(READ, args(path="a"), observed) == tool_output(READ, args(path="a"))
    assert await run_tool(READ, args(path="a"), time_scale=0, state=state) != tool_output(
        READ, args(path="a")
    )
    assert await run_tool(READ, args(path="a"), time_scale=0) == tool_output(READ, args(path="a"))


def test_resource_keys_fill_templates_and_leave_missing_fields() -> None:
    spec = ToolSpec(
        "t",
        "",
        {},
        effects=ToolEffects(reads=("webhooks/{account}/{endpoint}", "kb"), writes=("x/{gone}",)),
    )
    assert resource_keys(spec, args(account="a1", endpoint="e2")) == (
        ("webhooks/a1/e2", "kb"),
        ("x/{gone}",),
    )
    assert resource_keys(spec, "[1, 2]") == (("webhooks/{account}/{endpoint}", "kb"), ("x/{gone}",))


# -- the scenarios' shape and repeat structure ---------------------------------------------


Repeat = tuple[int, str, Any]


def calls(scenario: Scenario) -> list[tuple[int, ScriptedCall]]:
    return [(index, call) for index, turn in enumerate(scenario.turns) for call in turn.calls]


def repeats(scenario: Scenario) -> tuple[list[Repeat], list[Repeat]]:
    """The exact repeats of earlier read-only calls, split into those a cache keyed by the call
    could serve (the same output as executing it) and those it would serve stale (a write to
    what they read came in between): (turn, tool, arguments) each, in script order."""
    state = ScenarioState()
    first: dict[tuple[str, str], str] = {}
    cacheable: list[Repeat] = []
    stale: list[Repeat] = []
    for index, call in calls(scenario):
        output = state.execute(scenario.tools[call.name], call.arguments)
        key = (call.name, call.arguments)
        if key in first and not scenario.tools[call.name].effects.writes:
            repeat = (index, call.name, codec.loads(call.arguments))
            (cacheable if first[key] == output else stale).append(repeat)
        first.setdefault(key, output)
    return cacheable, stale


def test_coding_session_shape() -> None:
    assert 20 <= len(CODING.turns) <= 30 and CODING.total_calls == 42
    assert sum(len(turn.calls) >= 2 for turn in CODING.turns) == 14
    tools = CODING.tools
    assert tools["read_file"].effects.reads == ("repo/{path}",)
    assert tools["list_dir"].effects.reads == ("repo/{path}",)
    assert tools["apply_patch"].effects.writes == ("repo/{path}",)
    for name in ("grep", "run_tests", "git_diff"):
        assert tools[name].effects.reads == ("repo",) and tools[name].effects.idempotent
    assert all(10 <= tools[name].latency_ms <= 80 for name in ("read_file", "list_dir", "grep"))
    assert 2000 <= tools["run_tests"].latency_ms <= 4000
    names = [call.name for _, call in calls(CODING)]
    assert names.count("apply_patch") == 9 and names.count("run_tests") == 5
    # Every test run after the baseline follows a patch made since the run before it.
    runs = [i for i, name in enumerate(names) if name == "run_tests"]
    assert all("apply_patch" in names[runs[k - 1] : runs[k]] for k in range(1, len(runs)))


def test_coding_session_repeats_are_as_documented() -> None:
    cacheable, stale = repeats(CODING)
    q = ["-q", "-p", "no:cacheprovider"]
    pkg = "src/shortlinks"
    assert cacheable == [
        (9, "read_file", {"path": "tests/conftest.py"}),  # read at turn 5
        (9, "read_file", {"path": "tests/test_views.py"}),  # read at turn 2
        (12, "read_file", {"path": f"{pkg}/jobs.py"}),  # read at turn 2
        (13, "read_file", {"path": "tests/test_jobs.py"}),  # read at turn 5
        (19, "read_file", {"path": "tests/test_stats.py"}),  # read at turn 16
    ]
    assert stale == [
        (7, "read_file", {"path": f"{pkg}/models.py"}),  # patched at turn 6
        (7, "read_file", {"path": f"{pkg}/views.py"}),  # patched at turn 6
        (11, "run_tests", {"path": "tests/test_views.py", "args": q}),  # patches at turn 10
        (15, "grep", {"pattern": "expires_at", "path": "src"}),  # 5 patches since turn 1
        (15, "read_file", {"path": f"{pkg}/jobs.py"}),  # patched at turn 14
        (18, "run_tests", {"path": "tests", "args": q}),  # 7 patches since turn 3
        (21, "run_tests", {"path": "tests", "args": q}),  # patched at turn 20
    ]


def test_support_research_shape() -> None:
    assert 12 <= len(SUPPORT.turns) <= 18 and SUPPORT.total_calls == 23
    lookups = ("get_ticket", "crm_lookup", "webhook_logs", "web_search", "fetch_page", "search_kb")
    for name in lookups:
        tool = SUPPORT.tools[name]
        assert 300 <= tool.latency_ms <= 1500
        assert tool.effects.reads and not tool.effects.writes and tool.effects.idempotent
    assert SUPPORT.tools["get_ticket"].effects.reads == ("ticket/{ticket_id}",)
    for name in ("update_ticket", "reply_to_ticket"):
        assert SUPPORT.tools[name].effects.writes == ("ticket/{ticket_id}",)
    writes = [c for _, c in calls(SUPPORT) if SUPPORT.tools[c.name].effects.writes]
    assert len(writes) == 5
    # Every page fetched is first named by a search the turn before (or fetched already).
    fetched = [
        (i, codec.loads(c.arguments)["url"]) for i, c in calls(SUPPORT) if c.name == "fetch_page"
    ]
    searched = {i for i, c in calls(SUPPORT) if c.name in ("web_search", "search_kb")}
    first_fetches = {url: i for i, url in reversed(fetched)}
    assert all(i - 1 in searched for i in first_fetches.values())


def test_support_research_repeats_are_as_documented() -> None:
    cacheable, stale = repeats(SUPPORT)
    assert [(turn, name) for turn, name, _ in cacheable] == [
        (5, "crm_lookup"),  # turn 0
        (10, "web_search"),  # the vendor search of turn 3
        (10, "fetch_page"),  # the changelog notice of turn 2
    ]
    assert [(turn, name) for turn, name, _ in stale] == [
        (9, "webhook_logs"),  # turn 1; the endpoint was changed (7) and replayed (8)
        (9, "get_ticket"),  # turn 0; updated at turn 6
        (13, "get_ticket"),  # turn 9; two replies since (11, 12)
    ]


@pytest.mark.parametrize("name", bundled_scenarios())
def test_no_turn_reads_what_it_writes(name: str) -> None:
    """Parallel calls of a turn never touch overlapping keys where one writes, so whatever
    order a loop runs them in, every read sees the same versions: runs stay deterministic."""
    scenario = load_scenario(name)
    for index, turn in enumerate(scenario.turns):
        keys = [resource_keys(scenario.tools[c.name], c.arguments) for c in turn.calls]
        for a, (_, writes) in enumerate(keys):
            for b, (reads, other_writes) in enumerate(keys):
                if a != b:
                    for key in writes:
                        for other in (*reads, *other_writes):
                            assert not (
                                key == other
                                or key.startswith(other + "/")
                                or other.startswith(key + "/")
                            ), f"turn {index}: {key} and {other}"


# -- over a real gateway --------------------------------------------------------------------


async def play(
    gateway: GatewayServer,
    scenario: Scenario,
    adjust: Callable[[list[Tool]], None] | None = None,
    transport: Literal["websocket", "http"] = "websocket",
    executed: int | None = None,
) -> tuple[RunResult, ExecutionLog]:
    """Play ``scenario`` to its end; ``executed``: how many calls the tools really ran (fewer
    than the script's when ``adjust`` serves some without running them)."""
    log = ExecutionLog()
    tools = scenario_tools(scenario, time_scale=0, log=log)
    if adjust is not None:
        adjust(tools)
    agent = Agent(
        f"hotloop-sim:{scenario.name}",
        scenario.instructions,
        tools,
        max_turns=len(scenario.turns) + 5,
    )
    async with connect(gateway.base_url, transport=transport) as client:
        result = await Runner.run(agent, scenario.task, client=client)
    total = scenario.total_calls
    skipped = (
        ()
        if executed in (None, total)
        else (f"{executed} tool executions, the scenario has {total}",)
    )
    assert check_run(scenario, result, log) == skipped
    return result, log


def outputs(result: RunResult) -> list[str]:
    return [item.text for item in result.items if isinstance(item, FunctionCallOutput)]


def serve_repeats_from(tools: Sequence[Tool], cache: Callable[[str, str], bool]) -> None:
    """Serve a repeated read-only call the first output it had, where ``cache(tool, args)``."""
    for tool in tools:
        if tool.effects.writes:
            continue
        body = tool.fn
        first: dict[str, str] = {}

        async def cached(
            _name: str = tool.name, _body: Any = body, _first: Any = first, **arguments: Any
        ) -> str:
            key = codec.dumps(arguments).decode()
            if key in _first and cache(_name, key):
                return str(_first[key])
            output = str(await _body(**arguments))
            _first.setdefault(key, output)
            return output

        tool.fn = cached


async def test_the_gateway_lists_the_scenarios(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        listed = {entry["id"] for entry in (await http.get("/v1/models")).json()["data"]}
    assert {f"hotloop-sim:{name}" for name in NAMES} <= listed


@pytest.mark.parametrize("scenario", [CODING, SUPPORT], ids=NAMES)
async def test_two_runs_are_identical(gateway: GatewayServer, scenario: Scenario) -> None:
    first, first_log = await play(gateway, scenario)
    second, second_log = await play(gateway, scenario, transport="http")
    assert normalized(first.items) == normalized(second.items)
    assert [(e.name, e.arguments) for e in first_log.executions] == [
        (e.name, e.arguments) for e in second_log.executions
    ]
    # The state mattered: some outputs carry versions of resources written earlier.
    assert any("@" in text.split("] ", 1)[0] for text in outputs(first))


async def test_one_stale_read_changes_what_the_model_is_sent(gateway: GatewayServer) -> None:
    """views.py is read at turn 2, patched at turn 6 and read again at turn 7: served the
    output it had before the patch, that one read differs and the rest of the run does not."""
    views = codec.dumps({"path": "src/shortlinks/views.py"}).decode()
    fresh, _ = await play(gateway, CODING)
    stale, log = await play(
        gateway,
        CODING,
        lambda tools: serve_repeats_from(tools, lambda _, key: key == views),
        executed=CODING.total_calls - 1,
    )
    assert log.by_arguments()[("read_file", views)] == 1  # the second read was not executed
    differing = [(a, b) for a, b in zip(outputs(fresh), outputs(stale), strict=True) if a != b]
    assert len(differing) == 1
    now, before = differing[0]
    spec = CODING.tools["read_file"]
    assert before == tool_output(spec, views)  # what it returned before the patch
    assert now == tool_output(spec, views, {"repo/src/shortlinks/views.py": 1})
    assert normalized(fresh.items) != normalized(stale.items)


@pytest.mark.parametrize("scenario", [CODING, SUPPORT], ids=NAMES)
async def test_a_cache_that_never_invalidates_is_visible(
    gateway: GatewayServer, scenario: Scenario
) -> None:
    """Serving every exact repeat from a cache that ignores writes changes exactly the
    outputs of the repeats that follow a write; the harmless repeats stay the same."""
    cacheable, stale = repeats(scenario)
    fresh, _ = await play(gateway, scenario)
    cached, _ = await play(
        gateway,
        scenario,
        lambda tools: serve_repeats_from(tools, lambda *_: True),
        executed=scenario.total_calls - len(cacheable) - len(stale),
    )
    differing = sum(a != b for a, b in zip(outputs(fresh), outputs(cached), strict=True))
    assert differing == len(stale)
