"""``response.cancel`` over a real loopback WebSocket, against the real gateway and sim engine.

The backend is the sim behind :class:`gated.GatedBackend`: a response the test cancels is one
that would never end by itself (``stall``), and one that must still be generating while
another is cancelled waits for the test (``hold``), so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from gated import GatedBackend
from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.gateway.store import MemoryStore
from hotloop.sim.scenario import Scenario, Turn

MODEL = "hotloop-sim"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: A guard against hangs only; no assertion depends on how long anything takes.
TIMEOUT = 20.0

SCENARIO = Scenario(name="words", turns=(Turn(text=" ".join(f"word{i:02d}" for i in range(40))),))


def gated_gateway(config: GatewayConfig | None = None) -> tuple[GatedBackend, GatewayServer]:
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    return backend, GatewayServer(backend, config)  # type: ignore[arg-type]


async def recv(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return event


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    frame = {"type": kind, **fields}
    if kind == "response.create":
        frame.setdefault("model", MODEL)
        frame.setdefault("store", False)
    await ws.send(json.dumps(frame))


async def until(ws: ClientConnection, predicate: Any, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Read frames (into ``seen``) until one matches ``predicate``; return it."""
    while True:
        event = await recv(ws)
        seen.append(event)
        if predicate(event):
            return event


async def barrier(ws: ClientConnection, seen: list[dict[str, Any]]) -> None:
    """Until the gateway has read every frame sent so far: frames are read in order, and the
    answer to a malformed cancel is sent as it is read."""
    await send(ws, "response.cancel", stream_id="not a lane")
    await until(ws, lambda e: e["type"] == "error" and "stream_id" not in e, seen)


def terminal_of(lane: str | None) -> Any:
    return lambda e: e["type"] in TERMINAL and e.get("stream_id") == lane


def output_of(lane: str | None) -> Any:
    """The first output of a response on ``lane`` (what a held or stalled one gets to)."""
    return lambda e: e["type"] == "response.output_item.added" and e.get("stream_id") == lane


def gauge(server: GatewayServer) -> float:
    return server.gateway.metrics.active_responses._value.get()  # type: ignore[no-any-return]


def cancelled_count(server: GatewayServer) -> float:
    value = server.gateway.metrics.registry.get_sample_value(
        "hotloop_responses_total", {"transport": "websocket", "status": "cancelled"}
    )
    return value or 0.0


def assert_cancelled(event: dict[str, Any], lane: str | None) -> None:
    assert event["type"] == "response.failed", event
    assert event["response"]["status"] == "failed"
    assert event["response"]["error"]["code"] == "response_cancelled"
    assert event["response"]["error"]["message"] == "The response was cancelled by the client."
    if lane is None:
        assert "stream_id" not in event
    else:
        assert event["stream_id"] == lane


async def test_a_cancel_stops_one_lane_and_leaves_the_others() -> None:
    backend, server = gated_gateway()
    async with server, connect(server.websocket_url, max_size=None) as ws:
        seen: list[dict[str, Any]] = []
        # Lane b is held mid-response; lane a would stream forever (store: true, so that a
        # commit would be visible in the store as well as the cache).
        await send(ws, "response.create", input="hold", stream_id="b")
        await until(ws, output_of("b"), seen)
        await send(ws, "response.create", input="stall", stream_id="a", store=True)
        created = await until(ws, lambda e: e["type"] == "response.created", seen)
        assert created["stream_id"] == "a"
        cancelled_id = created["response"]["id"]
        await until(ws, output_of("a"), seen)
        assert gauge(server) == 2

        await send(ws, "response.cancel", stream_id="a")
        end = await until(ws, terminal_of("a"), seen)
        assert_cancelled(end, "a")
        assert end["response"]["id"] == cancelled_id
        # Its generation was closed, and the gauge dropped, before its lane heard of it.
        assert backend.stopped[1].is_set() and not backend.stopped[0].is_set()
        assert gauge(server) == 1
        assert cancelled_count(server) == 1
        # The response's events are one well-formed stream: numbered 0, 1, 2, ...
        lane_a = [e for e in seen if e.get("stream_id") == "a"]
        assert [e["sequence_number"] for e in lane_a] == list(range(len(lane_a)))

        # A cancel for a lane with nothing running is not answered: the next frame the
        # socket sends is the response of the create that follows it.
        await send(ws, "response.cancel", stream_id="a")
        await send(ws, "response.cancel", stream_id="never-used")
        await send(ws, "response.cancel")
        # Lane a serves a new create, and the cancelled response was never committed.
        await send(ws, "response.create", input="again", stream_id="a")
        nxt = await recv(ws)
        assert nxt["type"] == "response.created" and nxt["stream_id"] == "a", nxt
        done = await until(ws, terminal_of("a"), seen)
        assert done["type"] == "response.completed"
        await send(
            ws, "response.create", input="on", previous_response_id=cancelled_id, stream_id="a"
        )
        missing = await until(ws, terminal_of("a"), seen)
        assert missing["type"] == "error"
        assert missing["error"]["code"] == "previous_response_not_found"
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            stored = await http.get(f"/responses/{cancelled_id}")
        assert stored.status_code == 404

        # Lane b was never disturbed: let it go, and it completes normally.
        backend.release.set()
        finished = await until(ws, terminal_of("b"), seen)
        assert finished["type"] == "response.completed"
        lane_b = [e for e in seen if e.get("stream_id") == "b"]
        assert [e["sequence_number"] for e in lane_b] == list(range(len(lane_b)))
        assert not any(e["type"] == "error" for e in lane_b)
        assert gauge(server) == 0


async def test_the_default_lane_and_its_queued_create() -> None:
    backend, server = gated_gateway()
    async with server, connect(server.websocket_url, max_size=None) as ws:
        seen: list[dict[str, Any]] = []
        await send(ws, "response.create", input="stall")
        await until(ws, output_of(None), seen)
        # Queued behind the running create on the same lane: the cancel leaves it alone.
        await send(ws, "response.create", input="next")
        await send(ws, "response.cancel")
        assert_cancelled(await until(ws, terminal_of(None), seen), None)
        after = await until(ws, terminal_of(None), seen)
        assert after["type"] == "response.completed"
        assert backend.stopped[0].is_set() and backend.calls == 2
    assert cancelled_count(server) == 1


async def test_a_create_waiting_for_a_slot_is_not_cancelled() -> None:
    backend, server = gated_gateway(GatewayConfig(max_active_responses=1))
    async with server, connect(server.websocket_url, max_size=None) as ws:
        seen: list[dict[str, Any]] = []
        await send(ws, "response.create", input="hold", stream_id="a")
        await until(ws, output_of("a"), seen)
        await send(ws, "response.create", input="waits", stream_id="b")  # no free slot
        await send(ws, "response.cancel", stream_id="b")  # nothing runs on b yet: no-op
        await barrier(ws, seen)
        backend.release.set()
        await until(ws, terminal_of("a"), seen)
        end = await until(ws, terminal_of("b"), seen)
        assert end["type"] == "response.completed", end
    assert cancelled_count(server) == 0


async def test_a_malformed_stream_id_is_refused() -> None:
    _, server = gated_gateway()
    async with server, connect(server.websocket_url, max_size=None) as ws:
        await send(ws, "response.cancel", stream_id="no spaces")
        event = await recv(ws)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_stream_id"
        assert "stream_id" not in event
        # The socket still serves.
        await send(ws, "response.create", input="hi")
        end = await until(ws, terminal_of(None), [])
        assert end["type"] == "response.completed", end


class SlowStore(MemoryStore):
    """A store whose lookups wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def load(self, response_id: str, *, tenant: str = "") -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().load(response_id, tenant=tenant)


async def test_a_create_cancelled_before_its_response_started_gets_an_error() -> None:
    store = SlowStore()
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    server = GatewayServer(backend, store=store)  # type: ignore[arg-type]
    async with server, connect(server.websocket_url, max_size=None) as ws:
        # Its parent is not on this connection: the create waits for the store.
        await send(ws, "response.create", input="x", previous_response_id="resp_x", stream_id="a")
        await asyncio.wait_for(store.entered.wait(), TIMEOUT)
        await send(ws, "response.cancel", stream_id="a")
        event = await recv(ws)
        # No event of a response went out: the lane hears of the cancel as an error.
        assert event["type"] == "error" and event["stream_id"] == "a", event
        assert event["error"]["code"] == "response_cancelled"
        assert backend.calls == 0  # nothing was generated
        seen: list[dict[str, Any]] = []
        await send(ws, "response.create", input="fresh", stream_id="a")
        assert (await until(ws, terminal_of("a"), seen))["type"] == "response.completed"
        assert seen[0]["type"] == "response.created"
    assert cancelled_count(server) == 1
