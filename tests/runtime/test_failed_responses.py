"""A turn whose response ends ``failed``: which failures the runner sends again, and what then.

A streamed 429 or 500 arrives as ``response.failed`` after ``response.created`` (not as an HTTP
status), and a stream the server cut as ``response.failed`` after some output. The runner sends
the turn again for those, as the transport does when the same failures come out of band, and
policies see every failed response as a failed attempt. A scripted transport plays the turns.
"""

from __future__ import annotations

from typing import Any

import pytest

from hotloop.runtime import Agent, Fallback, Runner, tool
from hotloop.runtime.runner import ModelError
from support import ScriptedTransport, answer_events, turn_events

MODEL = "scripted"


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
    client = ScriptedTransport([turn_events("r1", [], "failed", code), answer_events("r2")])
    result = await Runner.run(Agent(MODEL), "go", client=client)
    assert result.final_output == "done"
    assert result.steps[0].attempts == 2
    assert len(client.requests) == 2


async def test_a_dropped_stream_is_sent_again_and_no_call_runs_twice() -> None:
    runs: list[str] = []
    calls = [("look", {"path": "a"}), ("save", {"path": "b"})]
    client = ScriptedTransport(
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
        client = ScriptedTransport([turn, answer_events("r2")])
        with pytest.raises(ModelError, match="simulated"):
            await Runner.run(Agent(MODEL, tools=counted_tools(runs)), "go", client=client)
        assert len(client.requests) == 1


async def test_attempts_stay_bounded() -> None:
    client = ScriptedTransport(
        [turn_events(f"r{i}", [], "failed", "rate_limit_exceeded") for i in range(5)]
    )
    with pytest.raises(ModelError) as raised:
        await Runner.run(Agent(MODEL, max_attempts=3), "go", client=client)
    assert raised.value.code == "rate_limit_exceeded"
    assert len(client.requests) == 3
    assert raised.value.partial is not None


async def test_fallback_takes_a_failed_response_to_the_next_model() -> None:
    client = ScriptedTransport(
        [turn_events("r1", [], "failed", "rate_limit_exceeded"), answer_events("r2")]
    )
    agent = Agent(MODEL, policies=[Fallback("backup")])
    result = await Runner.run(agent, "go", client=client)
    assert result.final_output == "done"
    assert [request.model for request in client.requests] == [MODEL, "backup"]
