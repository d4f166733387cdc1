"""A Responses API upstream behind the gateway: the upstream here is a second hotloop gateway on
the simulated model (a stateless ``/v1/responses`` when ``store`` is false, like an engine's),
so the whole path is real sockets and real engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

import hotloop
from hotloop import Agent, Runner
from hotloop.backends.responses import ResponsesBackend, ResponsesEventReader
from hotloop.backends.sim import SimBackend
from hotloop.backends.upstream import UpstreamConfig
from hotloop.errors import APIError
from hotloop.gateway import GatewayServer
from hotloop.protocol.assembler import ResponseStream
from hotloop.protocol.builder import ResponseBuilder
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import load_scenario
from hotloop.testing import scenario_tools
from hotloop.wire import events as ev
from hotloop.wire.items import ContentPart, FunctionCall, Message, Reasoning, UnknownItem
from hotloop.wire.responses import ResponseObject, Usage
from wsproxy import WebSocketProxy


@pytest.fixture
async def upstream() -> AsyncIterator[GatewayServer]:
    async with GatewayServer(SimBackend("coding", get_profile("zero"))) as server:
        yield server


def config(upstream: GatewayServer, **fields: object) -> UpstreamConfig:
    return UpstreamConfig(
        urls=(upstream.base_url,),
        api="responses",
        models={"agent-model": "hotloop-sim"},
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("chain", [False, True])
async def test_runtime_runs_the_whole_coding_rollout_through_a_responses_upstream(
    upstream: GatewayServer, chain: bool
) -> None:
    scenario = load_scenario("coding")
    async with GatewayServer(ResponsesBackend(config(upstream, chain=chain))) as gateway:
        client = hotloop.connect(gateway.base_url)
        try:
            tools = scenario_tools(scenario, time_scale=0)
            agent = Agent("agent-model", "You are a coding agent.", tools)
            result = await Runner.run(agent, scenario.task, client=client)
        finally:
            await client.close()
    assert result.turns == len(scenario.turns)
    assert result.tool_calls == sum(len(turn.calls) for turn in scenario.turns)
    assert result.final_output == scenario.turns[-1].text
    # The upstream's own prefix cache is reported through the gateway.
    assert result.usage.cached_tokens > 0


async def test_official_sdk_streams_a_tool_call_through_a_responses_upstream(
    upstream: GatewayServer,
) -> None:
    scenario = load_scenario("coding")
    tools = [
        {"type": "function", "name": t.name, "parameters": t.parameters}
        for t in scenario.tools.values()
    ]
    async with GatewayServer(ResponsesBackend(config(upstream))) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
        async with sdk.responses.stream(
            model="agent-model", input=scenario.task, tools=tools
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        calls = [item for item in final.output if item.type == "function_call"]
        assert [call.name for call in calls] == [c.name for c in scenario.turns[0].calls]
        # The second turn continues by id at the gateway; the upstream gets the full context.
        follow = await sdk.responses.create(
            model="agent-model",
            previous_response_id=final.id,
            input=[
                {"type": "function_call_output", "call_id": call.call_id, "output": "ok"}
                for call in calls
            ],
            tools=tools,
        )
        assert follow.status == "completed"
        await sdk.close()


async def test_an_unreachable_upstream_is_a_documented_error(upstream: GatewayServer) -> None:
    dead = UpstreamConfig(
        urls=("http://127.0.0.1:9/v1",),
        api="responses",
        models={"agent-model": "x"},
        max_attempts=2,
    )
    async with GatewayServer(ResponsesBackend(dead)) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.responses.create(model="agent-model", input="hi")
        await sdk.close()
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_unavailable"
    assert "127.0.0.1:9" in body["message"]


# -- the event reader, pure -------------------------------------------------------------


def reader() -> tuple[ResponseBuilder, ResponsesEventReader]:
    out = ResponseBuilder(ResponseObject(id="resp_gw", created_at=0, model="m", status=""))
    out.start()
    return out, ResponsesEventReader(out)


def test_items_the_gateway_does_not_interpret_pass_through_unchanged() -> None:
    out, read = reader()
    reasoning = Reasoning(id="rs_up", summary=(), encrypted_content="opaque-state")
    hosted = UnknownItem({"type": "web_search_call", "id": "ws_1", "status": "completed"})
    call = FunctionCall(call_id="call_up", name="f", arguments='{"a":1}', id="fc_up")
    events: list[ev.Event] = []
    for index, item in enumerate((reasoning, hosted)):
        events += read.receive(ev.OutputItemAdded(output_index=index, item=item))
        events += read.receive(ev.OutputItemDone(output_index=index, item=item))
    events += read.receive(
        ev.OutputItemAdded(
            output_index=2, item=FunctionCall(call_id="call_up", name="f", arguments="")
        )
    )
    events += read.receive(
        ev.FunctionCallArgumentsDelta(item_id="fc_up", output_index=2, delta='{"a"')
    )
    # The call is closed at arguments.done, with what the deltas missed.
    at_done = read.receive(
        ev.FunctionCallArgumentsDone(item_id="fc_up", output_index=2, arguments='{"a":1}')
    )
    assert [type(e).__name__ for e in at_done] == [
        "FunctionCallArgumentsDelta",
        "FunctionCallArgumentsDone",
        "OutputItemDone",
    ]
    events += at_done
    assert read.receive(ev.OutputItemDone(output_index=2, item=call)) == ()
    usage = Usage(input_tokens=50, cached_tokens=40, output_tokens=5)
    final = ResponseObject(id="resp_up", created_at=0, model="m", status="completed", usage=usage)
    events += read.receive(ev.ResponseCompleted(response=final))
    events += out.finish()
    stream = ResponseStream()
    for event in events:
        stream.receive(event)
    assert stream.output[0] == reasoning and stream.output[0].to_dict() == reasoning.to_dict()
    assert stream.output[1].to_dict() == hosted.to_dict()
    (streamed_call,) = [item for item in stream.output if isinstance(item, FunctionCall)]
    assert (streamed_call.call_id, streamed_call.arguments) == ("call_up", '{"a":1}')
    assert out.usage == usage


def test_terminal_output_fills_in_what_was_not_streamed_and_failures_raise() -> None:
    out, read = reader()
    message = Message(role="assistant", content=(ContentPart("output_text", "hi"),), id="m")
    final = ResponseObject(
        id="resp_up",
        created_at=0,
        model="m",
        status="incomplete",
        output=(message,),
        incomplete_details={"reason": "max_output_tokens"},
    )
    events = read.receive(ev.ResponseCompleted(response=final))
    assert [type(e).__name__ for e in events] == ["OutputItemAdded", "OutputItemDone"]
    assert out.incomplete_reason == "max_output_tokens"
    _, read = reader()
    failed = final.with_status("failed", error={"code": "x", "message": "model overloaded"})
    with pytest.raises(APIError) as caught:
        read.receive(ev.ResponseFailed(response=failed))
    assert caught.value.code == "upstream_error" and "model overloaded" in caught.value.message


# -- WebSocket mode to the upstream -------------------------------------------------------


async def test_websocket_mode_upstream_continues_by_id_on_one_upstream_socket(
    upstream: GatewayServer,
) -> None:
    scenario = load_scenario("coding")
    metrics = upstream.gateway.metrics
    hits = metrics.cache_lookups.labels("hit")
    before = hits._value.get()
    async with GatewayServer(ResponsesBackend(config(upstream, websocket=True))) as gateway:
        client = hotloop.connect(gateway.base_url)
        try:
            tools = scenario_tools(scenario, time_scale=0)
            agent = Agent("agent-model", "You are a coding agent.", tools)
            result = await Runner.run(agent, scenario.task, client=client)
            # One upstream socket serves the whole client connection.
            assert metrics.websocket_connections._value.get() == 1
        finally:
            await client.close()
        # The client's connection closing closes its upstream socket.
        for _ in range(200):
            if metrics.websocket_connections._value.get() == 0:
                break
            await asyncio.sleep(0.01)
        assert metrics.websocket_connections._value.get() == 0
    assert result.turns == len(scenario.turns)
    assert result.final_output == scenario.turns[-1].text
    # Every turn after the first continued the upstream's response from its connection cache:
    # only the new items crossed the upstream socket.
    assert hits._value.get() - before == len(scenario.turns) - 1


async def test_websocket_mode_upstream_recovers_from_a_drop_and_a_lost_cache(
    upstream: GatewayServer,
) -> None:
    """The upstream socket dropped mid-turn, then an upstream connection without the
    response: both turns are sent again in full, and the rollout ends as it should."""
    scenario = load_scenario("coding")
    async with WebSocketProxy(upstream.websocket_url) as proxy:
        base = proxy.url.replace("ws://", "http://").removesuffix("/responses")
        upstream_config = UpstreamConfig(
            urls=(base,), api="responses", models={"agent-model": "hotloop-sim"}, websocket=True
        )
        proxy.drop_client_after(n_events=0, on_turn=5)
        proxy.swap_upstream_before_turn(9)
        async with GatewayServer(ResponsesBackend(upstream_config)) as gateway:
            client = hotloop.connect(gateway.base_url)
            try:
                tools = scenario_tools(scenario, time_scale=0)
                agent = Agent("agent-model", "You are a coding agent.", tools)
                result = await Runner.run(agent, scenario.task, client=client)
            finally:
                await client.close()
    assert result.turns == len(scenario.turns)
    assert result.final_output == scenario.turns[-1].text
    # Two upstream connections (the drop opened a second), and two turns sent twice.
    assert len(proxy.connections) == 2
    assert proxy.creates == len(scenario.turns) + 2


async def test_chain_continues_upstream_by_id_when_the_parent_comes_from_the_store(
    upstream: GatewayServer,
) -> None:
    """Over plain HTTP each continuation resolves its parent from the gateway's store (a
    rebuilt conversation): the upstream's id is still found, and only new items go up."""
    scenario = load_scenario("coding")
    tools = [
        {"type": "function", "name": t.name, "parameters": t.parameters}
        for t in scenario.tools.values()
    ]
    by_store = upstream.gateway.metrics.cache_lookups.labels("store")
    before = by_store._value.get()
    async with GatewayServer(ResponsesBackend(config(upstream, chain=True))) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
        response = await sdk.responses.create(model="agent-model", input=scenario.task, tools=tools)
        for _ in range(2):
            calls = [item for item in response.output if item.type == "function_call"]
            response = await sdk.responses.create(
                model="agent-model",
                previous_response_id=response.id,
                input=[
                    {"type": "function_call_output", "call_id": c.call_id, "output": "ok"}
                    for c in calls
                ],
                tools=tools,
            )
        await sdk.close()
    # The two continuations went up as previous_response_id, resolved in the upstream's store.
    assert by_store._value.get() - before == 2


def test_events_without_their_indexes_are_read_as_llama_cpp_sends_them() -> None:
    """llama.cpp's /v1/responses leaves output_index, content_index and sequence_number out
    of its events; the reader takes what it needs without them."""
    out, read = reader()
    events = [
        '{"type":"response.created","response":{"id":"resp_up","created_at":0,"model":"m",'
        '"status":"in_progress","output":[]}}',
        '{"type":"response.output_item.added","item":{"type":"message","id":"m","role":'
        '"assistant","status":"in_progress","content":[]}}',
        '{"type":"response.content_part.added","item_id":"m","part":{"type":"output_text",'
        '"text":""}}',
        '{"type":"response.output_text.delta","item_id":"m","delta":"All "}',
        '{"type":"response.output_text.delta","item_id":"m","delta":"done."}',
        '{"type":"response.output_item.done","item":{"type":"message","id":"m","role":'
        '"assistant","status":"completed","content":[{"type":"output_text","text":"All done."}]}}',
        '{"type":"response.completed","response":{"id":"resp_up","created_at":0,"model":"m",'
        '"status":"completed","output":[]}}',
    ]
    for data in events:
        read.feed(data)
    assert read.done and read.upstream_id == "resp_up" and read.close() == ()
    (message,) = out.output
    assert isinstance(message, Message) and message.text == "All done."


async def test_http_clients_share_one_upstream_socket(upstream: GatewayServer) -> None:
    opened = upstream.gateway.metrics.websocket_connections
    async with GatewayServer(ResponsesBackend(config(upstream, websocket=True))) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
        for text in ("one", "two", "three"):
            response = await sdk.responses.create(model="agent-model", input=text)
            assert response.status == "completed"
            assert opened._value.get() == 1
        await sdk.close()
    # Closing the gateway closes the shared session and its socket.
    for _ in range(200):
        if opened._value.get() == 0:
            break
        await asyncio.sleep(0.01)
    assert opened._value.get() == 0
