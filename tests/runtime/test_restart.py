"""Runs that outlive their gateway, and runs that fail and are continued.

A gateway is stopped in the middle of a run and started again on the same port: the
transport reconnects with backoff and the run completes, each write executed once. A gateway
that stays away longer than ``reconnect_timeout`` fails the run with ``connect_failed``, and
the error carries the run's partial state: passed back as ``previous=``, the run continues
where it stopped without executing any finished tool call again.

Every trigger is a tool execution or an event, never a time; the only times are how long the
gateway stays down, chosen well apart from the deadline they are tested against.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest

from hotloop.runtime import Agent, PartialRun, Runner, Tool
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolEffects, ToolSpec, Turn, load_scenario
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.testing.fault_runs import RestartableGateway
from hotloop.transport import (
    HTTPTransport,
    ModelRequest,
    OnEvent,
    Transport,
    TransportError,
    WebSocketTransport,
    connect,
)
from hotloop.wire.events import Event, ResponseCompleted
from hotloop.wire.items import FunctionCallOutput

MODEL = "hotloop-sim"
CODING = load_scenario("coding")
WRITE = "apply_patch"


@contextlib.asynccontextmanager
async def restartable(
    scenario: Scenario = CODING, store_path: Path | None = None
) -> AsyncIterator[RestartableGateway]:
    gateway = RestartableGateway(scenario, store_path=store_path)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def on_first_execution(tools: list[Tool], name: str, hook: Any) -> None:
    """Run ``await hook()`` inside the first execution of tool ``name``, after its body."""
    tool = next(t for t in tools if t.name == name)
    body = tool.fn
    fired = False

    async def wrapped(**args: Any) -> Any:
        nonlocal fired
        output = await body(**args)
        if not fired:
            fired = True
            await hook()
        return output

    tool.fn = wrapped


def assert_writes_once(log: ExecutionLog) -> None:
    writes = {key: n for key, n in log.by_arguments().items() if key[0] == WRITE}
    expected = {(c.name, c.arguments) for t in CODING.turns for c in t.calls if c.name == WRITE}
    assert len(writes) == len(expected)
    assert set(writes.values()) == {1}, writes


# -- the gateway comes back: the run goes on ------------------------------------------------


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_a_gateway_restart_in_the_middle_of_a_run_is_survived(
    kind: str, tmp_path: Path
) -> None:
    # Down for 1.5 s: the old three quick attempts (about 0.35 s) gave up long before that.
    async with restartable(store_path=tmp_path / "store.sqlite3") as gateway:
        log = ExecutionLog()
        tools = scenario_tools(CODING, time_scale=0, log=log)
        restart: asyncio.Task[None] | None = None

        async def kill() -> None:
            nonlocal restart
            await gateway.stop()
            restart = asyncio.create_task(gateway.restart(1.5))

        on_first_execution(tools, WRITE, kill)
        agent = Agent(MODEL, CODING.instructions, tools)
        if kind == "websocket":
            client: Transport = connect(gateway.base_url)
        else:
            # Store-backed HTTP: the restarted gateway still holds the responses (SQLite).
            client = connect(gateway.base_url, transport="http", incremental=True)
        try:
            result = await Runner.run(agent, CODING.task, client=client)
        finally:
            await client.close()
        assert restart is not None
        await restart

    assert gateway.restarts == 1
    assert check_run(CODING, result, log) == ()
    assert_writes_once(log)
    if isinstance(client, WebSocketTransport):
        assert client.stats.reconnects == 1
    else:
        assert isinstance(client, HTTPTransport)
        # Every turn after the first continued by id, the restart included.
        assert client.stats.cache_misses == 0
        assert client.stats.full_resends == 1


async def test_the_reconnect_deadline_is_honoured() -> None:
    async with restartable() as gateway:
        port = gateway.port
        await gateway.stop()
        client = connect(f"http://127.0.0.1:{port}/v1", reconnect_timeout=0.4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(TransportError) as caught:
                await Runner.run(Agent(MODEL), "hi", client=client)
        finally:
            await client.close()
        waited = loop.time() - started
    assert caught.value.code == "connect_failed"
    assert f"127.0.0.1:{port}" in str(caught.value)
    # It kept trying for the whole deadline (and not much longer), then gave up.
    assert 0.4 <= waited < 5


# -- the gateway stays away: the run fails with its state, and is continued ----------------


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_a_run_that_cannot_reconnect_is_continued_from_its_partial_state(
    kind: str,
) -> None:
    async with restartable() as gateway:
        log = ExecutionLog()
        tools = scenario_tools(CODING, time_scale=0, log=log)
        on_first_execution(tools, WRITE, gateway.stop)
        agent = Agent(MODEL, CODING.instructions, tools)
        transport: Any = "websocket" if kind == "websocket" else "http"
        client = connect(gateway.base_url, transport=transport, reconnect_timeout=0.3)
        try:
            with pytest.raises(TransportError) as caught:
                await Runner.run(agent, CODING.task, client=client)
            partial = caught.value.partial
            assert isinstance(partial, PartialRun)
            assert caught.value.code == "connect_failed" and partial.error == str(caught.value)
            # Every completed turn is kept, with its tool results: the writes that ran too.
            outputs = [item for item in partial.items if isinstance(item, FunctionCallOutput)]
            assert len(outputs) == log.count() > 0
            assert log.count(WRITE) >= 1
            assert partial.turns >= 1 and partial.last_response_id is not None

            await gateway.start()
            result = await Runner.run(agent, CODING.task, client=client, previous=partial)
        finally:
            await client.close()

    assert result.final_output == CODING.turns[-1].text
    assert partial.turns + result.turns == len(CODING.turns)
    assert log.count() == CODING.total_calls
    assert_writes_once(log)


# -- a turn cut after its reads finished: they are reused, the held write runs once ---------

LOOKUP = ToolSpec(
    "lookup",
    "Look an order up.",
    {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    effects=ToolEffects(reads=("order:{id}",)),
)
REFUND = ToolSpec(
    "refund",
    "Refund an order.",
    {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    effects=ToolEffects(writes=("order:{id}",)),
)
SUPPORT = Scenario(
    name="support",
    turns=(
        Turn(calls=(ScriptedCall("lookup", '{"id":1}'), ScriptedCall("refund", '{"id":2}'))),
        Turn(calls=(ScriptedCall("lookup", '{"id":3}'),)),
        Turn(text="Done."),
    ),
    tools={"lookup": LOOKUP, "refund": REFUND},
    task="Refund order 2 after checking order 1.",
)


class CutBeforeCompleted:
    """A transport whose ``cut``-th turn loses its ``response.completed`` for good.

    The turn streams up to its end; the terminal event never reaches the runner, and once
    ``ready`` is set (the turn's reads finished) the turn fails, not replay safe: a stream cut
    at the last moment, after tools had started from it.
    """

    def __init__(self, inner: Transport, cut: int, ready: asyncio.Event) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.cut = cut
        self.ready = ready
        self.turns = 0

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        self.turns += 1
        if self.turns != self.cut:
            await self.inner.stream_to(request, on_event, skip=skip)
            return

        def forward(event: Event) -> None:
            if not isinstance(event, ResponseCompleted):
                on_event(event)

        await self.inner.stream_to(request, forward, skip=skip)
        await self.ready.wait()
        raise TransportError("the stream was cut before its end", code="connection_lost")

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        return self.inner.stream(request)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("eager", [True, False])
async def test_finished_reads_of_a_cut_turn_are_reused_and_its_held_write_runs_once(
    eager: bool,
) -> None:
    async with restartable(SUPPORT) as gateway:
        log = ExecutionLog()
        tools = scenario_tools(SUPPORT, time_scale=0, log=log)
        ready = asyncio.Event()
        if not eager:
            ready.set()  # a lazy agent starts no read before its response completes
        on_first_execution(tools, "lookup", _set(ready))
        agent = Agent(MODEL, tools=tools, eager=eager)
        client = CutBeforeCompleted(connect(gateway.base_url), cut=1, ready=ready)
        try:
            with pytest.raises(TransportError) as caught:
                await Runner.run(agent, SUPPORT.task, client=client)
            partial = caught.value.partial
            assert partial is not None
            # The write was held for the response that never completed: it never ran.
            assert log.count("refund") == 0
            if eager:
                assert log.count("lookup") == 1
                assert [(c.name, c.arguments) for c in partial.finished] == [("lookup", '{"id":1}')]
            else:
                # A lazy agent starts nothing before its response completes.
                assert log.count("lookup") == 0 and partial.finished == ()
            assert partial.turns == 0 and partial.items == partial.input

            # The input is the run's own: another one is refused, the same one continues it.
            with pytest.raises(ValueError, match="same input"):
                await Runner.run(agent, "something else", client=client, previous=partial)
            result = await Runner.run(agent, (), client=client, previous=partial)
        finally:
            await client.close()

    assert result.final_output == "Done."
    assert log.by_arguments() == {
        ("lookup", '{"id":1}'): 1,
        ("refund", '{"id":2}'): 1,
        ("lookup", '{"id":3}'): 1,
    }
    first = result.steps[0].tools
    assert [tool.reused for tool in first] == [eager, False]


def _set(event: asyncio.Event) -> Any:
    async def hook() -> None:
        event.set()

    return hook


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_a_server_that_hangs_up_unanswered_is_retried_until_the_deadline(kind: str) -> None:
    # What a proxy or load balancer in front of a down gateway does: accept, then close.
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport: Any = kind
    client = connect(f"http://127.0.0.1:{port}/v1", transport=transport, reconnect_timeout=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TransportError) as caught:
            await Runner.run(Agent(MODEL, max_attempts=1), "hi", client=client)
    finally:
        await client.close()
        server.close()
    waited = loop.time() - started
    assert caught.value.code == "connect_failed"
    assert 0.4 <= waited < 5
    # Backed off (25-50 ms, 50-100 ms, ...), not a busy loop of reconnects.
    assert 3 <= accepted <= 9
