"""A turn whose response ends ``failed``: which failures the runner sends again, and what then.

A streamed 429 or 500 arrives as ``response.failed`` after ``response.created`` (not as an HTTP
status), and a stream the server cut as ``response.failed`` after some output. The runner sends
the turn again for those, as the transport does when the same failures come out of band, and
policies see every failed response as a failed attempt. A scripted transport plays the turns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import pytest

from hotloop.runtime import Agent, Fallback, Runner, tool
from hotloop.runtime.runner import ModelError
from hotloop.transport import ModelRequest, OnEvent, TransportStats
from hotloop.wire import codec
from hotloop.wire.events import Event
from support import answer_events, turn_events

MODEL = "scripted"


class Scripted:
    """Serves one scripted response per request, in order."""

    def __init__(self, turns: Sequence[list[dict[str, Any]]]) -> None:
        self.turns = list(turns)
        self.stats = TransportStats()
        self.requests: list[ModelRequest] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        self.requests.append(request)
        for raw in self.turns.pop(0):
            on_event(codec.decode_event(json.dumps(raw).encode()))
            await asyncio.sleep(0)  # let started tools run a step, as a socket would

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def counted_tools(runs: list[str]) -> list[Any]:
    @tool(pure=True)
    async def look(path: str) -> str:
        """Read.

        Args:
            path: What to read.
        """
        runs.append(f"look:{path}")
        return "seen"

    @tool
    async def save(path: str) -> str:
        """Write.

        Args:
            path: What to write.
        """
        runs.append(f"save:{path}")
        return "saved"

    return [look, save]


@pytest.mark.parametrize("code", ["rate_limit_exceeded", "server_error"])
async def test_a_failure_before_output_is_sent_again(code: str) -> None:
    client = Scripted([turn_events("r1", [], "failed", code), answer_events("r2")])
    result = await Runner.run(Agent(MODEL), "go", client=client)
    assert result.final_output == "done"
    assert result.steps[0].attempts == 2
    assert len(client.requests) == 2


async def test_a_dropped_stream_is_sent_again_and_no_call_runs_twice() -> None:
    runs: list[str] = []
    calls = [("look", {"path": "a"}), ("save", {"path": "b"})]
    client = Scripted(
        [
            turn_events("r1", calls, "failed", "stream_dropped"),
            turn_events("r2", calls),
            answer_events("r3"),
        ]
    )
    result = await Runner.run(Agent(MODEL, tools=counted_tools(runs)), "go", client=client)
    assert result.final_output == "done"
    assert result.steps[0].attempts == 2
    # The read started from the dropped attempt and was reused; the write waited for the
    # response that completed, and ran once from it.
    assert sorted(runs) == ["look:a", "save:b"]
    assert [tool.reused for tool in result.steps[0].tools] == [True, False]


async def test_other_failures_still_raise() -> None:
    runs: list[str] = []
    # A server error after output (the caller may have acted on it), and a code that would
    # fail the same way again: neither is sent again.
    for turn in (
        turn_events("r1", [("look", {"path": "a"})], "failed"),
        turn_events("r1", [], "failed", "invalid_prompt"),
    ):
        client = Scripted([turn, answer_events("r2")])
        with pytest.raises(ModelError, match="simulated"):
            await Runner.run(Agent(MODEL, tools=counted_tools(runs)), "go", client=client)
        assert len(client.requests) == 1


async def test_attempts_stay_bounded() -> None:
    client = Scripted([turn_events(f"r{i}", [], "failed", "rate_limit_exceeded") for i in range(5)])
    with pytest.raises(ModelError) as raised:
        await Runner.run(Agent(MODEL, max_attempts=3), "go", client=client)
    assert raised.value.code == "rate_limit_exceeded"
    assert len(client.requests) == 3
    assert raised.value.partial is not None


async def test_fallback_takes_a_failed_response_to_the_next_model() -> None:
    client = Scripted([turn_events("r1", [], "failed", "rate_limit_exceeded"), answer_events("r2")])
    agent = Agent(MODEL, policies=[Fallback("backup")])
    result = await Runner.run(agent, "go", client=client)
    assert result.final_output == "done"
    assert [request.model for request in client.requests] == [MODEL, "backup"]
