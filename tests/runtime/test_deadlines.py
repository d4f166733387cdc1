"""Turn deadlines against a real WebSocket server that accepts a turn and never ends it.

The server (a few lines of ``websockets``) counts connections and requests and answers each
``response.create`` with a script: nothing at all, one event then silence, or an event every
few milliseconds forever. Deadlines are short; no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hotloop.runtime import Agent, Runner
from hotloop.runtime.runner import TurnTimeout
from hotloop.transport import TransportError, WebSocketTransport

MODEL = "silent"
CREATED = {
    "type": "response.created",
    "response": {"id": "resp_1", "object": "response", "status": "in_progress", "output": []},
}


class Silent:
    """What the server did: connections accepted and ``response.create`` frames received."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.requests = 0

    async def handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        async for message in connection:
            request = json.loads(message)
            if request.get("type") != "response.create":
                continue
            self.requests += 1
            created = {**CREATED, "stream_id": request.get("stream_id")}
            if self.mode == "created":
                await connection.send(json.dumps(created))
            elif self.mode == "trickle":
                await connection.send(json.dumps(created))
                while True:
                    await asyncio.sleep(0.01)
                    await connection.send(json.dumps({**created, "type": "response.in_progress"}))


@asynccontextmanager
async def silent_server(mode: str) -> AsyncIterator[tuple[Silent, str]]:
    state = Silent(mode)
    async with serve(state.handle, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield state, f"ws://127.0.0.1:{port}/v1/responses"


async def run(url: str, **options: Any) -> None:
    client = WebSocketTransport(url)
    try:
        async with asyncio.timeout(10):  # a guard against hangs only
            await Runner.run(Agent(MODEL, max_attempts=2), "hello", client=client, **options)
    finally:
        await client.close()


async def test_no_first_event_resends_on_a_fresh_socket_then_raises() -> None:
    async with silent_server("nothing") as (server, url):
        with pytest.raises(TurnTimeout) as caught:
            await run(url, first_event_timeout=0.2)
    assert caught.value.code == "first_event_timeout"
    assert isinstance(caught.value, TransportError) and caught.value.replay_safe
    # Sent twice (max_attempts=2), the second time on a new socket.
    assert server.requests == 2
    assert server.connections == 2


async def test_a_stalled_turn_raises_stall_timeout() -> None:
    async with silent_server("created") as (server, url):
        with pytest.raises(TurnTimeout) as caught:
            await run(url, first_event_timeout=5, stall_timeout=0.2)
    assert caught.value.code == "stall_timeout"
    assert not caught.value.replay_safe
    assert server.requests == 1  # something was delivered: never sent again


async def test_a_turn_that_never_ends_raises_turn_timeout() -> None:
    async with silent_server("trickle") as (server, url):
        with pytest.raises(TurnTimeout) as caught:
            await run(url, first_event_timeout=5, stall_timeout=5, turn_timeout=0.3)
    assert caught.value.code == "turn_timeout"
    assert server.requests == 1


async def test_run_sync_takes_the_deadlines() -> None:
    """Synchronous code overrides the agent's deadlines as ``Runner.run`` does."""
    async with silent_server("created") as (server, url):
        base_url = url.removesuffix("/responses").replace("ws://", "http://")
        agent = Agent(MODEL, max_attempts=2)  # its own stall deadline: 60 s
        with pytest.raises(TurnTimeout) as caught:
            async with asyncio.timeout(10):  # a guard against hangs only
                await asyncio.to_thread(
                    Runner.run_sync, agent, "hello", base_url=base_url, stall_timeout=0.2
                )
    assert caught.value.code == "stall_timeout"
    assert server.requests == 1


def test_the_agent_carries_the_documented_defaults() -> None:
    agent = Agent(MODEL)
    assert (agent.first_event_timeout, agent.stall_timeout, agent.turn_timeout) == (60, 60, 600)
    with pytest.raises(ValueError):
        Agent(MODEL, stall_timeout=0)
