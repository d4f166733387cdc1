"""The gateway in front of a real llama.cpp server, with either upstream: Chat Completions
(``ChatBackend``) and llama.cpp's own stateless ``/v1/responses`` (``ResponsesBackend``).

The official SDK in every mode and hotloop's runtime run whole tool loops through it: the tiny
model calls ``get_weather`` until it has two results, then says "All done.", so every loop is
three model turns and two tool calls. The engine's own prompt-cache counts come through per
turn: from turn 2 on, the whole previous turn's prompt is reused from the engine's cache.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import openai
import pytest

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.gateway import GatewayServer
from hotloop.testing.llamacpp import ANSWER_TEXT, LlamaServer
from support import TINY_MODEL as MODEL
from support import WEATHER_FUNCTION as WEATHER
from support import engine_backend

#: The tiny model's loop: a call per turn until two results, then the answer.
TURNS = 3
CALLS = 2

pytestmark = pytest.mark.timeout(60)


def results_for(output: Any) -> list[dict[str, Any]]:
    calls = [item for item in output if item.type == "function_call"]
    assert calls, "the model should have called a tool"
    return [
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        for call in calls
    ]


def check_calls(responses: Sequence[Any]) -> None:
    """Every turn but the last made one ``get_weather`` call with a string ``city``."""
    for response in responses[:-1]:
        [call] = [item for item in response.output if item.type == "function_call"]
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments)["city"], str)
        assert call.call_id
    assert not [item for item in responses[-1].output if item.type == "function_call"]


def check_engine_cache(usage: Sequence[tuple[int, int]]) -> None:
    """``usage`` is (input tokens, cached tokens) per turn, as the engine reported them.

    From turn 2 on, the engine reused at least the whole previous prompt from its cache (the
    conversation grows by the model's call and the tool's result), so the count grows every
    turn and never covers the new tokens. Turn 1 may hit too: the system prompt and tools
    block of earlier conversations on the same server.
    """
    assert len(usage) == TURNS
    for (previous_input, previous_cached), (input_tokens, cached) in itertools.pairwise(usage):
        assert 0 < previous_input <= cached < input_tokens, usage
        assert cached > previous_cached, usage


def sdk_usage(response: Any) -> tuple[int, int]:
    usage = response.usage
    assert usage is not None
    return usage.input_tokens, usage.input_tokens_details.cached_tokens


def cache_lookups(server: GatewayServer, result: str) -> float:
    value = server.gateway.metrics.registry.get_sample_value(
        "hotloop_cache_lookups_total", {"result": result}
    )
    return value or 0.0


@pytest.mark.parametrize("mode", ["http", "sse"])
async def test_official_sdk_runs_a_tool_loop_through_the_gateway(
    gateway: GatewayServer, mode: str
) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    previous: str | None = None
    new_input: Any = "What is the weather in Paris and Rome?"
    turns = []
    for _ in range(TURNS + 1):
        if mode == "sse":
            async with sdk.responses.stream(
                model=MODEL,
                input=new_input,
                tools=[WEATHER],
                previous_response_id=previous,
                temperature=0,
            ) as stream:
                async for _event in stream:
                    pass
                response = await stream.get_final_response()
        else:
            response = await sdk.responses.create(
                model=MODEL,
                input=new_input,
                tools=[WEATHER],
                previous_response_id=previous,
                temperature=0,
            )
        assert response.status == "completed"
        turns.append(response)
        if not any(item.type == "function_call" for item in response.output):
            break
        previous, new_input = response.id, results_for(response.output)
    await sdk.close()
    # The tiny model calls a tool until it has two results, then answers.
    assert len(turns) == TURNS
    check_calls(turns)
    assert turns[-1].output_text == ANSWER_TEXT
    check_engine_cache([sdk_usage(response) for response in turns])
    # Each continuation was resolved from the gateway's store (HTTP has no socket cache).
    assert cache_lookups(gateway, "store") == TURNS - 1


async def websocket_loop(sdk: openai.AsyncOpenAI, task: str) -> list[Any]:
    """The tool loop over one WebSocket, each continuation sending only its new items."""
    turns = []
    async with sdk.responses.connect() as connection:
        previous: str | None = None
        new_input: Any = task
        for _ in range(TURNS + 1):
            await connection.response.create(
                model=MODEL,
                input=new_input,
                tools=[WEATHER],
                previous_response_id=previous,
                store=False,
                temperature=0,
            )
            response = None
            async for event in connection:
                if event.type == "response.completed":
                    response = event.response
                    break
            assert response is not None
            turns.append(response)
            if not any(item.type == "function_call" for item in response.output):
                break
            previous, new_input = response.id, results_for(response.output)
    return turns


async def test_official_sdk_in_websocket_mode(gateway: GatewayServer) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    turns = await websocket_loop(sdk, "What is the weather in Paris?")
    await sdk.close()
    assert len(turns) == TURNS
    check_calls(turns)
    assert turns[-1].output_text == ANSWER_TEXT
    check_engine_cache([sdk_usage(response) for response in turns])
    # The continuations sent only their new items: the socket's cache had the rest.
    assert cache_lookups(gateway, "hit") == TURNS - 1
    assert cache_lookups(gateway, "store") == cache_lookups(gateway, "miss") == 0


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
async def test_runtime_runs_the_loop_through_the_gateway(
    gateway: GatewayServer, transport: Literal["websocket", "http", "chat"]
) -> None:
    """Over WebSocket mode (incremental), Responses SSE (whole history) and Chat
    Completions."""
    seen: list[str] = []

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        seen.append(city)
        return "sunny"

    client = hotloop.connect(gateway.base_url, transport=transport)
    try:
        agent = Agent(
            MODEL, "You answer weather questions.", [get_weather], settings={"temperature": 0}
        )
        result = await Runner.run(agent, "Weather in Paris?", client=client)
    finally:
        await client.close()
    assert result.turns == TURNS
    assert result.tool_calls == CALLS and len(seen) == CALLS
    assert [len(step.tools) for step in result.steps] == [1, 1, 0]
    assert all(record.name == "get_weather" for step in result.steps for record in step.tools)
    assert result.final_output == ANSWER_TEXT
    usage = []
    for step in result.steps:
        assert step.usage is not None
        usage.append((step.usage.input_tokens, step.usage.cached_tokens))
    check_engine_cache(usage)
    assert result.usage.cached_tokens == sum(cached for _, cached in usage)


# -- the Responses upstream with chain = true ------------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real loopback transport, noting each request to the upstream's ``/responses``:
    whether it was chained (``previous_response_id``), and the upstream's status."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[bool, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/responses"):
            body = json.loads(request.content)
            self.sent.append(("previous_response_id" in body, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_chained_responses_upstream_falls_back_to_the_whole_context(
    llama_server: LlamaServer,
) -> None:
    """llama.cpp's ``/v1/responses`` stores nothing and refuses ``previous_response_id``
    (400). With ``chain = true`` every continuation is refused and sent again whole, and the
    loop still completes with the engine's cache warm."""
    async with httpx.AsyncClient(base_url=llama_server.base_url, timeout=30.0) as http:
        refused = await http.post(
            "/v1/responses", json={"input": "Hi", "previous_response_id": "resp_x"}
        )
    assert refused.status_code == 400
    assert (
        refused.json()["error"]["message"] == "llama.cpp does not support 'previous_response_id'."
    )

    recording = RecordingTransport()
    backend = engine_backend(llama_server.base_url, "responses-chain", transport=recording)
    async with GatewayServer(backend) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
        turns = await websocket_loop(sdk, "What is the weather in Paris?")
        await sdk.close()
    assert len(turns) == TURNS
    check_calls(turns)
    assert turns[-1].output_text == ANSWER_TEXT
    check_engine_cache([sdk_usage(response) for response in turns])
    assert recording.sent == [(False, 200)] + [(True, 400), (False, 200)] * (TURNS - 1)
