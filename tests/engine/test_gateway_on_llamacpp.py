"""The gateway in front of a real llama.cpp server (Chat Completions upstream): the official
SDK in every mode and hotloop's runtime run whole tool loops, and the engine's own cache
counts come through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.chat import ChatBackend
from hotloop.backends.upstream import UpstreamConfig
from hotloop.gateway import GatewayServer
from hotloop.testing.llamacpp import LlamaServer

MODEL = "tiny"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def gateway(llama_server: LlamaServer) -> AsyncIterator[GatewayServer]:
    config = UpstreamConfig(urls=(f"{llama_server.base_url}/v1",), models={MODEL: MODEL})
    async with GatewayServer(ChatBackend(config)) as server:
        yield server


def results_for(output: Any) -> list[dict[str, Any]]:
    calls = [item for item in output if item.type == "function_call"]
    assert calls, "the model should have called a tool"
    return [
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        for call in calls
    ]


@pytest.mark.parametrize("mode", ["http", "sse"])
async def test_official_sdk_runs_a_tool_loop_through_the_gateway(
    gateway: GatewayServer, mode: str
) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
    previous: str | None = None
    new_input: Any = "What is the weather in Paris and Rome?"
    turns = []
    for _ in range(4):
        if mode == "sse":
            async with sdk.responses.stream(
                model=MODEL, input=new_input, tools=[WEATHER], previous_response_id=previous
            ) as stream:
                async for _event in stream:
                    pass
                response = await stream.get_final_response()
        else:
            response = await sdk.responses.create(
                model=MODEL, input=new_input, tools=[WEATHER], previous_response_id=previous
            )
        turns.append(response)
        if not any(item.type == "function_call" for item in response.output):
            break
        previous, new_input = response.id, results_for(response.output)
    await sdk.close()
    # The tiny model calls a tool until it has two results, then answers.
    assert len(turns) == 3
    assert turns[-1].output_text == "All done."
    usage = turns[-1].usage
    assert usage is not None and usage.input_tokens_details.cached_tokens > 0


async def test_official_sdk_in_websocket_mode(gateway: GatewayServer) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
    async with sdk.responses.connect() as connection:
        previous: str | None = None
        new_input: Any = "What is the weather in Paris?"
        calls = 0
        for _ in range(4):
            await connection.response.create(
                model=MODEL,
                input=new_input,
                tools=[WEATHER],
                previous_response_id=previous,
                store=False,
            )
            response = None
            async for event in connection:
                if event.type == "response.completed":
                    response = event.response
                    break
            assert response is not None
            if not any(item.type == "function_call" for item in response.output):
                break
            calls += 1
            previous, new_input = response.id, results_for(response.output)
    await sdk.close()
    assert calls == 2
    assert response.output_text == "All done."


async def test_runtime_runs_the_loop_through_the_gateway(gateway: GatewayServer) -> None:
    seen: list[str] = []

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        seen.append(city)
        return "sunny"

    client = hotloop.connect(gateway.base_url)
    try:
        agent = Agent(MODEL, "You answer weather questions.", [get_weather])
        result = await Runner.run(agent, "Weather in Paris?", client=client)
    finally:
        await client.aclose()
    assert result.turns == 3
    assert result.tool_calls == 2 and len(seen) == 2
    assert result.final_output == "All done."
    assert result.usage.cached_tokens > 0
