"""The real gateway on loopback, driven by the ``openai-agents`` SDK, unmodified.

An Agent with one real function tool runs the ten-turn scenario over every transport of
The Agents SDK in each of its modes: HTTP Responses with ``Runner.run`` (JSON) and
``Runner.run_streamed`` (SSE), the WebSocket transport, and Chat Completions; and with
``auto_previous_response_id=True`` chaining over WebSocket and HTTP. The sim picks its turn
from the number of tool results in the conversation, so the tool must really run for every
scripted call for the run to reach the final text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    OpenAIResponsesWSModel,
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
from hotloop.wire import codec
from support import cache_lookups, completed, ten_turn_scenario

MODEL = "hotloop-sim"
API_KEY = "test-key"
SCENARIO = ten_turn_scenario()
EXPECTED_CITIES = [
    codec.loads(call.arguments)["city"] for turn in SCENARIO.turns for call in turn.calls
]
EXPECTED_TURNS = len(SCENARIO.turns)
FINAL_TEXT = SCENARIO.turns[-1].text
MAX_TURNS = 3 * EXPECTED_TURNS

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


def weather_tool(calls: list[str]) -> FunctionTool:
    """A real function tool that records every call it serves, in order."""

    @function_tool
    async def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: The city to look up.
        """
        # Async, and recording before any await: parallel calls are recorded in the order
        # the SDK starts them, which is the order the model made them.
        calls.append(city)
        return codec.dumps({"city": city, "weather": "sunny"}).decode()

    return get_weather


def weather_agent(model: str | Model, calls: list[str], **settings: Any) -> Agent[Any]:
    return Agent(
        name="weather",
        instructions=SCENARIO.instructions,
        tools=[weather_tool(calls)],
        model=model,
        model_settings=ModelSettings(**settings),
    )


def check_run(result: RunResult | RunResultStreaming, calls: list[str]) -> list[str]:
    """The tool ran for every scripted call in order and the run ended on the final text."""
    assert calls == EXPECTED_CITIES
    assert result.final_output == FINAL_TEXT
    responses = result.raw_responses
    assert len(responses) == EXPECTED_TURNS
    ids = [response.response_id for response in responses]
    assert all(isinstance(rid, str) and rid.startswith("resp_") for rid in ids)
    assert len(set(ids)) == EXPECTED_TURNS
    for response in responses:
        assert response.usage.requests == 1
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
    return [rid for rid in ids if rid is not None]


async def drain(result: RunResultStreaming) -> tuple[list[str], list[str]]:
    """Consume a streamed run; return the raw event types and the tool-call item events."""
    raw: list[str] = []
    items: list[str] = []
    async for event in result.stream_events():
        if isinstance(event, RawResponsesStreamEvent):
            raw.append(event.data.type)
        elif isinstance(event, RunItemStreamEvent):
            items.append(event.name)
    return raw, items


def check_streamed_events(raw: list[str], items: list[str]) -> None:
    assert raw.count("response.created") == EXPECTED_TURNS
    assert raw.count("response.completed") == EXPECTED_TURNS
    assert raw[0] == "response.created" and raw[-1] == "response.completed"
    assert items.count("tool_called") == len(EXPECTED_CITIES)
    assert items.count("tool_output") == len(EXPECTED_CITIES)


# -- (1) and (2): HTTP Responses ---------------------------------------------------------


async def test_runner_run_http_responses(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = await Runner.run(agent, SCENARIO.task, max_turns=MAX_TURNS)
    check_run(result, calls)
    # Runner.run uses JSON, one response per model turn, full history resent every time
    # (replayed function_call items, checklist 56).
    assert completed(gateway, "http") == EXPECTED_TURNS
    assert completed(gateway, "sse") == 0


async def test_runner_run_streamed_http_responses(
    gateway: GatewayServer, client: AsyncOpenAI
) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = Runner.run_streamed(agent, SCENARIO.task, max_turns=MAX_TURNS)
    raw, items = await drain(result)
    check_run(result, calls)
    check_streamed_events(raw, items)
    assert completed(gateway, "sse") == EXPECTED_TURNS
    assert completed(gateway, "http") == 0


async def test_auto_previous_response_id_http(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(OpenAIResponsesModel(model=MODEL, openai_client=client), calls)
    result = await Runner.run(
        agent, SCENARIO.task, max_turns=MAX_TURNS, auto_previous_response_id=True
    )
    ids = check_run(result, calls)
    assert result.last_response_id == ids[-1]
    # Every continuation was resolved from the store (the SDK sends no store flag: default
    # true), and each stored response names its parent.
    assert cache_lookups(gateway, "store") == EXPECTED_TURNS - 1
    parents = [(await client.responses.retrieve(rid)).previous_response_id for rid in ids]
    assert parents == [None, *ids[:-1]]
    for response in result.raw_responses[1:]:
        assert response.usage.input_tokens_details.cached_tokens > 0


# -- (3): the WebSocket transport --------------------------------------------------------


async def test_websocket_transport(gateway: GatewayServer) -> None:
    async with responses_websocket_session(api_key=API_KEY, base_url=gateway.base_url) as session:
        calls: list[str] = []
        result = await session.run(weather_agent(MODEL, calls), SCENARIO.task, max_turns=MAX_TURNS)
        check_run(result, calls)
        assert completed(gateway, "websocket") == EXPECTED_TURNS

        # A second, streamed run reuses the session (and its socket).
        calls = []
        streamed = session.run_streamed(
            weather_agent(MODEL, calls), SCENARIO.task, max_turns=MAX_TURNS
        )
        raw, items = await drain(streamed)
        check_run(streamed, calls)
        check_streamed_events(raw, items)
        assert completed(gateway, "websocket") == 2 * EXPECTED_TURNS
    assert completed(gateway, "http") == completed(gateway, "sse") == 0


async def test_websocket_responses_ws_model(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    """``OpenAIResponsesWSModel`` built directly on our client, without a session."""
    model = OpenAIResponsesWSModel(model=MODEL, openai_client=client)
    try:
        calls: list[str] = []
        result = await Runner.run(weather_agent(model, calls), SCENARIO.task, max_turns=MAX_TURNS)
        check_run(result, calls)
    finally:
        await model.close()
    assert completed(gateway, "websocket") == EXPECTED_TURNS


@pytest.mark.parametrize("store", [None, False], ids=["store_default", "store_false"])
async def test_auto_previous_response_id_websocket(
    gateway: GatewayServer, client: AsyncOpenAI, store: bool | None
) -> None:
    async with responses_websocket_session(api_key=API_KEY, base_url=gateway.base_url) as session:
        calls: list[str] = []
        settings = {} if store is None else {"store": store}
        result = await session.run(
            weather_agent(MODEL, calls, **settings),
            SCENARIO.task,
            max_turns=MAX_TURNS,
            auto_previous_response_id=True,
        )
    ids = check_run(result, calls)
    assert completed(gateway, "websocket") == EXPECTED_TURNS
    # The 9 continuations hit the socket's connection-scoped cache, even with store=False.
    assert cache_lookups(gateway, "hit") == EXPECTED_TURNS - 1
    assert cache_lookups(gateway, "store") == cache_lookups(gateway, "miss") == 0
    for response in result.raw_responses[1:]:
        assert response.usage.input_tokens_details.cached_tokens > 0
    if store is None:
        parents = [(await client.responses.retrieve(rid)).previous_response_id for rid in ids]
        assert parents == [None, *ids[:-1]]


# -- (4): Chat Completions ---------------------------------------------------------------


async def test_chat_completions_model(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    calls: list[str] = []
    result = await Runner.run(weather_agent(model, calls), SCENARIO.task, max_turns=MAX_TURNS)
    assert calls == EXPECTED_CITIES
    assert result.final_output == FINAL_TEXT
    assert len(result.raw_responses) == EXPECTED_TURNS
    assert completed(gateway, "chat") == EXPECTED_TURNS

    calls = []
    streamed = Runner.run_streamed(weather_agent(model, calls), SCENARIO.task, max_turns=MAX_TURNS)
    _, items = await drain(streamed)
    assert calls == EXPECTED_CITIES
    assert streamed.final_output == FINAL_TEXT
    assert len(streamed.raw_responses) == EXPECTED_TURNS
    assert items.count("tool_called") == len(EXPECTED_CITIES)
    assert completed(gateway, "chat") == 2 * EXPECTED_TURNS
    for response in result.raw_responses:
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
    # Streamed, the Agents SDK asks for usage (stream_options.include_usage) only from
    # api.openai.com, so none is expected here.
