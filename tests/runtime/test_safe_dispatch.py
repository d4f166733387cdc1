"""Which calls run from a response that is not (yet) safe to act on, and sync tool threads.

A scripted transport plays one turn's events into the runner and logs, in one list, each event
it hands over and each tool that starts: orderings are asserted, never durations.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Collection, Sequence
from typing import Any

import pytest

from hotloop.runtime import Agent, Runner, tool
from hotloop.transport import (
    ModelRequest,
    OnEvent,
    PushingTransport,
    TransportError,
    TransportStats,
)
from hotloop.wire import codec
from hotloop.wire.items import FunctionCallOutput
from support import answer_events, turn_events

MODEL = "scripted"


class Scripted(PushingTransport):
    """Serves one scripted turn per request; a turn without its terminal event is cut."""

    def __init__(self, turns: Sequence[list[dict[str, Any]]], log: list[str]) -> None:
        self.turns = list(turns)
        self.log = log
        self.stats = TransportStats()
        self.requests: list[ModelRequest] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        self.requests.append(request)
        events = self.turns.pop(0)
        for raw in events:
            event = codec.decode_event(json.dumps(raw).encode())
            self.log.append(event.type)
            on_event(event)
            await asyncio.sleep(0)  # let started tools run a step, as a socket would
        if not events[-1]["type"].startswith("response.") or events[-1]["type"] in (
            "response.output_item.done",
        ):
            raise TransportError("the stream was cut", code="connection_lost")

    async def close(self) -> None:
        return None


def effect_tools(log: list[str]) -> list[Any]:
    @tool(reads=["file:{path}"])
    async def look(path: str) -> str:
        """Read a file."""
        log.append(f"run:look:{path}")
        return f"seen {path}"

    @tool(writes=["file:{path}"])
    async def patch(path: str) -> str:
        """Write a file."""
        log.append(f"run:patch:{path}")
        return f"patched {path}"

    @tool
    async def deploy() -> str:
        """Declares nothing: exclusive, may do anything."""
        log.append("run:deploy")
        return "deployed"

    @tool(writes=["cache"], idempotent=True)
    async def warm() -> str:
        """An idempotent write."""
        log.append("run:warm")
        return "warm"

    return [look, patch, deploy, warm]


CALLS = [("look", {"path": "a"}), ("warm", {}), ("patch", {"path": "b"}), ("deploy", {})]


async def test_reads_start_before_the_response_completes_and_writes_after() -> None:
    log: list[str] = []
    client = Scripted([turn_events("r1", CALLS), answer_events("r2")], log)
    result = await Runner.run(Agent(MODEL, tools=effect_tools(log)), "go", client=client)

    assert result.final_output == "done"
    completed = log.index("response.completed")
    # The read and the idempotent write started while the response streamed ...
    assert log.index("run:look:a") < completed
    assert log.index("run:warm") < completed
    # ... the write and the exclusive call only once it completed.
    assert completed < log.index("run:patch:b") < log.index("run:deploy")


async def test_eager_writes_dispatches_writes_while_streaming() -> None:
    log: list[str] = []
    client = Scripted([turn_events("r1", [CALLS[0], CALLS[2]]), answer_events("r2")], log)
    agent = Agent(MODEL, tools=effect_tools(log), eager_writes=True)
    await Runner.run(agent, "go", client=client)
    assert log.index("run:patch:b") < log.index("response.completed")


async def test_no_write_runs_from_an_incomplete_response() -> None:
    log: list[str] = []
    client = Scripted([turn_events("r1", CALLS, end="incomplete"), answer_events("r2")], log)
    result = await Runner.run(Agent(MODEL, tools=effect_tools(log)), "go", client=client)

    ran = [entry for entry in log if entry.startswith("run:")]
    assert sorted(ran) == ["run:look:a", "run:warm"]
    outputs = {i.call_id: i.output for i in result.items if isinstance(i, FunctionCallOutput)}
    for call_id in ("call_2", "call_3"):
        error = json.loads(str(outputs[call_id]))["error"]
        assert error["type"] == "not_executed"
        assert "incomplete" in error["message"]


async def test_no_write_runs_from_a_failed_response() -> None:
    log: list[str] = []
    client = Scripted([turn_events("r1", CALLS, end="failed")], log)
    with pytest.raises(Exception, match="simulated server_error"):
        await Runner.run(Agent(MODEL, tools=effect_tools(log)), "go", client=client)
    await asyncio.sleep(0)
    assert [entry for entry in log if entry.startswith("run:")] == ["run:look:a", "run:warm"]


async def test_no_write_runs_from_a_cut_response() -> None:
    log: list[str] = []
    client = Scripted([turn_events("r1", CALLS, end="cut")], log)
    with pytest.raises(TransportError):
        await Runner.run(Agent(MODEL, tools=effect_tools(log)), "go", client=client)
    await asyncio.sleep(0)
    assert "run:patch:b" not in log and "run:deploy" not in log


# -- synchronous tools and their threads --------------------------------------------------


async def test_hung_sync_tools_do_not_starve_an_instant_one() -> None:
    release = threading.Event()
    hangs = 7  # more than the default executor's threads on a 2-CPU machine (6)

    @tool(pure=True, timeout=0.2)
    def hang(n: int) -> str:
        """Never returns until the test ends."""
        release.wait(30)
        return "late"

    @tool(pure=True, timeout=5)
    def instant() -> str:
        """Returns at once."""
        return "instant result"

    log: list[str] = []
    client = Scripted(
        [
            turn_events("r1", [("hang", {"n": n}) for n in range(hangs)]),
            turn_events("r2", [("instant", {})]),
            answer_events("r3"),
        ],
        log,
    )
    try:
        result = await Runner.run(Agent(MODEL, tools=[hang, instant]), "go", client=client)
    finally:
        release.set()
    outputs = [i.output for i in result.items if isinstance(i, FunctionCallOutput)]
    assert all(json.loads(str(o))["error"]["type"] == "timeout" for o in outputs[:hangs])
    assert outputs[hangs] == "instant result"


async def test_exhausted_tool_threads_are_reported_as_such() -> None:
    release = threading.Event()

    @tool(pure=True, timeout=0.2)
    def hang(n: int) -> str:
        """Never returns until the test ends."""
        release.wait(30)
        return "late"

    @tool(pure=True, timeout=5)
    def instant() -> str:
        """Returns at once."""
        return "instant result"

    log: list[str] = []
    client = Scripted(
        [
            turn_events("r1", [("hang", {"n": n}) for n in range(2)]),
            turn_events("r2", [("instant", {})]),
            answer_events("r3"),
        ],
        log,
    )
    agent = Agent(MODEL, tools=[hang, instant], max_tool_threads=2)
    try:
        result = await Runner.run(agent, "go", client=client)
    finally:
        release.set()
    outputs = [i.output for i in result.items if isinstance(i, FunctionCallOutput)]
    assert json.loads(str(outputs[2]))["error"]["type"] == "tool_pool_exhausted"
