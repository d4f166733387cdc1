"""The bundled scenarios, scenario validation and the turn arithmetic of ``Scenario.turn_for``."""

from __future__ import annotations

import copy
import re
import string
from importlib import resources
from typing import Any

import pytest

from hotloop.errors import ScenarioError
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn, bundled_scenarios, load_scenario
from hotloop.wire import codec

BUNDLED = ("coding", "research", "support", "coding-session", "support-research")


# -- helpers -------------------------------------------------------------------------------


def _check_value(schema: dict[str, Any], value: Any, where: str) -> None:
    """A small JSON-schema check: the subset the bundled tools use."""
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if kind is not None:
        assert checks[kind](value), f"{where}: {value!r} is not of type {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: {value!r} < minimum"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{where}: {value!r} > maximum"
    if "exclusiveMinimum" in schema:
        assert value > schema["exclusiveMinimum"], f"{where}: {value!r} <= exclusiveMinimum"
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if kind == "array" and "items" in schema:
        for i, entry in enumerate(value):
            _check_value(schema["items"], entry, f"{where}[{i}]")
    if kind == "object":
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing required {key!r}"
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(properties)
            assert not extra, f"{where}: unexpected properties {sorted(extra)}"
        for key, entry in value.items():
            if key in properties:
                _check_value(properties[key], entry, f"{where}.{key}")


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def _turns_with_calls(scenario: Scenario) -> list[Turn]:
    return [turn for turn in scenario.turns if turn.calls]


def _calls(scenario: Scenario, name: str) -> list[ScriptedCall]:
    return [call for turn in scenario.turns for call in turn.calls if call.name == name]


def _minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "mini",
        "tools": {
            "read": {
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"],
                },
                "latency_ms": 10,
                "output_bytes": 100,
                "effects": {"reads": ["file:{path}"]},
            }
        },
        "turns": [
            {"text": "Looking.", "calls": [{"name": "read", "arguments": {"path": "a.py"}}]},
            {"text": "Done."},
        ],
    }
    data.update(overrides)
    return data


# -- every bundled scenario ----------------------------------------------------------------


def test_bundled_scenarios_are_listed() -> None:
    assert set(BUNDLED) <= set(bundled_scenarios())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scenario_loads_and_is_consistent(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description and scenario.instructions and scenario.task
    assert scenario.total_calls == sum(len(turn.calls) for turn in scenario.turns)
    # Only the last turn may be text-only, and it is: a final answer closes every rollout.
    assert all(turn.calls for turn in scenario.turns[:-1])
    assert not scenario.turns[-1].calls and scenario.turns[-1].text
    for tool in scenario.tools.values():
        schema = tool.parameters
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        assert tool.description
        entry = tool.to_responses_tool()
        assert entry["type"] == "function" and entry["name"] == tool.name


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_calls_match_schemas_and_effect_templates(name: str) -> None:
    scenario = load_scenario(name)
    used = set()
    for index, turn in enumerate(scenario.turns):
        for call in turn.calls:
            used.add(call.name)
            tool = scenario.tools[call.name]
            arguments = codec.loads(call.arguments)
            _check_value(dict(tool.parameters), arguments, f"{name}.turns[{index}].{call.name}")
            for template in (*tool.effects.reads, *tool.effects.writes):
                missing = _placeholders(template) - set(arguments)
                assert not missing, f"{call.name}: effect {template!r} needs {missing}"
    assert used == set(scenario.tools), "every declared tool is used"


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_effects_use_only_known_keys(name: str) -> None:
    raw = codec.loads(
        resources.files("hotloop.sim").joinpath("scenarios", f"{name}.json").read_bytes()
    )
    for tool in raw["tools"].values():
        assert set(tool["effects"]) <= {"reads", "writes", "pure", "idempotent"}


def test_turn_for_walks_every_bundled_script() -> None:
    for name in BUNDLED:
        scenario = load_scenario(name)
        results = 0
        for index, turn in enumerate(scenario.turns):
            assert scenario.turn_for(results) == index
            assert scenario.calls_before(index) == results
            results += len(turn.calls)
        assert scenario.turn_for(results) == len(scenario.turns) - 1  # final answer turn


# -- coding --------------------------------------------------------------------------------


def test_coding_shape() -> None:
    coding = load_scenario("coding")
    assert 20 <= coding.total_calls <= 30
    assert 13 <= len(coding.turns) <= 17
    parallel = [turn for turn in coding.turns if 2 <= len(turn.calls) <= 4]
    assert len(parallel) >= 3
    assert max(len(turn.calls) for turn in coding.turns) <= 4
    assert coding.turns[-1].calls == ()
    assert len(coding.turns[-1].text or "") > 400  # a concrete summary, several sentences


def test_coding_writes_and_tests() -> None:
    coding = load_scenario("coding")
    patches = _calls(coding, "apply_patch")
    assert len(patches) >= 2
    assert coding.tools["apply_patch"].effects.writes == ("repo/{path}",)
    # One turn patches two different files in parallel.
    assert any(
        len({codec.loads(c.arguments)["path"] for c in turn.calls if c.name == "apply_patch"}) == 2
        for turn in coding.turns
    )
    for call in patches:
        arguments = codec.loads(call.arguments)
        patch = arguments["patch"]
        assert patch.startswith(f"--- a/{arguments['path']}\n+++ b/{arguments['path']}\n")
        assert "\n@@ -" in patch
        assert 4 <= patch.count("\n") <= 40
    assert len(_calls(coding, "run_tests")) == 2
    assert coding.tools["run_tests"].latency_ms >= 1000
    # The second test run comes after the last patch.
    order = [call.name for turn in coding.turns for call in turn.calls]
    last_patch = max(i for i, name in enumerate(order) if name == "apply_patch")
    runs = [i for i, name in enumerate(order) if name == "run_tests"]
    assert runs[0] < order.index("apply_patch") and runs[1] > last_patch


def test_coding_output_sizes_and_reads() -> None:
    coding = load_scenario("coding")
    sizes = [tool.output_bytes for tool in coding.tools.values()]
    assert min(sizes) < 1024 and max(sizes) > 3072
    read_file = coding.tools["read_file"]
    assert read_file.effects.reads == ("repo/{path}",)
    assert 1024 <= read_file.output_bytes <= 6144
    assert 30 <= read_file.latency_ms <= 60
    assert 50 <= coding.tools["grep"].latency_ms <= 150
    assert coding.tools["grep"].effects.reads == ("repo",)
    assert coding.tools["list_dir"].effects.reads == ("repo/{path}",)
    # Parallel reads in one turn touch different files.
    for turn in coding.turns:
        paths = [codec.loads(c.arguments)["path"] for c in turn.calls if c.name == "read_file"]
        assert len(paths) == len(set(paths))


# -- support and research ------------------------------------------------------------------


def test_support_shape() -> None:
    support = load_scenario("support")
    assert 5 <= len(support.turns) <= 7
    assert 8 <= support.total_calls <= 12
    lookups = {"lookup_customer", "get_order", "get_shipment", "search_kb"}
    assert any(
        len(turn.calls) >= 2 and {call.name for call in turn.calls} <= lookups
        for turn in support.turns
    )
    writes = [
        call
        for turn in support.turns
        for call in turn.calls
        if support.tools[call.name].effects.writes
    ]
    assert writes
    assert support.tools["issue_refund"].effects.writes == ("order:{order_id}",)
    for name in lookups:
        tool = support.tools[name]
        assert not tool.effects.writes and tool.effects.idempotent
        assert 50 <= tool.latency_ms <= 300
        assert tool.output_bytes < 1024
    assert support.turns[-1].calls == () and len(support.turns[-1].text or "") < 1500


def test_research_shape() -> None:
    research = load_scenario("research")
    assert 6 <= len(research.turns) <= 8
    assert research.tools["web_search"].effects.reads == ("web",)
    assert research.tools["fetch_page"].effects.reads == ("url:{url}",)
    assert research.tools["write_notes"].effects.writes == ("notes",)
    assert 3072 <= research.tools["fetch_page"].output_bytes <= 8192
    long_turns = [turn for turn in research.turns[:-1] if len(turn.text or "") > 1500]
    assert len(long_turns) >= 2
    assert all(turn.calls for turn in long_turns)  # analysis before calls
    report = research.turns[-1].text or ""
    assert 800 <= len(report.split()) <= 1200
    assert any(len(turn.calls) >= 2 for turn in research.turns)


# -- malformed scenarios -------------------------------------------------------------------


def test_minimal_scenario_is_valid() -> None:
    scenario = Scenario.from_dict(_minimal())
    assert scenario.total_calls == 1
    assert scenario.tools["read"].effects.reads == ("file:{path}",)
    assert scenario.turns[0].calls[0] == ScriptedCall("read", '{"path":"a.py"}')


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("name"), "scenario.name must be a non-empty string"),
        (lambda d: d.update(name=""), "scenario.name must be a non-empty string"),
        (lambda d: d.update(turns=[]), "has no turns"),
        (lambda d: d.pop("turns"), "turns must be a list"),
        (
            lambda d: d["turns"][0]["calls"].append({"name": "rm_rf", "arguments": {}}),
            "calls unknown tool 'rm_rf'",
        ),
        (
            lambda d: d["tools"]["read"].update(effects={"reads": ["x"], "deletes": ["y"]}),
            "mini.tools.read.effects has unknown keys: ['deletes']",
        ),
        (
            lambda d: d["tools"]["read"].update(effects={"reads": "file:{path}"}),
            "effects.reads must be a list of strings",
        ),
        (
            lambda d: d["tools"]["read"].update(latency_ms=-5),
            "mini.tools.read.latency_ms must be a non-negative number",
        ),
        (
            lambda d: d["tools"]["read"].update(output_bytes=1.5),
            "output_bytes must be a non-negative integer",
        ),
        (lambda d: d["turns"].insert(1, {}), "turn 1 has no text and no calls"),
        (
            lambda d: d["turns"].insert(0, {"text": "Hmm."}),
            "turn 0 has no calls but is not the last turn",
        ),
        (
            lambda d: d["turns"][0]["calls"].append({"arguments": {}}),
            "calls[1] needs a string 'name'",
        ),
        (
            lambda d: d["turns"][0]["calls"][0].update(arguments='{"path": "a.py"}'),
            "arguments must be an object",
        ),
        (lambda d: d["turns"][0].update(text=42), "text must be a string"),
        (lambda d: d.update(tools=[]), "tools must be an object keyed by tool name"),
    ],
)
def test_malformed_scenario_raises(mutate: Any, message: str) -> None:
    data = copy.deepcopy(_minimal())
    mutate(data)
    with pytest.raises(ScenarioError, match=re.escape(message)):
        Scenario.from_dict(data)


def test_non_object_scenario_raises() -> None:
    with pytest.raises(ScenarioError, match="must be a JSON object"):
        Scenario.from_dict(["not", "a", "scenario"])


def test_load_scenario_errors(tmp_path: Any) -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'; bundled: .*coding"):
        load_scenario("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(tmp_path / "missing.json")
    good = tmp_path / "mini.json"
    good.write_bytes(codec.dumps(_minimal()))
    assert load_scenario(good).name == "mini"
    assert load_scenario(str(good)).total_calls == 1


def test_load_bundled_name_ignores_directory_of_that_name(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "coding").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_scenario("coding").name == "coding"


# -- Scenario.turn_for ---------------------------------------------------------------------


def _scenario(*calls_per_turn: int, final_text: bool = True) -> Scenario:
    turns = [
        Turn(text=f"turn {i}", calls=tuple(ScriptedCall("t", "{}") for _ in range(n)))
        for i, n in enumerate(calls_per_turn)
    ]
    if final_text:
        turns.append(Turn(text="answer"))
    return Scenario(name="s", turns=tuple(turns))


def test_turn_for_counts_tool_results() -> None:
    scenario = _scenario(2, 1, 3)  # offsets 0, 2, 3, 6; turn 3 is the answer
    assert scenario.total_calls == 6
    assert [scenario.turn_for(r) for r in range(8)] == [0, 0, 1, 2, 2, 2, 3, None]
    assert [scenario.calls_before(i) for i in range(4)] == [0, 2, 3, 6]


def test_turn_for_partial_results_stay_on_reached_turn() -> None:
    scenario = _scenario(3, 4)
    assert scenario.turn_for(1) == 0
    assert scenario.turn_for(2) == 0
    assert scenario.turn_for(3) == 1
    assert scenario.turn_for(6) == 1
    assert scenario.turn_for(7) == 2


def test_turn_for_is_none_after_a_script_ending_with_calls() -> None:
    scenario = _scenario(1, 2, final_text=False)
    assert scenario.turn_for(0) == 0
    assert scenario.turn_for(2) == 1
    assert scenario.turn_for(3) is None
    assert scenario.turn_for(10) is None


def test_turn_for_single_text_turn() -> None:
    scenario = Scenario(name="chat", turns=(Turn(text="Hello."),))
    assert scenario.total_calls == 0
    assert scenario.turn_for(0) == 0
    assert scenario.turn_for(1) is None


# -- latency overrides ---------------------------------------------------------------------


def test_latency_override_validates_values() -> None:
    profile = get_profile("fast", {"ttft_s": "0.5"})
    assert profile.ttft_s == 0.5 and profile.decode_tokens_per_s == 1000.0
    with pytest.raises(ScenarioError, match="unknown latency parameter"):
        get_profile("fast", {"ttft": 1})
    with pytest.raises(ScenarioError, match="ttft_s must be a number"):
        get_profile("fast", {"ttft_s": "fast"})
    with pytest.raises(ScenarioError, match="must be a finite non-negative number"):
        get_profile("frontier", {"decode_tokens_per_s": -65})
    with pytest.raises(ScenarioError, match="unknown latency profile"):
        get_profile("instant")
