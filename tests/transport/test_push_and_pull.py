"""Transports push events (``stream_to``) and can be pulled (``stream``): both, over the wire.

The runner uses ``stream_to``: over a WebSocket each event reaches ``on_event`` inside the
socket's protocol callback. These tests pin what that must keep: the same events in the same
order as the pull form, an ``on_event`` that raises ends only its own turn, a lane is never
lost (not to a turn that fails, nor to a waiting turn that is cancelled), and the HTTP and
Chat transports push exactly what they yield.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime.runner import REDUNDANT_EVENTS
from hotloop.transport import ModelRequest, Transport, WebSocketTransport, connect
from hotloop.wire.events import Event, FunctionCallArgumentsDelta
from hotloop.wire.items import items_from_input
from support import WEATHER_TOOL, ten_turn_scenario

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]

SCENARIO = ten_turn_scenario()
TOOLS = (WEATHER_TOOL.to_responses_tool(),)


def first_turn(task: str = SCENARIO.task) -> ModelRequest:
    return ModelRequest(f"hotloop-sim:{SCENARIO.name}", items_from_input(task), tools=TOOLS)


def shape(events: list[Event]) -> list[tuple[str, Any]]:
    """Event types and deltas: what two answers to the same request share (ids differ)."""
    return [(event.type, getattr(event, "delta", None)) for event in events]


async def pushed(client: Transport, request: ModelRequest) -> list[Event]:
    events: list[Event] = []
    await client.stream_to(request, events.append)
    return events


@pytest.mark.parametrize("kind", ["websocket", "http", "chat"])
async def test_push_and_pull_deliver_the_same_events(gateway: GatewayServer, kind: str) -> None:
    client = connect(gateway.base_url, transport=kind)  # type: ignore[arg-type]
    try:
        push = await pushed(client, first_turn())
        pull = [event async for event in client.stream(first_turn())]
    finally:
        await client.close()
    assert push[-1].type == "response.completed"
    assert shape(push) == shape(pull)
    assert any(isinstance(event, FunctionCallArgumentsDelta) for event in push)


async def test_skipped_event_types_are_dropped_unread_while_no_turn_wants_them(
    gateway: GatewayServer,
) -> None:
    client = WebSocketTransport(gateway.websocket_url)
    try:
        everything = await pushed(client, first_turn())
        lean: list[Event] = []
        await client.stream_to(first_turn(), lean.append, skip=REDUNDANT_EVENTS)
        # Two turns at once on two lanes: while one wants every event, it gets every event.
        wanting: list[Event] = []
        not_wanting: list[Event] = []
        await asyncio.gather(
            client.stream_to(first_turn(), wanting.append),
            client.stream_to(first_turn(), not_wanting.append, skip=REDUNDANT_EVENTS),
        )
        again: list[Event] = []
        await client.stream_to(first_turn(), again.append, skip=REDUNDANT_EVENTS)
        # A turn's end is never skipped, whatever the caller asks: the turn still ends.
        stubborn: list[Event] = []
        await client.stream_to(
            first_turn(), stubborn.append, skip={"response.completed", "response.created"}
        )
    finally:
        await client.close()
    kinds = {event.type for event in everything}
    assert kinds >= REDUNDANT_EVENTS
    # Nothing else is lost: the same events, in the same order, less the skipped types.
    assert shape(lean) == [s for s in shape(everything) if s[0] not in REDUNDANT_EVENTS]
    assert shape(wanting) == shape(everything)
    assert shape(again) == shape(lean)
    assert stubborn[-1].type == "response.completed"
    assert "response.created" not in {event.type for event in stubborn}
    assert client.stats.connections_opened == 1


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_a_turn_that_skips_gets_everything_else_in_order(
    gateway: GatewayServer, kind: str
) -> None:
    client = connect(gateway.base_url, transport=kind)  # type: ignore[arg-type]
    try:
        everything = await pushed(client, first_turn())
        lean: list[Event] = []
        await client.stream_to(first_turn(), lean.append, skip=REDUNDANT_EVENTS)
    finally:
        await client.close()
    assert {event.type for event in everything} >= REDUNDANT_EVENTS
    assert shape(lean) == [s for s in shape(everything) if s[0] not in REDUNDANT_EVENTS]


async def test_on_event_that_raises_ends_only_its_turn(gateway: GatewayServer) -> None:
    client = WebSocketTransport(gateway.websocket_url, max_lanes=0)  # one lane: it must be freed
    seen: list[str] = []

    def fragile(event: Event) -> None:
        seen.append(event.type)
        if isinstance(event, FunctionCallArgumentsDelta):
            raise RuntimeError("the consumer broke")

    try:
        with pytest.raises(RuntimeError, match="the consumer broke"):
            await client.stream_to(first_turn(), fragile)
        # Nothing after the failing event reached the failed turn's consumer ...
        assert seen[-1] == "response.function_call_arguments.delta"
        assert seen.count("response.function_call_arguments.delta") == 1
        # ... and the socket and its only lane serve the next turn, whose events are its own.
        after = await pushed(client, first_turn())
    finally:
        await client.close()
    assert after[0].type == "response.created" and after[-1].type == "response.completed"
    assert len({event.response.id for event in after if hasattr(event, "response")}) == 1
    assert client.stats.connections_opened == 1


async def test_pull_iteration_left_early_frees_the_lane(gateway: GatewayServer) -> None:
    client = WebSocketTransport(gateway.websocket_url, max_lanes=0)
    try:
        events = client.stream(first_turn())
        first = await anext(events)  # type: ignore[call-overload]
        await events.aclose()  # type: ignore[attr-defined]
        after = await pushed(client, first_turn())
    finally:
        await client.close()
    assert first.type == "response.created"
    assert after[-1].type == "response.completed"


async def test_turns_beyond_the_lanes_wait_their_turn(gateway: GatewayServer) -> None:
    client = WebSocketTransport(gateway.websocket_url, max_lanes=0)
    log: list[tuple[int, str]] = []

    def recorder(index: int) -> Callable[[Event], None]:
        return lambda event: log.append((index, event.type))

    try:
        turns = [
            asyncio.create_task(client.stream_to(first_turn(), recorder(index)))
            for index in range(3)
        ]
        await asyncio.sleep(0)  # every task started: the first holds the lane, two wait
        turns[1].cancel()  # a waiting turn is cancelled: it must not take the lane with it
        await asyncio.gather(turns[0], turns[2])
        with contextlib.suppress(asyncio.CancelledError):
            await turns[1]
    finally:
        await client.close()
    order = [index for index, _ in log]
    # One lane: the turns ran one after the other, never interleaved; the cancelled one not.
    assert order == sorted(order) and set(order) == {0, 2}
    assert [kind for index, kind in log if kind == "response.completed"] == [
        "response.completed"
    ] * 2


async def test_a_woken_lane_waiter_that_is_cancelled_passes_the_lane_on() -> None:
    client = WebSocketTransport("ws://127.0.0.1:9/v1/responses", max_lanes=0)  # never connects
    lane = await client._acquire_lane()
    second = asyncio.create_task(client._acquire_lane())
    third = asyncio.create_task(client._acquire_lane())
    await asyncio.sleep(0)  # both wait
    client._release_lane(lane)  # wakes the second ...
    second.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(third, 5) is None  # the default lane reached the third
    assert second.cancelled()
