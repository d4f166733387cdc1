"""``openai-agents``, unmodified, runs tool loops through the gateway in front of a real
llama.cpp server, with either upstream (Chat Completions, or llama.cpp's own stateless
``/v1/responses``).

The SDK is driven in the modes it offers against a Responses server: ``Runner.run`` (HTTP
JSON), ``Runner.run_streamed`` (SSE), its WebSocket transport, ``auto_previous_response_id``
chaining over WebSocket and over HTTP, and its Chat Completions model. The tiny model calls
``get_weather`` until it has two results and then says "All done.", so each run is three
model turns whose tool really ran twice, and the engine's own cache counts reach the SDK's
usage per turn.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    RunResult,
    RunResultStreaming,
    function_tool,
    responses_websocket_session,
    set_tracing_disabled,
)
from agents.models.interface import Model
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
from openai import AsyncOpenAI

from hotloop.gateway import GatewayServer
from hotloop.testing.llamacpp import ANSWER_TEXT
from support import TINY_MODEL as MODEL
from support import cache_lookups, completed

API_KEY = "test-key"
TASK = "What is the weather in Paris?"
#: The tiny model's loop: a call per turn until two results, then the answer.
TURNS = 3
CALLS = 2

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tracing would try to export spans to api.openai.com, and only the gateway under test
    # may be reached, whatever the environment says.
    set_tracing_disabled(True)
    for name in ("OPENAI_BASE_URL", "OPENAI_WEBSOCKET_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def weather_agent(model: str | Model, calls: list[str], **settings: Any) -> Agent[Any]:
    """An agent with one real tool that records every call it serves."""

    @function_tool
    async def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: The city to look up.
        """
        calls.append(city)
        return "sunny"

    tool: FunctionTool = get_weather
    return Agent(
        name="weather",
        instructions="You answer weather questions.",
        tools=[tool],
        model=model,
        # The tiny model is deterministic under greedy sampling.
        model_settings=ModelSettings(temperature=0, **settings),
    )


def check_run(result: RunResult | RunResultStreaming, calls: list[str]) -> None:
    """Three model turns, the tool ran for both calls, the run ended on the answer, and the
    engine's cache covered at least the whole previous prompt from turn 2 on."""
    assert len(calls) == CALLS and all(isinstance(city, str) for city in calls)
    assert result.final_output == ANSWER_TEXT
    responses = result.raw_responses
    assert len(responses) == TURNS
    usage = []
    for response in responses:
        assert response.usage.requests == 1
        assert response.usage.output_tokens > 0
        usage.append(
            (response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens)
        )
    for (previous_input, previous_cached), (input_tokens, cached) in itertools.pairwise(usage):
        assert 0 < previous_input <= cached < input_tokens, usage
        assert cached > previous_cached, usage
    called = [
        item.raw_item
        for item in result.new_items
        if item.type == "tool_call_item" and getattr(item.raw_item, "name", None)
    ]
    assert [getattr(call, "name", None) for call in called] == ["get_weather"] * CALLS


async def drain(result: RunResultStreaming) -> tuple[list[str], list[str]]:
    """Consume a streamed run; return the raw event types and the run-item event names."""
    raw: list[str] = []
    items: list[str] = []
    async for event in result.stream_events():
        if isinstance(event, RawResponsesStreamEvent):
            raw.append(event.data.type)
        elif isinstance(event, RunItemStreamEvent):
            items.append(event.name)
    return raw, items


async def test_runner_run_http_responses(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = await Runner.run(agent, TASK, max_turns=2 * TURNS)
    check_run(result, calls)
    assert completed(gateway, "http") == TURNS
    assert completed(gateway, "sse") == 0


async def test_runner_run_streamed_sse(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = Runner.run_streamed(agent, TASK, max_turns=2 * TURNS)
    raw, items = await drain(result)
    check_run(result, calls)
    assert raw.count("response.created") == raw.count("response.completed") == TURNS
    assert raw.count("response.function_call_arguments.done") == CALLS
    assert items.count("tool_called") == items.count("tool_output") == CALLS
    assert completed(gateway, "sse") == TURNS
    assert completed(gateway, "http") == 0


async def test_websocket_transport(gateway: GatewayServer) -> None:
    async with responses_websocket_session(api_key=API_KEY, base_url=gateway.base_url) as session:
        calls: list[str] = []
        result = await session.run(weather_agent(MODEL, calls), TASK, max_turns=2 * TURNS)
        check_run(result, calls)
        assert completed(gateway, "websocket") == TURNS

        # A second, streamed run on the same session (and socket).
        calls = []
        streamed = session.run_streamed(weather_agent(MODEL, calls), TASK, max_turns=2 * TURNS)
        _, items = await drain(streamed)
        check_run(streamed, calls)
        assert items.count("tool_called") == CALLS
        assert completed(gateway, "websocket") == 2 * TURNS
    assert completed(gateway, "http") == completed(gateway, "sse") == 0


async def test_auto_previous_response_id_websocket(gateway: GatewayServer) -> None:
    """Chained over WebSocket: each continuation sends only its new items and hits the
    socket's cache, while the upstream still gets the whole conversation."""
    async with responses_websocket_session(api_key=API_KEY, base_url=gateway.base_url) as session:
        calls: list[str] = []
        result = await session.run(
            weather_agent(MODEL, calls, store=False),
            TASK,
            max_turns=2 * TURNS,
            auto_previous_response_id=True,
        )
    check_run(result, calls)
    assert completed(gateway, "websocket") == TURNS
    assert cache_lookups(gateway, "hit") == TURNS - 1
    assert cache_lookups(gateway, "store") == cache_lookups(gateway, "miss") == 0


async def test_auto_previous_response_id_http(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = await Runner.run(agent, TASK, max_turns=2 * TURNS, auto_previous_response_id=True)
    check_run(result, calls)
    ids = [response.response_id for response in result.raw_responses]
    assert result.last_response_id == ids[-1]
    # Every continuation was resolved from the gateway's store, and names its parent.
    assert cache_lookups(gateway, "store") == TURNS - 1
    parents = [(await client.responses.retrieve(str(rid))).previous_response_id for rid in ids]
    assert parents == [None, *ids[:-1]]


async def test_chat_completions_model(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    result = await Runner.run(weather_agent(model, calls), TASK, max_turns=2 * TURNS)
    check_run(result, calls)
    assert completed(gateway, "chat") == TURNS
