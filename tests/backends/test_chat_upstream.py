"""The gateway in front of a Chat Completions upstream, over real loopback sockets.

Two kinds of upstream: a hotloop gateway playing the simulated model (a real Chat Completions
server with streamed tool calls and a prefix cache), and :class:`FaultUpstream`, a scripted
server that records every request's bytes and can fail in every way a model server does.
Clients are the official ``openai`` SDK (HTTP JSON, SSE, WebSocket mode), raw ``httpx`` where
the exact status and body matter, and hotloop's runtime. Only deterministic facts are
asserted: calls, counts, bytes and the order of an event log; the timeouts here are guards
against hangs or the small upstream timeouts a test is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, NotFoundError

import hotloop
from backends.fault_upstream import (
    Call,
    Drop,
    FaultUpstream,
    Recorded,
    Reply,
    Stall,
    Status,
    Stream,
    closed_port_url,
    error_body,
)
from hotloop.backends.chat import ChatBackend
from hotloop.backends.routing import RoutedBackend
from hotloop.backends.sim import SimBackend
from hotloop.backends.upstream import UpstreamConfig, UpstreamConfigError
from hotloop.cli import main
from hotloop.gateway import GatewayServer
from hotloop.protocol.conversation import Conversation
from hotloop.runtime import Agent, Runner, tool
from hotloop.wire.items import items_from_input
from support import ten_turn_scenario

pytestmark = pytest.mark.timeout(60)

SCENARIO = ten_turn_scenario()
TOOLS: list[dict[str, Any]] = SCENARIO.responses_tools()
EXPECTED_CALLS = [(c.name, json.loads(c.arguments)) for t in SCENARIO.turns for c in t.calls]
FINAL_TEXT = SCENARIO.turns[-1].text
LOCAL = "local"
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}
LOOK_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "look",
    "description": "Look at a file.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}
#: What an error message must never show: Python's or a library's own exception text.
EXCEPTION_TEXT = re.compile(
    r"Traceback|Error\(|Exception|httpx|httpcore|h11|orjson|Errno|line \d+ column|"
    r"object has no attribute|NoneType"
)


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the servers started here may be reached, whatever the environment says.
    for name in ("OPENAI_BASE_URL", "OPENAI_WEBSOCKET_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


# -- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def chat_gateway(
    *urls: str, models: dict[str, str] | None = None, **settings: Any
) -> AsyncIterator[GatewayServer]:
    """The gateway under test, forwarding to the Chat Completions upstream(s) at ``urls``."""
    config = UpstreamConfig(
        urls=urls, models=models if models is not None else {LOCAL: "upstream-model"}, **settings
    )
    async with GatewayServer(ChatBackend(config)) as server:
        yield server


@asynccontextmanager
async def sim_upstream() -> AsyncIterator[GatewayServer]:
    """A real Chat Completions server: a hotloop gateway playing the ten-turn scenario."""
    async with GatewayServer(SimBackend(SCENARIO, "zero")) as server:
        yield server


@asynccontextmanager
async def sdk(server: GatewayServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        yield client


def backend_of(server: GatewayServer) -> ChatBackend:
    backend = server.gateway.backend
    assert isinstance(backend, ChatBackend)
    return backend


def as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    data: dict[str, Any] = obj.model_dump(mode="json", warnings=False, by_alias=True)
    return data


def calls_of(output: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in output if item["type"] == "function_call"]


def text_of(output: Sequence[dict[str, Any]]) -> str:
    return "".join(
        part.get("text") or ""
        for item in output
        if item["type"] == "message"
        for part in item["content"]
    )


def weather(arguments: str) -> str:
    return json.dumps({"city": json.loads(arguments)["city"], "weather": "sunny"})


def outputs_for(calls: Sequence[dict[str, Any]], result: Callable[[str], str]) -> list[Any]:
    return [
        {"type": "function_call_output", "call_id": c["call_id"], "output": result(c["arguments"])}
        for c in calls
    ]


def replay(output: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as input items (a stateless client re-sending the whole history)."""
    items: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "function_call":
            items.append({k: item[k] for k in ("type", "call_id", "name", "arguments")})
        else:
            items.append({"role": "assistant", "content": text_of([item])})
    return items


async def ws_turn(connection: Any, **request: Any) -> list[dict[str, Any]]:
    """One ``response.create`` over WebSocket mode, read to its terminal event."""
    await connection.response.create(**request)
    events: list[dict[str, Any]] = []
    async for event in connection:
        events.append(as_dict(event))
        if events[-1]["type"] in TERMINAL:
            break
    return events


async def sse_turn(client: AsyncOpenAI, **request: Any) -> list[dict[str, Any]]:
    stream = await client.responses.create(stream=True, **request)
    return [as_dict(event) async for event in stream]


async def raw_sse_turn(gateway: GatewayServer, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One streamed turn over plain HTTP: each SSE message's JSON, exactly as sent."""
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{gateway.base_url}/responses", json={**request, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in reply.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            event = json.loads(fields["data"])
            assert fields["event"] == event["type"]
            events.append(event)
    return events


@dataclass
class Seen:
    """What a client saw over one conversation, turn by turn."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)

    def add(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        assert response["status"] == "completed", response.get("error")
        assert response["model"] == LOCAL
        calls = calls_of(response["output"])
        self.calls += [(c["name"], json.loads(c["arguments"])) for c in calls]
        self.call_ids += [c["call_id"] for c in calls]
        self.texts.append(text_of(response["output"]))
        self.usages.append(response["usage"])
        return calls


def check_sim_conversation(seen: Seen) -> None:
    """The ten-turn scenario, as played by the upstream, reached the client intact."""
    assert seen.calls == EXPECTED_CALLS
    assert seen.texts == [turn.text for turn in SCENARIO.turns]
    assert len(seen.usages) == len(SCENARIO.turns) == 10
    assert len(set(seen.call_ids)) == len(seen.call_ids) == 10
    # The upstream's call ids pass through (the sim gateway names its calls call_…).
    assert all(call_id.startswith("call_") for call_id in seen.call_ids)
    cached = [usage["input_tokens_details"]["cached_tokens"] for usage in seen.usages]
    assert cached[0] == 0
    for usage in seen.usages[1:]:
        assert 0 < usage["input_tokens_details"]["cached_tokens"] < usage["input_tokens"]
    # Every turn re-sends the whole conversation and the upstream's prefix cache grows.
    assert cached == sorted(cached)


# -- a multi-turn tool loop, upstream = a hotloop gateway playing the sim -----------------


@pytest.mark.parametrize("mode", ["http_json", "sse", "websocket"])
async def test_tool_loop_through_the_gateway_with_the_openai_sdk(mode: str) -> None:
    seen = Seen()
    async with (
        sim_upstream() as upstream,
        chat_gateway(upstream.base_url, models={LOCAL: "hotloop-sim"}) as gateway,
        sdk(gateway) as client,
    ):
        base = {"model": LOCAL, "instructions": SCENARIO.instructions, "tools": TOOLS}
        if mode == "sse":
            # A stateless client: the whole history every turn, no previous_response_id.
            history: list[Any] = [{"role": "user", "content": SCENARIO.task}]
            for _ in range(12):
                events = await sse_turn(client, input=history, store=False, **base)
                assert [e["type"] for e in events[:2]] == [
                    "response.created",
                    "response.in_progress",
                ]
                assert events[-1]["type"] == "response.completed"
                response = events[-1]["response"]
                calls = seen.add(response)
                if not calls:
                    break
                history += replay(response["output"]) + outputs_for(calls, weather)
        elif mode == "http_json":
            new_input: Any = SCENARIO.task
            previous: str | None = None
            for _ in range(12):
                result = await client.responses.create(
                    input=new_input, store=True, previous_response_id=previous, **base
                )
                calls = seen.add(as_dict(result))
                if not calls:
                    break
                previous, new_input = result.id, outputs_for(calls, weather)
        else:
            async with client.responses.connect() as connection:
                new_input = SCENARIO.task
                previous = None
                for _ in range(12):
                    extra = {} if previous is None else {"previous_response_id": previous}
                    events = await ws_turn(
                        connection, input=new_input, store=False, **base, **extra
                    )
                    response = events[-1]["response"]
                    calls = seen.add(response)
                    if not calls:
                        break
                    previous, new_input = response["id"], outputs_for(calls, weather)
    check_sim_conversation(seen)


async def test_tool_loop_through_the_gateway_with_the_runtime() -> None:
    executed: list[str] = []

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: The city.
        """
        executed.append(city)
        return f"Sunny in {city}."

    agent = Agent(LOCAL, SCENARIO.instructions, [get_weather])
    async with (
        sim_upstream() as upstream,
        chat_gateway(upstream.base_url, models={LOCAL: "hotloop-sim"}) as gateway,
    ):
        client = hotloop.connect(gateway.base_url)  # WebSocket mode
        try:
            result = await Runner.run(agent, SCENARIO.task, client=client)
        finally:
            await client.close()

    assert result.final_output == FINAL_TEXT
    assert result.turns == 10 and result.tool_calls == 10
    assert executed == [arguments["city"] for _, arguments in EXPECTED_CALLS]
    usages = [step.usage for step in result.steps]
    assert all(usage is not None for usage in usages)
    cached = [usage.cached_tokens for usage in usages if usage is not None]
    assert cached[0] == 0 and all(count > 0 for count in cached[1:])


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_a_rate_limited_turn_waits_the_upstreams_retry_after(transport: str) -> None:
    # The upstream asks for 2.5 s, longer than the gateway holds a client (2 s): the 429 goes
    # to the runner (an HTTP retry-after header, or the WebSocket error's error.headers),
    # which waits that long before it sends the turn again.
    slow_down = Status(429, error_body("Slow down.", "rate_limit_error"), {"retry-after": "2.5"})
    async with FaultUpstream() as upstream, chat_gateway(upstream.base_url) as gateway:
        upstream.script(slow_down, Stream(Reply(text="Recovered.")))
        client = hotloop.connect(gateway.base_url, transport=transport)  # type: ignore[arg-type]
        started = time.perf_counter()
        try:
            result = await Runner.run(Agent(LOCAL), "hi", client=client)
        finally:
            await client.close()
        waited = time.perf_counter() - started
    assert result.final_output == "Recovered." and result.steps[0].attempts == 2
    assert len(upstream.requests) == 2
    assert 2.5 <= waited < 10


# -- usage and the bytes sent -------------------------------------------------------------


@pytest.mark.parametrize("style", ["openai", "llama"])
async def test_cached_tokens_pass_through_exactly(style: str) -> None:
    async with FaultUpstream() as upstream, chat_gateway(upstream.base_url) as gateway:
        upstream.script(
            Stream(
                Reply(
                    text="Hi.",
                    prompt_tokens=4321,
                    completion_tokens=17,
                    cached_tokens=4096,
                    usage_style=style,
                )
            )
        )
        async with sdk(gateway) as client:
            response = await client.responses.create(model=LOCAL, input="hello")
    usage = as_dict(response)["usage"]
    assert usage["input_tokens"] == 4321
    assert usage["output_tokens"] == 17
    assert usage["total_tokens"] == 4338
    assert usage["input_tokens_details"]["cached_tokens"] == 4096
    assert response.output_text == "Hi."


def turn_replies(turns: int) -> Callable[[Recorded], Stream]:
    """Default replies for a conversation: ``turns - 1`` turns of calls, then a text."""
    count = {"n": 0}

    def reply(request: Recorded) -> Stream:
        count["n"] += 1
        n = count["n"]
        if n >= turns:
            return Stream(Reply(text="All done."))
        calls = [Call("look", json.dumps({"path": f"f{n}.py"}))]
        if n == 2:
            calls.append(Call("look", json.dumps({"path": "g.py", "deep": True}), fragments=5))
        return Stream(Reply(text=f"Step {n}." if n % 2 else "", calls=calls))

    return reply


def check_prefixes(upstream: FaultUpstream, tool_output: Callable[[str], str]) -> None:
    """Each request body is the previous one, minus its closing ``]}``, plus new messages.

    The new messages are the previous turn's assistant message exactly as the upstream
    streamed it (its call ids, names and argument strings, its text as content), then one
    ``tool`` message per call, in call order.
    """
    bodies = [request.body for request in upstream.completions]
    assert len(bodies) >= 3
    for turn, (before, after) in enumerate(itertools.pairwise(bodies)):
        assert before.endswith(b"]}")
        assert after.startswith(before[:-2] + b","), f"turn {turn + 2} changed the prefix"
        old = json.loads(before)["messages"]
        new = json.loads(after)["messages"]
        assert new[: len(old)] == old
        assistant, *tools = new[len(old) :]
        assert assistant == upstream.streamed[turn]
        calls = assistant.get("tool_calls", [])
        assert tools == [
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": tool_output(call["function"]["arguments"]),
            }
            for call in calls
        ]


def looked(arguments: str) -> str:
    return "seen " + json.loads(arguments)["path"]


@pytest.mark.parametrize(
    "client_kind", ["websocket", "http_json_stored", "sse_full_history", "runtime"]
)
async def test_rendered_prefix_is_byte_identical_across_turns(client_kind: str) -> None:
    turns = 5
    async with FaultUpstream(default=turn_replies(turns)) as upstream:
        async with chat_gateway(upstream.base_url) as gateway:
            if client_kind == "runtime":

                @tool(reads=["file:{path}"])
                async def look(path: str, deep: bool = False) -> str:
                    """Look at a file."""
                    return f"seen {path}"

                client = hotloop.connect(gateway.base_url)
                try:
                    result = await Runner.run(
                        Agent(LOCAL, "You look at files.", [look]), "Look around.", client=client
                    )
                finally:
                    await client.close()
                assert result.final_output == "All done." and result.turns == turns
            else:
                async with sdk(gateway) as openai_client:
                    await _look_around(openai_client, client_kind)
        assert len(upstream.completions) == turns
        check_prefixes(upstream, looked)
    first = upstream.completions[0].json()
    assert first["model"] == "upstream-model"
    assert first["messages"] == [
        {"role": "system", "content": "You look at files."},
        {"role": "user", "content": "Look around."},
    ]
    # Turn 2 made two calls with no text: one assistant message, content null.
    assert upstream.streamed[1]["content"] is None
    assert len(upstream.streamed[1]["tool_calls"]) == 2


async def _look_around(client: AsyncOpenAI, kind: str) -> None:
    base = {"model": LOCAL, "instructions": "You look at files.", "tools": [LOOK_TOOL]}
    if kind == "websocket":
        async with client.responses.connect() as connection:
            new_input: Any = "Look around."
            previous: str | None = None
            for _ in range(8):
                extra = {} if previous is None else {"previous_response_id": previous}
                events = await ws_turn(connection, input=new_input, store=False, **base, **extra)
                response = events[-1]["response"]
                assert response["status"] == "completed"
                calls = calls_of(response["output"])
                if not calls:
                    return
                previous, new_input = response["id"], outputs_for(calls, looked)
    elif kind == "http_json_stored":
        # Each turn continues a stored response: the context is loaded from the store.
        new_input = "Look around."
        previous = None
        for _ in range(8):
            result = await client.responses.create(
                input=new_input, store=True, previous_response_id=previous, **base
            )
            assert result.status == "completed"
            calls = calls_of(as_dict(result)["output"])
            if not calls:
                return
            previous, new_input = result.id, outputs_for(calls, looked)
    else:
        history: list[Any] = [{"role": "user", "content": "Look around."}]
        for _ in range(8):
            events = await sse_turn(client, input=history, store=False, **base)
            response = events[-1]["response"]
            assert response["status"] == "completed"
            calls = calls_of(response["output"])
            history += replay(response["output"])
            if not calls:
                return
            history += outputs_for(calls, looked)
    raise AssertionError("the conversation did not end")


# -- eager dispatch through the gateway ---------------------------------------------------

TWO_CALLS = Reply(
    text="",
    calls=(
        Call("look", json.dumps({"path": "a.py"}), fragments=2),
        Call("look", json.dumps({"path": "some/longer/path/b.py"}), fragments=4),
    ),
)


@pytest.mark.parametrize("mode", ["sse", "websocket"])
async def test_first_call_is_done_before_the_upstream_finishes(mode: str) -> None:
    """The first call's ``arguments.done`` reaches the client while the upstream is still
    streaming: the upstream holds the second call's arguments until the client saw it."""
    log: list[str] = []
    seen_first = asyncio.Event()
    async with FaultUpstream(log=log) as upstream, chat_gateway(upstream.base_url) as gateway:
        upstream.script(Stream(TWO_CALLS, hold={"call1.args": seen_first}))
        request = {"model": LOCAL, "input": "go", "tools": [LOOK_TOOL], "store": False}
        events: list[dict[str, Any]] = []

        def note(event: dict[str, Any]) -> None:
            events.append(event)
            if event["type"] == "response.function_call_arguments.done":
                log.append(f"client:arguments.done {event['output_index']}")
                seen_first.set()

        async with sdk(gateway) as client:
            if mode == "sse":
                stream = await client.responses.create(stream=True, **request)
                async for event in stream:
                    note(as_dict(event))
            else:
                async with client.responses.connect() as connection:
                    await connection.response.create(**request)
                    async for event in connection:
                        note(as_dict(event))
                        if event.type in TERMINAL:
                            break
    assert log.index("upstream:call1.start") < log.index("upstream:hold call1.args")
    assert log.index("upstream:hold call1.args") < log.index("client:arguments.done 0")
    assert log.index("client:arguments.done 0") < log.index("upstream:call1.args")
    assert log.index("upstream:finish") < log.index("client:arguments.done 1")
    response = events[-1]["response"]
    assert response["status"] == "completed"
    assert [c["arguments"] for c in calls_of(response["output"])] == [
        call.arguments for call in TWO_CALLS.calls
    ]
    assert [c["call_id"] for c in calls_of(response["output"])] == [
        c["id"] for c in upstream.streamed[0]["tool_calls"]
    ]


async def test_runtime_starts_the_first_tool_while_the_upstream_streams() -> None:
    log: list[str] = []
    started = asyncio.Event()

    @tool(reads=["file:{path}"])
    async def look(path: str) -> str:
        """Look at a file."""
        log.append(f"tool:{path}")
        started.set()
        return f"seen {path}"

    async with FaultUpstream(log=log) as upstream, chat_gateway(upstream.base_url) as gateway:
        upstream.script(
            Stream(TWO_CALLS, hold={"call1.args": started}), Stream(Reply(text="All done."))
        )
        client = hotloop.connect(gateway.base_url)
        try:
            result = await Runner.run(Agent(LOCAL, tools=[look]), "go", client=client)
        finally:
            await client.close()
    assert result.final_output == "All done." and result.tool_calls == 2
    assert log.index("upstream:hold call1.args") < log.index("tool:a.py")
    assert log.index("tool:a.py") < log.index("upstream:finish")


# -- model names, discovery, the key ------------------------------------------------------


async def test_model_names_are_mapped_to_the_upstreams() -> None:
    async with (
        FaultUpstream(models=["something-else"]) as upstream,
        chat_gateway(upstream.base_url, models={LOCAL: "upstream-name"}) as gateway,
        sdk(gateway) as client,
    ):
        assert [model.id async for model in client.models.list()] == [LOCAL]
        response = await client.responses.create(model=LOCAL, input="hi")
        assert response.model == LOCAL and response.output_text == "Done."
        with pytest.raises(NotFoundError) as caught:
            await client.responses.create(model="upstream-name", input="hi")
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "model_not_found" and error["param"] == "model"
    # A configured map never asks the upstream for its list.
    assert [(r.method, r.path) for r in upstream.requests] == [("POST", "/v1/chat/completions")]
    assert upstream.completions[0].json()["model"] == "upstream-name"


async def test_models_are_discovered_from_the_upstream() -> None:
    async with (
        FaultUpstream(models=["qwen3-8b", "smollm2-135m"]) as upstream,
        chat_gateway(upstream.base_url, models={}) as gateway,
        sdk(gateway) as client,
    ):
        assert [model.id async for model in client.models.list()] == ["qwen3-8b", "smollm2-135m"]
        await client.responses.create(model="smollm2-135m", input="hi")
        with pytest.raises(NotFoundError):
            await client.responses.create(model=LOCAL, input="hi")
    assert [(r.method, r.path) for r in upstream.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]
    assert upstream.completions[0].json()["model"] == "smollm2-135m"


async def test_model_discovery_from_a_dead_upstream_is_a_clear_error() -> None:
    url = closed_port_url()
    server = GatewayServer(ChatBackend(UpstreamConfig(urls=(url,))))
    with pytest.raises(UpstreamConfigError, match="could not list the models of") as caught:
        await server.start()
    assert url in str(caught.value) and "--model" in str(caught.value)


async def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLOOP_TEST_UPSTREAM_KEY", "sk-upstream-123")
    async with (
        FaultUpstream() as upstream,
        chat_gateway(upstream.base_url, models={}, api_key_env="HOTLOOP_TEST_UPSTREAM_KEY") as gw,
        sdk(gw) as client,
    ):
        await client.responses.create(model="upstream-model", input="hi")
    assert len(upstream.requests) == 2  # GET /models, then the turn
    for request in upstream.requests:
        assert request.headers["authorization"] == "Bearer sk-upstream-123"
    # The client's own key is not forwarded, and without api_key_env nothing is sent.
    async with (
        FaultUpstream() as upstream,
        chat_gateway(upstream.base_url) as gw,
        sdk(gw) as client,
    ):
        await client.responses.create(model=LOCAL, input="hi")
    assert "authorization" not in upstream.completions[0].headers


def test_an_unset_key_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOTLOOP_TEST_UNSET_KEY", raising=False)
    config = UpstreamConfig(urls=("http://127.0.0.1:9/v1",), api_key_env="HOTLOOP_TEST_UNSET_KEY")
    with pytest.raises(UpstreamConfigError, match="HOTLOOP_TEST_UNSET_KEY is not set"):
        ChatBackend(config)


# -- every documented error ---------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What the upstream does, and what the client must see.

    ``status``/``code``/``message`` are the documented error (``message`` with ``{url}`` for
    the upstream's URL), or ``None`` when a retry makes the turn succeed. ``requests`` is how
    many completions the upstream receives; ``partial`` is the text that reached a streaming
    client before the failure.
    """

    actions: tuple[Any, ...]
    status: int | None
    code: str | None
    message: str
    requests: int
    partial: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    refused: bool = False


OK = Stream(Reply(text="Recovered."))
FAULTS: dict[str, Fault] = {
    "refused": Fault(
        (),
        502,
        "upstream_unavailable",
        "Could not connect to the upstream {url} (connection refused or unreachable).",
        0,
        settings={"max_attempts": 2},
        refused=True,
    ),
    "rate_limited": Fault(
        (Status(429, error_body("Slow down.", "rate_limit_error"), {"retry-after": "1"}),) * 2,
        429,
        "upstream_rate_limited",
        "The upstream {url} is rate limiting requests. Retry after 1 s. It said: Slow down.",
        2,
        settings={"max_attempts": 2},
    ),
    # A wait longer than the gateway holds a client: the 429 goes back at once, untried.
    "rate_limited_long": Fault(
        (Status(429, error_body("Slow down.", "rate_limit_error"), {"retry-after": "30"}),),
        429,
        "upstream_rate_limited",
        "The upstream {url} is rate limiting requests. Retry after 30 s. It said: Slow down.",
        1,
    ),
    "server_error": Fault(
        (
            Status(500, error_body("CUDA error: an illegal memory access")),
            Status(503, error_body("The engine is overloaded.")),
            Status(503, error_body("The engine is overloaded.")),
        ),
        502,
        "upstream_error",
        "The upstream {url} failed with HTTP 503. It said: The engine is overloaded.",
        3,
    ),
    "server_error_then_ok": Fault((Status(503, error_body("Busy.")), OK), None, None, "", 2),
    "rejected": Fault(
        (
            Status(
                400,
                error_body(
                    "This model's maximum context length is 4096 tokens.",
                    "invalid_request_error",
                ),
            ),
        ),
        400,
        "upstream_rejected",
        "The upstream {url} rejected the request with HTTP 400: "
        "This model's maximum context length is 4096 tokens.",
        1,
    ),
    "not_found": Fault(
        (Status(404, error_body("The model `upstream-model` does not exist.")),),
        404,
        "upstream_rejected",
        "The upstream {url} rejected the request with HTTP 404: "
        "The model `upstream-model` does not exist.",
        1,
    ),
    "auth_failed": Fault(
        (Status(401, error_body("Invalid API key.", "authentication_error")),),
        502,
        "upstream_auth_failed",
        "The upstream {url} refused the gateway's credentials (HTTP 401); check its api_key_env.",
        1,
    ),
    "cut_after_output": Fault(
        (Stream(Reply(text="Hello there, friend"), cut_after=2), OK),
        502,
        "upstream_stream_cut",
        "The connection to the upstream {url} broke before the response was complete.",
        1,
        partial="Hello there, friend"[:10],
    ),
    "cut_before_output": Fault((Stream(cut_after=1), OK), None, None, "", 2),
    "dropped_before_headers": Fault((Drop(), OK), None, None, "", 2),
    "stall_before_headers": Fault(
        (Stall(),),
        504,
        "upstream_timeout",
        "The upstream {url} stopped sending output (timed out).",
        1,
        settings={"first_token_timeout": 0.2, "max_attempts": 1},
    ),
    "stall_before_output_then_ok": Fault(
        (Stall(), OK), None, None, "", 2, settings={"first_token_timeout": 0.2}
    ),
    "stall_after_output": Fault(
        (Stream(Reply(text="Hello there, friend"), stall_after=2), OK),
        504,
        "upstream_timeout",
        "The upstream {url} stopped sending output (timed out).",
        1,
        partial="Hello there, friend"[:10],
        settings={"stall_timeout": 0.2},
    ),
    "malformed_chunk": Fault(
        (Stream(Reply(text="Hello there, friend"), malformed_at=2), OK),
        502,
        "upstream_bad_stream",
        "The upstream {url} sent a malformed stream: a chunk is not a JSON object",
        1,
        partial="Hello there, friend"[:10],
    ),
    "error_chunk_after_output": Fault(
        # The text and the error arrive in one read: the text still reaches the client.
        (Stream(Reply(text="Hello there, friend"), error_at=2, together=True), OK),
        502,
        "upstream_error",
        "The upstream {url} reported an error mid-stream: the engine ran out of KV cache",
        1,
        partial="Hello there, friend"[:10],
    ),
    "error_chunk_before_output": Fault((Stream(error_at=1), OK), None, None, "", 2),
}


async def fail_over_json(gateway: GatewayServer, fault: Fault, url: str) -> dict[str, Any] | None:
    """One plain HTTP JSON turn: the documented status and OpenAI's error body, exactly."""
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{gateway.base_url}/responses", json=REQUEST)
    body: dict[str, Any] = reply.json()
    if fault.status is None:
        assert reply.status_code == 200
        return body
    assert reply.status_code == fault.status
    # A rate limit carries the upstream's retry-after on to the client.
    retry = next(
        (
            a.headers.get("retry-after")
            for a in fault.actions
            if isinstance(a, Status) and a.status == 429
        ),
        None,
    )
    assert reply.headers.get("retry-after") == retry
    kinds = {429: "rate_limit_error", 400: "invalid_request_error", 404: "invalid_request_error"}
    assert body == {
        "error": {
            "message": fault.message.format(url=url),
            "type": kinds.get(fault.status, "server_error"),
            "param": None,
            "code": fault.code,
        }
    }
    return None


async def fail_over_stream(
    gateway: GatewayServer, fault: Fault, url: str, mode: str
) -> dict[str, Any] | None:
    """One streamed turn (SSE as raw bytes, WebSocket mode through the SDK): a failure is
    ``response.failed`` carrying the documented code and message, after what streamed."""
    if mode == "sse":
        events = await raw_sse_turn(gateway, REQUEST)
    else:
        async with sdk(gateway) as client, client.responses.connect() as connection:
            events = await ws_turn(connection, **REQUEST)
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert [k for k in kinds if k in TERMINAL] == [kinds[-1]]
    response: dict[str, Any] = events[-1]["response"]
    if fault.status is None:
        assert kinds[-1] == "response.completed"
        return response
    assert kinds[-1] == "response.failed"
    assert response["status"] == "failed"
    error = {"code": fault.code, "message": fault.message.format(url=url)}
    if mode == "sse":  # the exact JSON sent
        assert response["error"] == error
    else:  # as the SDK parsed it
        assert {k: v for k, v in response["error"].items() if v} == error
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert streamed == fault.partial
    return None


REQUEST: dict[str, Any] = {"model": LOCAL, "input": "hi", "store": False}
MODES = ("http_json", "sse", "websocket")


@pytest.mark.parametrize("name", list(FAULTS))
async def test_upstream_failures_are_documented_errors(name: str) -> None:
    """Each fault, met by an HTTP JSON, an SSE and a WebSocket-mode client in turn."""
    fault = FAULTS[name]
    assert not EXCEPTION_TEXT.search(fault.message)
    async with FaultUpstream() as upstream:
        url = closed_port_url() if fault.refused else upstream.base_url
        async with chat_gateway(url, **fault.settings) as gateway:
            replica = backend_of(gateway).replicas.all[0]
            for done, mode in enumerate(MODES):
                upstream.script(*fault.actions)
                before = len(upstream.completions)
                if mode == "http_json":
                    response = await fail_over_json(gateway, fault, url)
                else:
                    response = await fail_over_stream(gateway, fault, url, mode)
                if response is not None:
                    assert response["status"] == "completed"
                    assert text_of(response["output"]) == "Recovered."
                sent = upstream.completions[before:]
                assert len(sent) == fault.requests, mode
                # Every attempt sent the same bytes.
                assert len({request.body for request in sent}) <= 1
                if fault.refused:
                    assert replica.failures == 2 * (done + 1)
                upstream._queue.clear()


# -- replicas -----------------------------------------------------------------------------

KEEP_LOOKING = Stream(Reply(calls=(Call("look", json.dumps({"path": "x.py"})),)))


def first_choice(backend: ChatBackend, task: str) -> str:
    """The replica rendezvous hashing gives the conversation that starts with ``task``."""
    key = Conversation.start(items_from_input(task)).root_key
    return backend.replicas.order(key)[0].url


def conversation_of(request: Recorded) -> str:
    content: str = request.json()["messages"][0]["content"]
    return content


class WSConversation:
    """One conversation over its own WebSocket, continued by ``previous_response_id``."""

    def __init__(self, client: AsyncOpenAI, task: str) -> None:
        self.client = client
        self.task = task
        self.previous: str | None = None
        self.next_input: Any = task
        self._stack = contextlib.AsyncExitStack()
        self.connection: Any = None

    async def __aenter__(self) -> WSConversation:
        self.connection = await self._stack.enter_async_context(self.client.responses.connect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def turn(self) -> dict[str, Any]:
        extra = {} if self.previous is None else {"previous_response_id": self.previous}
        events = await ws_turn(
            self.connection,
            model=LOCAL,
            input=self.next_input,
            tools=[LOOK_TOOL],
            store=False,
            **extra,
        )
        response = events[-1]["response"]
        assert response["status"] == "completed", response["error"]
        self.previous = response["id"]
        self.next_input = outputs_for(calls_of(response["output"]), looked)
        return response


async def test_a_conversation_sticks_to_one_replica_and_conversations_spread() -> None:
    async with (
        FaultUpstream(name="a", default=KEEP_LOOKING) as a,
        FaultUpstream(name="b", default=KEEP_LOOKING) as b,
        chat_gateway(a.base_url, b.base_url) as gateway,
        sdk(gateway) as client,
    ):
        backend = backend_of(gateway)
        # Two conversations for each replica, as rendezvous hashing places them.
        placed: dict[str, list[str]] = {a.base_url: [], b.base_url: []}
        for k in range(64):
            task = f"Task number {k}."
            home = placed[first_choice(backend, task)]
            if len(home) < 2:
                home.append(task)
        assert all(len(tasks) == 2 for tasks in placed.values())
        tasks = [task for group in placed.values() for task in group]
        async with contextlib.AsyncExitStack() as stack:
            conversations = [
                await stack.enter_async_context(WSConversation(client, task)) for task in tasks
            ]
            for _ in range(3):  # interleaved: turn 1 of each, then turn 2 of each, ...
                for conversation in conversations:
                    await conversation.turn()
        # A stateless client re-sending the whole history sticks to its replica too.
        stateless = "A stateless task."
        history: list[Any] = [{"role": "user", "content": stateless}]
        for _ in range(3):
            events = await sse_turn(client, model=LOCAL, input=history, tools=[LOOK_TOOL])
            output = events[-1]["response"]["output"]
            history += replay(output) + outputs_for(calls_of(output), looked)
        placed[first_choice(backend, stateless)].append(stateless)
    for upstream in (a, b):
        served = [conversation_of(request) for request in upstream.completions]
        expected = placed[upstream.base_url]
        assert sorted(served) == sorted(expected * 3)
    assert len(a.completions) + len(b.completions) == 15


async def test_a_dead_replica_fails_over_with_the_full_context() -> None:
    async with (
        FaultUpstream(name="a", default=KEEP_LOOKING) as a,
        FaultUpstream(name="b", default=KEEP_LOOKING) as b,
        chat_gateway(a.base_url, b.base_url, retry_after=60.0) as gateway,
        sdk(gateway) as client,
    ):
        backend = backend_of(gateway)
        by_url = {replica.url: replica for replica in backend.replicas.all}
        tasks = [f"Task number {k}." for k in range(64)]
        task = tasks[0]
        home, other = (a, b) if first_choice(backend, task) == a.base_url else (b, a)
        # A second conversation that would also live on the replica about to die.
        later = next(t for t in tasks[1:] if first_choice(backend, t) == home.base_url)
        async with WSConversation(client, task) as conversation:
            await conversation.turn()
            await conversation.turn()
            assert len(home.completions) == 2 and not other.completions
            last_body = home.completions[-1].body
            await home.stop()
            response = await conversation.turn()  # fails over, and succeeds
            assert calls_of(response["output"])
            assert len(other.completions) == 1
            moved = other.completions[0].body
            # The whole conversation moved, byte for byte, plus the new turn.
            assert moved.startswith(last_body[:-2] + b",")
            assert len(json.loads(moved)["messages"]) == len(json.loads(last_body)["messages"]) + 2
            await conversation.turn()
        assert by_url[home.base_url].failures == 1
        async with WSConversation(client, later) as newcomer:
            await newcomer.turn()
        # The dead replica was not tried again: its one failure is the failover's.
        assert by_url[home.base_url].failures == 1
        assert [conversation_of(r) for r in other.completions] == [task, task, later]
        assert len(home.completions) == 2


# -- a client that goes away --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sse", "websocket"])
async def test_a_client_that_disconnects_cancels_the_upstream_request(mode: str) -> None:
    async with FaultUpstream() as upstream, chat_gateway(upstream.base_url) as gateway:
        upstream.script(Stream(Reply(text="Hello there, friend"), stall_after=2))
        request = {"model": LOCAL, "input": "hi", "store": False}
        async with sdk(gateway) as client:
            if mode == "sse":
                stream = await client.responses.create(stream=True, **request)
                async for event in stream:
                    if event.type == "response.output_text.delta":
                        break
                await stream.close()
            else:
                async with client.responses.connect() as connection:
                    await connection.response.create(**request)
                    async for event in connection:
                        if event.type == "response.output_text.delta":
                            break
            # The upstream sees its request's connection closed within a second.
            await asyncio.wait_for(upstream.disconnected.wait(), 1.0)
    assert upstream.disconnects == 1 and len(upstream.completions) == 1
    assert upstream.log.index("upstream:stall") < upstream.log.index("upstream:disconnect")
    assert backend_of(gateway).replicas.all[0].failures == 0


# -- the command line ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def cli_gateway(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, str]]:
    """``hotloop gateway ARGS`` in a subprocess; yields its base URL and its ready line."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotloop.cli",
        "gateway",
        *args,
        "--port",
        str(port),
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await process.stdout.readline()).decode()
                output.append(line)
                if not line or line.startswith("hotloop gateway:"):
                    break
        assert output[-1].startswith("hotloop gateway:"), "".join(output)
        yield f"http://127.0.0.1:{port}/v1", output[-1].strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


async def test_cli_serves_an_upstream() -> None:
    async with FaultUpstream(models=["ignored"]) as upstream:
        async with cli_gateway(
            "--upstream",
            upstream.base_url,
            "--model",
            "local=upstream-name",
            "--api-key-env",
            "HOTLOOP_TEST_CLI_KEY",
            env={"HOTLOOP_TEST_CLI_KEY": "sk-cli"},
        ) as (base_url, ready):
            assert ready.endswith(f"upstream {upstream.base_url}; models: local")
            async with AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
                response = await client.responses.create(model=LOCAL, input="hi")
        assert response.output_text == "Done."
    (request,) = upstream.requests
    assert request.json()["model"] == "upstream-name"
    assert request.headers["authorization"] == "Bearer sk-cli"


async def test_cli_config_routes_each_model_to_its_upstream(tmp_path: Path) -> None:
    async with (
        FaultUpstream(name="a") as a,
        FaultUpstream(name="b", models=["beta"]) as b,
    ):
        config = tmp_path / "upstreams.toml"
        config.write_text(
            f"""
[[upstream]]
url = "{a.base_url}"
models = {{ "alpha" = "a-upstream" }}
first_token_timeout = 5

[[upstream]]
urls = ["{b.base_url}"]
api = "chat"
""",
            encoding="utf-8",
        )
        async with cli_gateway("--config", str(config)) as (base_url, ready):
            assert ready.endswith("models: alpha, beta")
            async with AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
                await client.responses.create(model="alpha", input="for a")
                await client.responses.create(model="beta", input="for b")
                await client.responses.create(model="alpha", input="for a again")
                with pytest.raises(NotFoundError):
                    await client.responses.create(model="a-upstream", input="nobody")
    assert [(r.json()["model"], conversation_of(r)) for r in a.completions] == [
        ("a-upstream", "for a"),
        ("a-upstream", "for a again"),
    ]
    assert [(r.json()["model"], conversation_of(r)) for r in b.completions] == [("beta", "for b")]
    assert [r.path for r in b.requests] == ["/v1/models", "/v1/chat/completions"]


async def test_routed_backend_in_process() -> None:
    async with FaultUpstream(name="a") as a, FaultUpstream(name="b") as b:
        routed = RoutedBackend(
            [
                ChatBackend(UpstreamConfig(urls=(a.base_url,), models={"alpha": "x"})),
                ChatBackend(UpstreamConfig(urls=(b.base_url,), models={"beta": "y"})),
            ]
        )
        async with GatewayServer(routed) as gateway, sdk(gateway) as client:
            assert [model.id async for model in client.models.list()] == ["alpha", "beta"]
            first = await client.responses.create(model="beta", input="hi")
            second = await client.responses.create(model="alpha", input="hi")
    assert first.output_text == second.output_text == "Done."
    assert [r.json()["model"] for r in a.completions] == ["x"]
    assert [r.json()["model"] for r in b.completions] == ["y"]


BAD_CONFIGS: dict[str, tuple[str | None, str]] = {
    "missing file": (None, "cannot read"),
    "not TOML": ("[[upstream]\nurl = ", "is not valid TOML"),
    "no upstream": ("[server]\nport = 1\n", "has no [[upstream]] table"),
    "unknown section": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\n[extra]\nx = 1\n',
        "unknown section(s) extra",
    ),
    "unknown setting": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\ntimeout = 3\n',
        "upstream[0]: unknown setting(s) timeout",
    ),
    "no url": ('[[upstream]]\nmodels = ["m"]\n', "an upstream needs at least one URL"),
    "bad scheme": (
        '[[upstream]]\nurl = "ftp://127.0.0.1:9/v1"\nmodels = ["m"]\n',
        "must start with http(s)://",
    ),
    "urls not a list": (
        '[[upstream]]\nurls = "http://127.0.0.1:9/v1"\n',
        "upstream[0].urls must be a list of URLs",
    ),
    "models not names": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = { m = 3 }\n',
        "upstream[0].models must map served names to upstream names",
    ),
    "negative timeout": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\nstall_timeout = -1\n',
        "upstream[0].stall_timeout must be a positive number of seconds",
    ),
    "zero attempts": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\nmax_attempts = 0\n',
        "upstream[0].max_attempts must be a positive integer",
    ),
    "unknown api": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\napi = "completions"\n',
        "upstream api 'completions' is not one of chat, responses",
    ),
    "upstream not a table": ("upstream = [1]\n", "each upstream must be a [[upstream]] table"),
    "key variable not a name": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\napi_key_env = 3\n',
        "upstream[0].api_key_env must name an environment variable",
    ),
    "unset key variable": (
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\n'
        'api_key_env = "HOTLOOP_TEST_UNSET_KEY"\n',
        "the upstream's key variable HOTLOOP_TEST_UNSET_KEY is not set in the environment",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_cli_bad_config_files_are_clear_errors(
    case: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOTLOOP_TEST_UNSET_KEY", raising=False)
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "hotloop.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert main(["gateway", "--config", str(path), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("hotloop: error: "), captured.err
    assert expected in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backend", "upstream"], "--backend upstream needs --upstream URL or --config FILE"),
        (["--backend", "sim", "--upstream", "http://127.0.0.1:9/v1"], "--backend sim serves"),
        (
            ["--upstream", "http://127.0.0.1:9/v1", "--config", "x.toml"],
            "either with --upstream or in --config, not both",
        ),
        (["--upstream", "127.0.0.1:9/v1", "--model", "m"], "must start with http(s)://"),
        (
            ["--upstream", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NOPE_KEY"],
            "the upstream's key variable NOPE_KEY is not set",
        ),
    ],
)
def test_cli_bad_upstream_options_are_clear_errors(
    args: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    assert main(["gateway", *args, "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("hotloop: error: ") and expected in captured.err


def test_cli_a_model_served_twice_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hotloop.toml"
    path.write_text(
        '[[upstream]]\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\n'
        '[[upstream]]\nurl = "http://127.0.0.1:10/v1"\nmodels = ["m"]\n',
        encoding="utf-8",
    )
    assert main(["gateway", "--config", str(path), "--port", "0"]) == 2
    assert "model 'm' is served by two upstreams" in capsys.readouterr().err
