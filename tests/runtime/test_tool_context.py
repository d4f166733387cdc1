"""Tools that need more than their arguments, and the mistakes people make writing them.

A tool whose first parameter is a ``RunContext`` gets the run's ``deps`` (a database handle, a
user) and its call's identity, and the model never sees that parameter; methods are tools; a
plain function is accepted as one; OpenAI-style dict items are accepted as input. Mistakes get
errors that name the tool and the parameter, and a tool that raises is logged with its
traceback while the model gets the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from hotloop.errors import InvalidMessage
from hotloop.gateway import GatewayServer
from hotloop.runtime import (
    Agent,
    RunContext,
    Runner,
    ToolDefinitionError,
    tool,
)
from hotloop.transport import connect
from hotloop.wire.items import FunctionCallOutput, Message
from support import CITIES

MODEL = "hotloop-sim"


@dataclass
class Database:
    user: str
    reads: list[str] = field(default_factory=list)


@tool(reads=["weather:{city}"])
async def get_weather(context: RunContext[Database], city: str) -> str:
    """Current weather for a city."""
    context.deps.reads.append(f"{context.turn}:{context.tool_name}:{city}")
    assert context.call_id and context.agent == "forecaster"
    return f"sunny in {city} for {context.deps.user}"


def test_the_context_parameter_is_not_in_the_schema() -> None:
    assert get_weather.takes_context
    assert list(get_weather.parameters["properties"]) == ["city"]
    assert get_weather.parameters["required"] == ["city"]


async def test_deps_reach_every_tool_call(gateway: GatewayServer) -> None:
    database = Database(user="ada")
    agent = Agent(MODEL, tools=[get_weather], name="forecaster")
    async with connect(gateway.base_url) as client:
        result = await Runner.run(agent, "Weather?", client=client, deps=database)
    outputs = [item for item in result.items if isinstance(item, FunctionCallOutput)]
    assert outputs and all("for ada" in item.text for item in outputs)
    assert database.reads[0] == f"1:get_weather:{CITIES[0]}"
    assert len(database.reads) == len(outputs)


class WeatherService:
    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.calls = 0

    @tool(reads=["weather:{city}"])
    def get_weather(self, city: str) -> str:
        """Current weather for a city."""
        self.calls += 1
        return f"21 {self.unit} in {city}"


async def test_methods_are_tools_bound_to_their_instance(gateway: GatewayServer) -> None:
    celsius, fahrenheit = WeatherService("C"), WeatherService("F")
    assert "self" not in celsius.get_weather.parameters["properties"]
    assert celsius.get_weather.parameters["required"] == ["city"]
    async with connect(gateway.base_url) as client:
        result = await Runner.run(Agent(MODEL, tools=[celsius.get_weather]), "go", client=client)
    outputs = [item.text for item in result.items if isinstance(item, FunctionCallOutput)]
    assert outputs and all(text.startswith("21 C in ") for text in outputs)
    assert celsius.calls == len(outputs) and fahrenheit.calls == 0


def test_an_unbound_method_is_refused_by_name() -> None:
    with pytest.raises(ToolDefinitionError, match=r"'get_weather' is a method.*obj\.get_weather"):
        Agent(MODEL, tools=[WeatherService.__dict__["get_weather"]])


async def test_a_plain_function_is_accepted_as_a_tool(gateway: GatewayServer) -> None:
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"windy in {city}"

    agent = Agent(MODEL, tools=[get_weather])
    assert agent.tools[0].name == "get_weather" and agent.tools[0].effects.exclusive
    async with connect(gateway.base_url) as client:
        result = await Runner.run(agent, "go", client=client)
    assert any(
        isinstance(item, FunctionCallOutput) and item.text.startswith("windy")
        for item in result.items
    )


async def test_openai_style_dict_items_are_accepted_as_input(gateway: GatewayServer) -> None:
    def get_weather(city: str) -> str:
        return city

    items: list[Any] = [
        {"type": "message", "role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    ]
    async with connect(gateway.base_url) as client:
        result = await Runner.run(Agent(MODEL, tools=[get_weather]), items, client=client)
    first, second = result.items[:2]
    assert isinstance(first, Message) and (first.role, first.text) == ("developer", "Be brief.")
    assert isinstance(second, Message) and second.text == "Weather in Paris?"
    assert result.final_output


def test_a_malformed_dict_item_is_refused_with_its_position() -> None:
    with pytest.raises(InvalidMessage) as caught:
        Runner.run_sync(
            Agent(MODEL), [{"role": "user", "content": "hi"}, {"type": 3}], base_url="http://x/v1"
        )
    assert caught.value.param is not None and caught.value.param.startswith("input[1]")


class Opaque:
    """Not JSON: a model cannot send one."""


def test_mistakes_name_the_tool_and_the_parameter() -> None:
    with pytest.raises(ToolDefinitionError, match=r"'refund': pure=True .* cannot also"):

        @tool(pure=True, writes=["order:{order_id}"])
        def refund(order_id: str) -> str:
            return order_id

    with pytest.raises(ToolDefinitionError, match=r"'inspect': parameter 'thing' has a type"):

        @tool
        def inspect(thing: Opaque) -> str:
            return ""

    with pytest.raises(ToolDefinitionError, match="RunContext parameter must be the first"):

        @tool
        def late(city: str, context: RunContext[None]) -> str:
            return city

    with pytest.raises(ToolDefinitionError, match=r"must be tools or functions, got .get_weather."):
        Agent(MODEL, tools=["get_weather"])  # type: ignore[list-item]


async def test_a_tool_that_raises_is_logged_with_its_traceback(
    gateway: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    @tool(reads=["weather:{city}"])
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        raise LookupError(f"no station near {city}")

    with caplog.at_level(logging.WARNING, logger="hotloop.runtime"):
        async with connect(gateway.base_url) as client:
            result = await Runner.run(Agent(MODEL, tools=[get_weather]), "go", client=client)
    outputs = [item.text for item in result.items if isinstance(item, FunctionCallOutput)]
    assert outputs and all("LookupError: no station near" in text for text in outputs)
    records = [r for r in caplog.records if r.name == "hotloop.runtime"]
    assert len(records) == len(outputs)
    assert "tool get_weather raised" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is LookupError
