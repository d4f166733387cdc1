"""The simulated model for any agent: the generic mode, and warnings for a scenario whose
scripted calls name tools the request does not offer.

The plan-level tests walk a conversation by hand (each call answered, turn after turn); the
end-to-end tests run agents with tools of their own through a real loopback gateway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import httpx
import pytest
from pydantic import Field

from hotloop.backends.sim import GENERIC_MODEL, SimBackend
from hotloop.errors import ScenarioError
from hotloop.gateway import GatewayServer
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest, ToolDef
from hotloop.runtime import (
    Agent,
    ModelTurnFinished,
    ModelWarning,
    RunFinished,
    Runner,
    RunResult,
    Tool,
    ToolCallFinished,
    tool,
)
from hotloop.sim import engine as engine_module
from hotloop.sim.engine import GENERIC_TURNS, MAX_GENERIC_TURNS, PlannedItem, SimEngine
from hotloop.sim.latency import get_profile
from hotloop.transport import connect
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Message
from hotloop.wire.responses import ResponseObject
from support import ten_turn_scenario

GENERIC = "hotloop-sim:generic"
TASK = "Tidy up the inventory."

# -- tools of an agent that has nothing to do with any scenario --------------------------------

calls_made: list[tuple[str, dict[str, Any]]] = []


@tool(pure=True)
def add(a: int, b: Annotated[int, Field(ge=5)]) -> str:
    """Add two numbers."""
    calls_made.append(("add", {"a": a, "b": b}))
    return str(a + b)


@tool(reads=["stock:{sku}"])
def count_stock(
    sku: Annotated[str, Field(min_length=12)], warehouse: Literal["east", "west"]
) -> str:
    """How many items of a SKU a warehouse holds."""
    calls_made.append(("count_stock", {"sku": sku, "warehouse": warehouse}))
    return f"{len(sku)} in {warehouse}"


@tool(writes=["labels"])
def label(names: Annotated[list[str], Field(min_length=2)], urgent: bool) -> str:
    """Label items."""
    calls_made.append(("label", {"names": names, "urgent": urgent}))
    return "labelled"


@tool(pure=True)
def note(text: str) -> str:
    """Write a note."""
    calls_made.append(("note", {"text": text}))
    return "noted"


TOOLS: dict[str, Tool] = {t.name: t for t in (add, count_stock, label, note)}


def tool_defs(names: Sequence[str]) -> tuple[ToolDef, ...]:
    return tuple(
        ToolDef(name=name, parameters=TOOLS[name].parameters, description="") for name in names
    )


def sim() -> SimEngine:
    return SimEngine(
        {"hotloop-sim": ten_turn_scenario()}, get_profile("zero"), generic_model=GENERIC
    )


def generation(
    context: Conversation, *, model: str = GENERIC, tools: Sequence[str] = (), **fields: Any
) -> GenerationRequest:
    return GenerationRequest(
        request=CreateRequest(model=model, input=(), tools=tool_defs(tools), **fields),
        context=context,
        processed_tokens=context.tokens,
    )


def walk(
    engine: SimEngine, model: str, tools: Sequence[str], *, limit: int = 50, **fields: Any
) -> tuple[list[list[str]], PlannedItem]:
    """Play a conversation to its answer: each turn's calls get a result each. The names
    called per turn, and the answer; every call's arguments must validate."""
    context = Conversation.start([Message(role="user", content=TASK)])
    turns: list[list[str]] = []
    for _ in range(limit):
        planned = engine.plan(generation(context, model=model, tools=tools, **fields))
        calls = [item for item in planned if item.is_call]
        if not calls:
            [answer] = planned
            return turns, answer
        turns.append([call.name or "" for call in calls])
        made: list[FunctionCall] = []
        for index, call in enumerate(calls):
            assert call.name is not None
            TOOLS[call.name].parse(call.text)  # raises if the arguments do not validate
            call_id = f"call_{context.tool_results + index}"
            made.append(FunctionCall(call_id=call_id, name=call.name, arguments=call.text))
        outputs = [FunctionCallOutput(call_id=item.call_id, output="ok") for item in made]
        context = context.extend([*made, *outputs])
    raise AssertionError(f"no answer after {limit} turns")


# -- model ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "turns"),
    [
        (GENERIC, GENERIC_TURNS),
        (f"{GENERIC}:4", 4),
        (f"{GENERIC}:0", 0),
        (f"{GENERIC}:{MAX_GENERIC_TURNS}", MAX_GENERIC_TURNS),
        (f"{GENERIC}:{MAX_GENERIC_TURNS + 1}", None),
        (f"{GENERIC}:", None),
        (f"{GENERIC}:-1", None),
        (f"{GENERIC}:two", None),
        (f"{GENERIC}:4:5", None),
        (f"{GENERIC}:\u0664", None),  # a digit, but not an ASCII one
        ("hotloop-sim", None),
        ("hotloop-sim:genericx", None),
    ],
)
def test_generic_model_ids_name_the_number_of_tool_turns(model: str, turns: int | None) -> None:
    engine = sim()
    assert engine.generic_turns(model) == turns
    assert engine.serves(model) == (turns is not None or model == "hotloop-sim")


def test_the_backend_lists_the_generic_model_and_accepts_every_turn_count() -> None:
    backend = SimBackend(ten_turn_scenario(), "zero")
    assert GENERIC_MODEL == GENERIC
    assert GENERIC in backend.models()
    assert not any(model.startswith(f"{GENERIC}:") for model in backend.models())
    assert backend.accepts_model(f"{GENERIC}:7") and backend.accepts_model("hotloop-sim:ten")
    assert not backend.accepts_model(f"{GENERIC}:x") and not backend.accepts_model("gpt-5")
    with pytest.raises(ScenarioError, match="generic"):
        SimBackend(ten_turn_scenario(), "zero", extra_scenarios={"generic": ten_turn_scenario()})


# -- plan: what the generic model does ---------------------------------------------------------


def test_parallel_turns_rotate_through_every_offered_tool() -> None:
    turns, answer = walk(sim(), GENERIC, ["add", "count_stock", "label", "note"])
    assert turns == [
        ["add", "count_stock", "label"],
        ["note", "add", "count_stock"],
        ["label", "note", "add"],
    ]
    assert answer.text == f"Done after 9 tool results. Understood. (Simulated reply to: {TASK!r}.)"


def test_the_model_id_sets_the_number_of_tool_turns() -> None:
    for count in (0, 1, 4, 7):
        turns, answer = walk(sim(), f"{GENERIC}:{count}", ["add", "note"])
        assert turns == [["add", "note"]] * count
        assert not answer.is_call


def test_without_parallel_calls_each_turn_makes_one_call() -> None:
    turns, _ = walk(
        sim(), f"{GENERIC}:5", ["add", "count_stock", "label"], parallel_tool_calls=False
    )
    assert turns == [["add"], ["count_stock"], ["label"], ["add"], ["count_stock"]]


def test_a_partial_set_of_results_continues_the_same_turn() -> None:
    context = Conversation.start(
        [
            Message(role="user", content=TASK),
            FunctionCall(call_id="c0", name="add", arguments='{"a":1,"b":5}'),
            FunctionCallOutput(call_id="c0", output="6"),
        ]
    )
    planned = sim().plan(generation(context, tools=["add", "count_stock", "label"]))
    assert [item.name for item in planned] == ["count_stock", "label"]


def test_the_plan_is_deterministic() -> None:
    first = walk(sim(), f"{GENERIC}:4", ["add", "count_stock", "label"])
    assert walk(sim(), f"{GENERIC}:4", ["add", "count_stock", "label"]) == first


def test_with_no_tools_or_tool_choice_none_it_answers_at_once() -> None:
    assert walk(sim(), GENERIC, []) == (
        [],
        PlannedItem(f"Understood. (Simulated reply to: {TASK!r}.)"),
    )
    turns, answer = walk(sim(), GENERIC, ["add"], tool_choice="none")
    assert turns == [] and not answer.is_call


def test_a_forced_function_is_the_tool_called() -> None:
    context = Conversation.start([Message(role="user", content=TASK)])
    engine = sim()
    for results in range(4):  # past the model id's two turns too: forcing means a call
        planned = engine.plan(
            generation(
                context,
                model=f"{GENERIC}:2",
                tools=["add", "count_stock"],
                tool_choice="function",
                forced_function="count_stock",
            )
        )
        assert [item.name for item in planned] == ["count_stock"], results
        TOOLS["count_stock"].parse(planned[0].text)
        call = FunctionCall(call_id=f"c{results}", name="count_stock", arguments=planned[0].text)
        context = context.extend([call, FunctionCallOutput(call_id=call.call_id, output="1")])


def test_the_final_answer_follows_a_json_schema_text_format() -> None:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "count": {"type": "integer", "minimum": 2}},
        "required": ["summary", "count"],
    }
    text_format = {"format": {"type": "json_schema", "name": "report", "schema": schema}}
    turns, answer = walk(sim(), f"{GENERIC}:1", ["note"], settings={"text": text_format})
    assert turns == [["note"]]
    assert json.loads(answer.text) == {"summary": "example summary", "count": 2}


# -- a scenario whose tools the request does not offer -----------------------------------------


def scripted(tools: Sequence[str], **fields: Any) -> GenerationRequest:
    context = Conversation.start([Message(role="user", content=TASK)])
    defs = tuple(
        ToolDef(name=name, parameters={"type": "object", "properties": {}}) for name in tools
    )
    return GenerationRequest(
        request=CreateRequest(model="hotloop-sim", input=(), tools=defs, **fields),
        context=context,
        processed_tokens=context.tokens,
    )


def test_a_missing_scripted_tool_is_named_in_a_warning() -> None:
    plan = sim().plan_turn(scripted(["lookup"]))
    assert plan.scenario == "ten" and plan.missing_tools == ("get_weather",)
    [warning] = plan.warnings
    assert "scenario 'ten'" in warning and "tool 'get_weather'" in warning
    assert GENERIC in warning  # and what to do instead
    assert sim().plan_turn(scripted(["get_weather"])).warnings == ()
    assert sim().plan_turn(scripted(["lookup"], tool_choice="none")).warnings == ()
    assert sim().plan_turn(generation(Conversation.start(), tools=["add"])).warnings == ()


async def test_generate_reports_the_warning_and_logs_it_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "_warned", set())  # "once per process": start afresh
    engine = sim()
    builders = []
    with caplog.at_level(logging.WARNING, logger="hotloop.sim"):
        for _ in range(3):
            out = ResponseBuilder(ResponseObject(id="resp_w", created_at=0, model="m", status=""))
            out.start()
            async for _events in engine.generate(scripted(["lookup"]), out):
                pass
            builders.append(out)
    assert all(len(out.warnings) == 1 and "get_weather" in out.warnings[0] for out in builders)
    [record] = [r for r in caplog.records if r.name == "hotloop.sim"]
    assert record.levelno == logging.WARNING
    assert "'ten'" in record.getMessage() and "'get_weather'" in record.getMessage()


# -- end to end: the runtime against a real gateway --------------------------------------------


async def test_an_agent_with_its_own_tools_runs_on_the_generic_model(
    gateway: GatewayServer,
) -> None:
    calls_made.clear()
    agent = Agent(f"{GENERIC}:4", "You keep the inventory.", [add, count_stock, label])
    events = []
    async with connect(gateway.base_url) as client:
        async for event in Runner.run_stream(agent, TASK, client=client):
            events.append(event)
    finished = [event for event in events if isinstance(event, ToolCallFinished)]
    assert finished and all(event.error is None for event in finished)
    turns = [event.tool_calls for event in events if isinstance(event, ModelTurnFinished)]
    assert turns == [3, 3, 3, 3, 0]  # four tool turns of three parallel calls, then the answer
    # Every call's arguments validated and its tool ran: three tools, four calls each.
    assert sorted(name for name, _ in calls_made) == sorted(["add", "count_stock", "label"] * 4)
    for name, arguments in calls_made:
        TOOLS[name].parse(json.dumps(arguments))
    [done] = [event for event in events if isinstance(event, RunFinished)]
    result: RunResult = done.result
    assert result.final_output.startswith("Done after 12 tool results.")
    assert not any(isinstance(event, ModelWarning) for event in events)


async def test_an_agent_whose_tools_differ_from_the_scenario_is_warned(
    gateway: GatewayServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "_warned", set())  # "once per process": start afresh
    agent = Agent("hotloop-sim", "You keep the inventory.", [note])
    warnings: list[ModelWarning] = []
    with caplog.at_level(logging.WARNING, logger="hotloop"):
        async with connect(gateway.base_url) as client:
            for _ in range(2):  # two runs: two warnings for the client, one log line
                async for event in Runner.run_stream(agent, TASK, client=client):
                    if isinstance(event, ModelWarning):
                        warnings.append(event)
    assert [warning.turn for warning in warnings] == [1, 1]
    for warning in warnings:
        assert "'get_weather'" in warning.message and "scenario 'ten'" in warning.message
    gateway_lines = [r for r in caplog.records if r.name == "hotloop.sim"]
    assert len(gateway_lines) == 1 and gateway_lines[0].levelno == logging.WARNING
    assert "'get_weather'" in gateway_lines[0].getMessage()
    runtime_lines = [r for r in caplog.records if r.name == "hotloop.runtime"]
    assert len(runtime_lines) == 2 and all(r.levelno == logging.WARNING for r in runtime_lines)
    assert "'get_weather'" in runtime_lines[0].getMessage()


async def test_the_gateway_serves_generic_model_ids(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        listed = {entry["id"] for entry in (await http.get("/v1/models")).json()["data"]}
        assert GENERIC in listed
        body = {"model": f"{GENERIC}:2", "input": "hi", "tools": [add.definition()]}
        reply = await http.post("/v1/responses", json=body)
        assert reply.status_code == 200
        [call] = reply.json()["output"]
        assert call["type"] == "function_call" and call["name"] == "add"
        add.parse(call["arguments"])
        missing = await http.post("/v1/responses", json={"model": f"{GENERIC}:x", "input": "hi"})
        assert missing.status_code == 404
        scripted_reply = await http.post(
            "/v1/responses",
            json={"model": "hotloop-sim", "input": "hi", "tools": [note.definition()]},
        )
        warnings = scripted_reply.json()["hotloop"]["warnings"]
        assert len(warnings) == 1 and "'get_weather'" in warnings[0]


def test_tool_choice_required_keeps_calling_past_the_tool_turns() -> None:
    with pytest.raises(AssertionError, match="no answer after 3 turns"):
        walk(sim(), f"{GENERIC}:1", ["add", "note"], limit=3, tool_choice="required")
    turns, answer = walk(sim(), f"{GENERIC}:1", ["add", "note"])
    assert turns == [["add", "note"]] and not answer.is_call
