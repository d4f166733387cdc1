"""WebSocket connection semantics over real loopback sockets.

Connection-scoped cache, store fallback across sockets and HTTP, lane
ordering and concurrency, lane echo, ``generate: false`` warm-up, the
commit-before-terminal rule and socket reuse across request-scoped errors.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from hotloop.backends.sim import SimBackend
from hotloop.bench.runner import gateway_subprocess
from hotloop.gateway import GatewayServer
from hotloop.protocol.conversation import item_text
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, Turn, load_scenario
from support import WEATHER_TOOL

MODEL = "hotloop-sim"
TOOLS = [WEATHER_TOOL.to_responses_tool()]
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: A guard against hangs only; no assertion depends on how long anything takes.
RECV_TIMEOUT = 20.0

#: 5 ms per output token: a long text lasts long enough to interleave two lanes.
SLOW = get_profile("zero").override(decode_tokens_per_s=200)


def long_scenario(words: int = 60) -> Scenario:
    """One text turn of about ``words * 7 / 4`` tokens."""
    text = " ".join(f"word{i:02d}" for i in range(words))
    return Scenario(name="long", turns=(Turn(text=text),))


# -- helpers ------------------------------------------------------------------------------


def ws_connect(server: Any) -> Any:
    return connect(server.websocket_url, max_size=None)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
    event: dict[str, Any] = json.loads(raw)
    return event


async def send_create(ws: ClientConnection, **fields: Any) -> None:
    await ws.send(json.dumps({"type": "response.create", "model": MODEL, **fields}))


async def collect(ws: ClientConnection, terminals: int = 1) -> list[dict[str, Any]]:
    """Events until ``terminals`` terminal events have arrived."""
    events: list[dict[str, Any]] = []
    while terminals:
        event = await recv(ws)
        events.append(event)
        if event["type"] in TERMINAL:
            terminals -= 1
    return events


async def turn(ws: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    await send_create(ws, **fields)
    return await collect(ws)


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The response of a turn that must have completed."""
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    return response


def tool_outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``function_call_output`` for each call of ``response``."""
    return [
        {"type": "function_call_output", "call_id": item["call_id"], "output": "sunny"}
        for item in response["output"]
        if item["type"] == "function_call"
    ]


def call_arguments(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(i["arguments"]) for i in response["output"] if i["type"] == "function_call"]


def assert_not_found(event: dict[str, Any], response_id: str, stream_id: str | None = None) -> None:
    """The exact WS ``previous_response_not_found`` envelope."""
    assert event["type"] == "error"
    assert event["status"] == 400
    error = event["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    assert isinstance(error["message"], str) and response_id in error["message"]
    if stream_id is None:
        assert "stream_id" not in event
    else:
        assert event["stream_id"] == stream_id


def assert_one_response(events: list[dict[str, Any]]) -> None:
    """One response's canonical frame: created first, one terminal last, seq 0,1,2,..."""
    assert events[0]["type"] == "response.created"
    assert [e["type"] in TERMINAL for e in events].count(True) == 1
    assert events[-1]["type"] in TERMINAL
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1


# -- the cache is connection-scoped; the store is not -------------------------------------


async def test_store_false_cannot_be_continued_from_another_socket(gateway: Any) -> None:
    async with ws_connect(gateway) as a, ws_connect(gateway) as b:
        first = completed(await turn(a, input="hello", store=False))
        events = await turn(b, previous_response_id=first["id"], input="more", store=False)
        assert len(events) == 1
        assert_not_found(events[0], first["id"])
        # The other socket is still usable, and the owner can still continue the response.
        again = completed(await turn(b, input="a fresh start", store=False))
        assert again["previous_response_id"] is None
        own = completed(await turn(a, previous_response_id=first["id"], input="go", store=False))
        assert own["previous_response_id"] == first["id"]


async def test_store_true_continues_from_another_socket_and_over_http(gateway: Any) -> None:
    async with ws_connect(gateway) as a, ws_connect(gateway) as b:
        # Turn 0 (Paris), then turn 1 (Rome): the stored parent holds one tool result.
        t0 = completed(await turn(a, input="weather please", tools=TOOLS))
        assert call_arguments(t0) == [{"city": "Paris"}]
        t1 = completed(
            await turn(a, previous_response_id=t0["id"], input=tool_outputs(t0), tools=TOOLS)
        )
        assert call_arguments(t1) == [{"city": "Rome"}]
        # From another socket: the model sees both results, so it is on turn 2 (Oslo).
        # Without the parent's history it would be on turn 1 again.
        t2 = completed(
            await turn(b, previous_response_id=t1["id"], input=tool_outputs(t1), tools=TOOLS)
        )
        assert t2["previous_response_id"] == t1["id"]
        assert call_arguments(t2) == [{"city": "Oslo"}]

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="test", max_retries=0
    ) as client:
        over_http = await client.responses.create(
            model=MODEL,
            previous_response_id=t1["id"],
            input=tool_outputs(t1),  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
        )
        assert over_http.previous_response_id == t1["id"]
        calls = [item for item in over_http.output if item.type == "function_call"]
        assert [json.loads(c.arguments) for c in calls] == [{"city": "Oslo"}]  # type: ignore[union-attr]


async def test_store_false_cannot_be_continued_over_http(gateway: Any) -> None:
    async with ws_connect(gateway) as ws:
        unstored = completed(await turn(ws, input="hello", store=False))
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="test", max_retries=0
    ) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model=MODEL, previous_response_id=unstored["id"], input="more"
            )
        assert caught.value.status_code == 400
        assert caught.value.code == "previous_response_not_found"
        assert caught.value.param == "previous_response_id"
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        reply = await http.get(f"/responses/{unstored['id']}")
        assert reply.status_code == 404


async def test_two_connections_never_see_each_others_responses(gateway: Any) -> None:
    async with ws_connect(gateway) as a, ws_connect(gateway) as b:
        frames: dict[str, list[str]] = {"a": [], "b": []}
        ids: dict[str, list[str]] = {"a": [], "b": []}

        async def run(name: str, ws: ClientConnection) -> None:
            previous: str | None = None
            for index in range(5):
                await send_create(
                    ws, input=f"{name} {index}", store=False, previous_response_id=previous
                )
                while True:
                    raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                    assert isinstance(raw, str)
                    frames[name].append(raw)
                    event = json.loads(raw)
                    if event["type"] in TERMINAL:
                        previous = completed([event])["id"]
                        ids[name].append(previous)
                        break

        await asyncio.gather(run("a", a), run("b", b))
        assert len(set(ids["a"]) | set(ids["b"])) == 10
        for mine, theirs in (("a", "b"), ("b", "a")):
            for frame in frames[mine]:
                assert not any(other in frame for other in ids[theirs])
        # Each socket's store:false chain is invisible to the other.
        assert_not_found(
            (await turn(b, previous_response_id=ids["a"][-1], input="x", store=False))[0],
            ids["a"][-1],
        )
        assert_not_found(
            (await turn(a, previous_response_id=ids["b"][-1], input="x", store=False))[0],
            ids["b"][-1],
        )


# -- lanes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_id", [None, "lane-a"])
async def test_one_lane_runs_creates_fifo_without_overlap(
    gateway_factory: Any, stream_id: str | None
) -> None:
    lane = {"stream_id": stream_id} if stream_id else {}
    async with gateway_factory(scenario=long_scenario(20), profile=SLOW) as server:
        async with ws_connect(server) as ws:
            # The second create is sent while the first is still generating: it is queued.
            await send_create(ws, input="first", store=False, **lane)
            first_event = await recv(ws)
            assert first_event["type"] == "response.created"
            await send_create(ws, input="second", store=False, **lane)
            events = [first_event, *await collect(ws, terminals=2)]
    types = [e["type"] for e in events]
    assert "error" not in types
    first_end = types.index("response.completed")
    second_start = types.index("response.created", 1)
    assert second_start == first_end + 1
    first, second = events[: first_end + 1], events[first_end + 1 :]
    assert_one_response(first)
    assert_one_response(second)
    assert first[0]["response"]["id"] != second[0]["response"]["id"]
    for event in events:
        if stream_id is None:
            assert "stream_id" not in event
        else:
            assert event["stream_id"] == stream_id


async def test_different_lanes_run_concurrently_and_echo_their_stream_id(
    gateway_factory: Any,
) -> None:
    async with gateway_factory(scenario=long_scenario(60), profile=SLOW) as server:
        async with ws_connect(server) as ws:
            await send_create(ws, input="x", store=False, stream_id="a")
            await send_create(ws, input="y", store=False, stream_id="b")
            events = await collect(ws, terminals=2)
    lanes = [e.get("stream_id") for e in events]
    assert set(lanes) == {"a", "b"}
    by_lane = {lane: [e for e in events if e["stream_id"] == lane] for lane in ("a", "b")}
    for lane_events in by_lane.values():
        assert_one_response(lane_events)
        assert lane_events[-1]["type"] == "response.completed"
    # Both lanes stream deltas before either completes, and their deltas interleave.
    first_terminal = next(i for i, e in enumerate(events) if e["type"] in TERMINAL)
    head = events[:first_terminal]
    deltas = [e["stream_id"] for e in head if e["type"] == "response.output_text.delta"]
    assert "a" in deltas and "b" in deltas
    switches = sum(1 for x, y in itertools.pairwise(deltas) if x != y)
    assert switches >= 2


async def test_a_lane_forks_from_another_lanes_response(gateway: Any) -> None:
    async with ws_connect(gateway) as ws:
        source = completed(await turn(ws, input="base", store=False, stream_id="a"))
        events = await turn(
            ws, previous_response_id=source["id"], input="fork", store=False, stream_id="b"
        )
        fork = completed(events)
        assert all(e["stream_id"] == "b" for e in events)
        assert fork["previous_response_id"] == source["id"]
        # The fork's context holds the source's input and output.
        assert fork["usage"]["input_tokens"] > source["usage"]["input_tokens"]
        # The source lane can still continue from its own response.
        events = await turn(
            ws, previous_response_id=source["id"], input="on", store=False, stream_id="a"
        )
        assert completed(events)["previous_response_id"] == source["id"]
        # And the default lane can fork too.
        events = await turn(ws, previous_response_id=fork["id"], input="more", store=False)
        assert completed(events)["previous_response_id"] == fork["id"]
        assert all("stream_id" not in e for e in events)


async def test_failed_same_lane_continuation_evicts_its_parent(gateway: Any) -> None:
    async with ws_connect(gateway) as ws:
        parent = completed(await turn(ws, input="base", store=False, stream_id="a"))
        # A failed fork on another lane leaves the parent for its source lane.
        failed = await turn(
            ws, previous_response_id=parent["id"], input="x", model="nope", stream_id="b"
        )
        assert failed[0]["error"]["code"] == "model_not_found"
        assert failed[0]["stream_id"] == "b"
        # A failed same-lane continuation evicts it: a blind retry fails again.
        failed = await turn(
            ws, previous_response_id=parent["id"], input="x", model="nope", stream_id="a"
        )
        assert failed[0]["error"]["code"] == "model_not_found"
        retry = await turn(ws, previous_response_id=parent["id"], input="x", stream_id="a")
        assert_not_found(retry[0], parent["id"], stream_id="a")
        # The socket and lane still serve new chains.
        assert completed(await turn(ws, input="fresh", store=False, stream_id="a"))


class ExplodingBackend:
    """The sim, except that a turn whose newest input item says "explode" fails mid-stream."""

    def __init__(self, inner: SimBackend) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    def models(self) -> Any:
        return self.inner.models()

    def open_session(self) -> Any:
        inner = self.inner.open_session()

        class Session:
            async def generate(self, request: Any, out: Any) -> AsyncIterator[Any]:
                if item_text(request.context.items[-1]) == "explode":
                    raise RuntimeError("the model fell over")
                async for events in inner.generate(request, out):
                    yield events

            async def aclose(self) -> None:
                await inner.aclose()

        return Session()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_generation_evicts_its_same_lane_parent_only() -> None:
    backend = ExplodingBackend(SimBackend(long_scenario(5), "zero"))
    async with GatewayServer(backend) as server, ws_connect(server) as ws:
        parent = completed(await turn(ws, input="base", store=False, stream_id="a"))
        # A fork on another lane that fails while generating leaves the parent.
        failed = await turn(
            ws, previous_response_id=parent["id"], input="explode", store=False, stream_id="b"
        )
        assert failed[-1]["type"] == "response.failed"
        assert failed[-1]["response"]["error"]["code"] == "server_error"
        assert all(e["stream_id"] == "b" for e in failed)
        # The same continuation on the parent's own lane fails and evicts it.
        failed = await turn(
            ws, previous_response_id=parent["id"], input="explode", store=False, stream_id="a"
        )
        assert failed[-1]["type"] == "response.failed"
        retry = await turn(
            ws, previous_response_id=parent["id"], input="x", store=False, stream_id="a"
        )
        assert_not_found(retry[0], parent["id"], stream_id="a")


# -- warm-up, commit order, socket reuse ----------------------------------------------------


@pytest.mark.parametrize("store", [False, True])
async def test_generate_false_warm_up(gateway: Any, store: bool) -> None:
    async with ws_connect(gateway) as ws:
        events = await turn(
            ws,
            generate=False,
            input=[],
            instructions="You check the weather.",
            tools=TOOLS,
            store=store,
        )
        types = [e["type"] for e in events]
        assert types[0] == "response.created"
        assert types[-1] == "response.completed"
        assert set(types) <= {"response.created", "response.in_progress", "response.completed"}
        warm = completed(events)
        assert warm["output"] == []
        assert warm["status"] == "completed"
        # Its id is a valid parent; the first real turn is the scenario's turn 0.
        first = completed(
            await turn(ws, previous_response_id=warm["id"], input="go", tools=TOOLS, store=store)
        )
        assert first["previous_response_id"] == warm["id"]
        assert call_arguments(first) == [{"city": "Paris"}]
    if store:
        async with ws_connect(gateway) as other:
            events = await turn(other, previous_response_id=warm["id"], input="again")
            assert completed(events)["previous_response_id"] == warm["id"]


async def test_continuation_from_another_socket_the_instant_completed_arrives(
    gateway: Any,
) -> None:
    """The response is committed to the store before its terminal event is sent.

    The store write is slowed down, so a gateway that sent the terminal event first would
    lose the race every time.
    """
    store = gateway.gateway.store
    real_save = store.save

    async def slow_save(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.02)
        await real_save(*args, **kwargs)

    store.save = slow_save
    async with ws_connect(gateway) as a, ws_connect(gateway) as b:
        previous: str | None = None
        for index in range(10):
            await send_create(a, input=f"step {index}", previous_response_id=previous)
            while (event := await recv(a))["type"] not in TERMINAL:
                pass
            assert event["type"] == "response.completed"
            parent = event["response"]["id"]
            assert await store.load(parent) is not None
            # Sent before anything else happens on the client: no wait, no retry.
            await send_create(b, previous_response_id=parent, input="continue")
            continued = completed(await collect(b))
            assert continued["previous_response_id"] == parent
            previous = continued["id"]


async def test_one_socket_serves_many_turns_and_survives_request_errors(gateway: Any) -> None:
    """The ten-turn tool loop on one socket with store:false, errors in between."""
    bad_frames: list[dict[str, Any]] = [
        {"input": "x", "previous_response_id": "resp_unknown", "store": False},
        {"input": "x", "model": "no-such-model"},
        {"model": MODEL},
        {"input": [{"type": "function_call_output", "output": "no call id"}]},
        {"input": "x", "background": True},
        {"input": "x", "stream_id": "not a valid id!"},
    ]
    async with ws_connect(gateway) as ws:
        previous: str | None = None
        next_input: Any = "Check the weather in ten cities."
        texts: list[str] = []
        for index in range(10):
            bad = bad_frames[index % len(bad_frames)]
            error = await turn(ws, **{"model": MODEL, **bad})
            assert [e["type"] for e in error] == ["error"]
            response = completed(
                await turn(
                    ws,
                    input=next_input,
                    previous_response_id=previous,
                    tools=TOOLS,
                    store=False,
                )
            )
            texts.extend(
                part["text"]
                for item in response["output"]
                if item["type"] == "message"
                for part in item["content"]
            )
            next_input = tool_outputs(response)
            previous = response["id"]
        assert next_input == []  # the last turn is the final answer, no calls
        assert texts[-1] == "All ten steps are done: the weather is fine everywhere."
        assert texts[:2] == ["Checking step 1.", "Checking step 2."]
        assert ws.close_code is None


async def test_stored_child_of_an_unstored_parent_keeps_its_whole_history(gateway: Any) -> None:
    async with ws_connect(gateway) as a, ws_connect(gateway) as b:
        root = completed(await turn(a, input="hello " * 50, store=False))
        child = completed(await turn(a, previous_response_id=root["id"], input="more"))
        here = completed(await turn(a, previous_response_id=child["id"], input="x", store=False))
        there = completed(await turn(b, previous_response_id=child["id"], input="x", store=False))
        # Either the whole context is served from the store, or the continuation is refused;
        # never a silently truncated history.
        assert there["usage"]["input_tokens"] == here["usage"]["input_tokens"]


# -- frames of a burst share reads ----------------------------------------------------------


class CountingClient(asyncio.Protocol):
    """A WebSocket client on a bare asyncio protocol that counts the socket reads it gets."""

    def __init__(self, url: str) -> None:
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.ws.send_request(self.ws.connect())
        self.transport: asyncio.Transport | None = None
        self.reads = 0
        self.events: list[dict[str, Any]] = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.ws.data_to_send()))

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.ws.receive_data(data)
        for frame in self.ws.events_received():
            if getattr(frame, "opcode", None) is Opcode.TEXT:
                event = json.loads(frame.data)
                self.events.append(event)
                if event["type"] in TERMINAL and not self.done.done():
                    self.done.set_result(None)

    def send(self, payload: dict[str, Any]) -> None:
        self.ws.send_text(json.dumps(payload).encode())
        self.flush()


async def test_events_produced_together_reach_the_client_in_few_reads() -> None:
    """The zero profile produces a turn's deltas in bursts (up to 64 per loop iteration): the
    gateway writes each burst with one send, so a client wakes per burst, not per event. The
    gateway runs in its own process, as in production: in this test's event loop the client
    would read bursts whatever the gateway did."""
    coding = load_scenario("coding")
    tools = [spec.to_responses_tool() for spec in coding.tools.values()]
    async with gateway_subprocess("coding", "zero") as base_url:
        host, port = base_url.removeprefix("http://").split("/")[0].split(":")
        url = f"ws://{host}:{port}/v1/responses"
        reads: list[int] = []
        for attempt in range(3):
            loop = asyncio.get_running_loop()
            transport, client = await loop.create_connection(
                lambda: CountingClient(url), host, int(port)
            )
            try:
                while client.reads == 0:
                    await asyncio.sleep(0.001)  # the 101 answer
                before = client.reads
                client.send(
                    {
                        "type": "response.create",
                        "model": "hotloop-sim:coding",
                        "input": f"{coding.task} (attempt {attempt})",
                        "tools": tools,
                    }
                )
                await asyncio.wait_for(client.done, RECV_TIMEOUT)
                reads.append(client.reads - before)
            finally:
                transport.close()
    events = len(client.events)
    assert client.events[-1]["type"] == "response.completed"
    assert events > 40, events
    # Without coalescing most events arrive in a read of their own.
    assert max(reads) <= events // 4, (reads, events)
