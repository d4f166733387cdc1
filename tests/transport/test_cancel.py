"""A turn abandoned mid-response over a WebSocket cancels its response at the gateway.

Real loopback sockets, the real gateway, the sim behind :class:`gated.GatedBackend`: the turn
that is cancelled streams a first chunk and then would never end by itself (``stall``), and
the turn that must keep running meanwhile waits for the test (``hold``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from gated import GatedBackend
from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.protocol import server_session
from hotloop.sim.scenario import Scenario, Turn
from hotloop.transport import ModelRequest, WebSocketTransport
from hotloop.wire.events import Event, OutputItemAdded
from hotloop.wire.items import items_from_input

MODEL = "hotloop-sim"
SCENARIO = Scenario(name="words", turns=(Turn(text=" ".join(f"w{i}" for i in range(30))),))
#: A guard against hangs only; no assertion depends on how long anything takes.
TIMEOUT = 20.0


def request(text: str) -> ModelRequest:
    return ModelRequest(MODEL, items_from_input(text))


def gauge(server: GatewayServer) -> float:
    return server.gateway.metrics.active_responses._value.get()  # type: ignore[no-any-return]


class Recorder:
    """``on_event`` for one turn: keeps its events, and says when its output started."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.output = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, OutputItemAdded):
            self.output.set()


async def eventually(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (checked as the event loop turns), or fail after a while."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def one_response(events: list[Event]) -> None:
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    ids = {event.response.id for event in events if hasattr(event, "response")}
    assert len(ids) == 1


async def test_a_cancelled_turn_stops_its_generation_and_frees_its_lane_on_the_socket() -> None:
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    async with GatewayServer(backend) as server:  # type: ignore[arg-type]
        client = WebSocketTransport(server.websocket_url, max_lanes=1)  # lanes hl-1, default
        try:
            held = Recorder()
            other = asyncio.create_task(client.stream_to(request("hold"), held))
            await asyncio.wait_for(held.output.wait(), TIMEOUT)
            stalled = Recorder()
            doomed = asyncio.create_task(client.stream_to(request("stall"), stalled))
            await asyncio.wait_for(stalled.output.wait(), TIMEOUT)
            assert gauge(server) == 2

            await cancel(doomed)  # e.g. a hedge that lost, or a deadline
            assert client.stats.cancels == 1
            # The gateway closed its generation; the held turn is still generating.
            await asyncio.wait_for(backend.stopped[1].wait(), TIMEOUT)
            assert gauge(server) == 1 and not backend.stopped[0].is_set()

            # Both lanes are taken (one held, one waiting for its cancelled response's end):
            # the next turn gets the cancelled lane once its terminal event arrived, on the
            # same socket, and sees only its own response.
            later = Recorder()
            await asyncio.wait_for(client.stream_to(request("later"), later), TIMEOUT)
            one_response(later.events)
            assert not other.done()

            backend.release.set()
            await asyncio.wait_for(other, TIMEOUT)
            one_response(held.events)
            # The cancelled response's end never reached the cancelled turn's consumer.
            assert stalled.events[0].type == "response.created"
            assert not {e.type for e in stalled.events} & {"response.failed", "error"}
        finally:
            await client.close()
    stats = client.stats
    assert (stats.connections_opened, stats.reconnects, stats.cancels) == (1, 0, 1)
    assert gauge(server) == 0


async def test_a_turn_whose_consumer_raises_cancels_its_response_too() -> None:
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    async with GatewayServer(backend) as server:  # type: ignore[arg-type]
        client = WebSocketTransport(server.websocket_url, max_lanes=0)  # one lane

        def fragile(event: Event) -> None:
            if isinstance(event, OutputItemAdded):
                raise RuntimeError("the consumer broke")

        try:
            with pytest.raises(RuntimeError, match="the consumer broke"):
                await client.stream_to(request("stall"), fragile)
            await asyncio.wait_for(backend.stopped[0].wait(), TIMEOUT)
            after = Recorder()
            await client.stream_to(request("after"), after)
        finally:
            await client.close()
    one_response(after.events)
    assert (client.stats.connections_opened, client.stats.cancels) == (1, 1)


async def test_a_server_without_cancel_is_detected_and_its_answer_reaches_no_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A gateway from before the frame existed: it answers an `error` with no stream_id.
    monkeypatch.delitem(server_session.FRAME_RULES, "response.cancel")  # type: ignore[arg-type]
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    async with GatewayServer(backend) as server:  # type: ignore[arg-type]
        client = WebSocketTransport(server.websocket_url, max_lanes=1)
        try:
            stalled = Recorder()
            doomed = asyncio.create_task(client.stream_to(request("stall"), stalled))  # hl-1
            await asyncio.wait_for(stalled.output.wait(), TIMEOUT)
            held = Recorder()
            # On the default lane: where an error without a stream_id would be routed.
            other = asyncio.create_task(client.stream_to(request("hold"), held))
            await asyncio.wait_for(held.output.wait(), TIMEOUT)

            await cancel(doomed)
            assert client.stats.cancels == 1
            # The refusal arrives while the default lane's turn is live: it is dropped.
            await eventually(lambda: not client._can_cancel)
            backend.release.set()
            await asyncio.wait_for(other, TIMEOUT)  # completes; the error never reached it
            one_response(held.events)
            # No turn left on the socket with a lane retired: the socket went, and with it
            # the generation that the server could not cancel.
            await asyncio.wait_for(backend.stopped[0].wait(), TIMEOUT)

            # From now on no cancel is sent: an abandoned lane is retired as before.
            again = Recorder()
            doomed = asyncio.create_task(client.stream_to(request("stall"), again))
            await asyncio.wait_for(again.output.wait(), TIMEOUT)
            await cancel(doomed)
            await asyncio.wait_for(backend.stopped[2].wait(), TIMEOUT)
            after = Recorder()
            await client.stream_to(request("after"), after)
            one_response(after.events)
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    stats = client.stats
    assert stats.cancels == 1
    assert stats.connections_opened == 3  # each retired lane cost its socket, as before


async def test_a_cancel_that_is_never_answered_retires_the_lane_and_then_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that swallows the cancel (or a stalled socket): no end ever comes for it.
    monkeypatch.setitem(
        server_session.FRAME_RULES,  # type: ignore[arg-type]
        "response.cancel",
        lambda session, frame, now, received_ns: (),
    )
    backend = GatedBackend(SimBackend(SCENARIO, "zero"), by_input=True)
    async with GatewayServer(backend) as server:  # type: ignore[arg-type]
        client = WebSocketTransport(server.websocket_url, max_lanes=0, cancel_timeout=0.05)
        try:
            stalled = Recorder()
            doomed = asyncio.create_task(client.stream_to(request("stall"), stalled))
            await asyncio.wait_for(stalled.output.wait(), TIMEOUT)
            await cancel(doomed)
            # Its only lane comes back once the wait ran out and the socket was dropped: the
            # next turn runs on a fresh socket, and the dropped one took the generation along.
            after = Recorder()
            await asyncio.wait_for(client.stream_to(request("after"), after), TIMEOUT)
            one_response(after.events)
            await asyncio.wait_for(backend.stopped[0].wait(), TIMEOUT)
        finally:
            await client.close()
    assert (client.stats.cancels, client.stats.connections_opened) == (1, 2)
