"""Helpers shared by the tests (importable as ``support`` thanks to ``pythonpath``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec, Turn
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message

WEATHER_TOOL = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    latency_ms=0,
    output_bytes=64,
)

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Quito", "Hanoi", "Cairo", "Perth", "Baku", "Bern"]


def ten_turn_scenario(turns: int = 10) -> Scenario:
    """A conversation of ``turns`` model turns: ``turns - 1`` turns with one call, then text.

    Turn 3 makes two parallel calls, so the count of tool results and of turns differ.
    """
    script: list[Turn] = []
    for index in range(turns - 1):
        calls = [ScriptedCall("get_weather", codec.dumps({"city": CITIES[index]}).decode())]
        if index == 3:
            calls.append(ScriptedCall("get_weather", codec.dumps({"city": "Tokyo"}).decode()))
        script.append(Turn(text=f"Checking step {index + 1}.", calls=tuple(calls)))
    script.append(Turn(text="All ten steps are done: the weather is fine everywhere."))
    return Scenario(
        name="ten",
        turns=tuple(script),
        tools={"get_weather": WEATHER_TOOL},
        instructions="You check the weather.",
        task="Check the weather in ten cities.",
    )


def normalized(items: Sequence[Item]) -> list[tuple[Any, ...]]:
    """The history without ids, call ids or response ids: what the conversation says."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, Message):
            out.append(("message", item.role, item.text))
        elif isinstance(item, FunctionCall):
            out.append(("function_call", item.name, item.arguments))
        elif isinstance(item, FunctionCallOutput):
            out.append(("function_call_output", item.text))
        else:
            out.append((item.type,))
    return out
