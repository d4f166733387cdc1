"""A turn whose response ends ``failed``: which failures the runner sends again, and what then.

A streamed 429 or 500 arrives as ``response.failed`` after ``response.created`` (not as an HTTP
status), and a stream the server cut as ``response.failed`` after some output. The runner sends
the turn again for those, as the transport does when the same failures come out of band, and
policies see every failed response as a failed attempt. A scripted transport plays the turns.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from hotloop.runtime import Agent, Fallback, RunFinished, Runner, TurnRetried, tool
from hotloop.runtime.runner import ModelError
from hotloop.transport.base import Backoff
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


def rate_limited(response_id: str, message: str) -> list[dict[str, Any]]:
    """A streamed 429: ``response.failed`` with ``rate_limit_exceeded`` and ``message``."""
    events = turn_events(response_id, [], "failed", "rate_limit_exceeded")
    events[-1]["response"]["error"]["message"] = message
    return events


async def test_a_rate_limit_waits_as_long_as_the_server_asked() -> None:
    client = ScriptedTransport(
        [rate_limited("r1", "Rate limit reached. Please try again in 0.3s."), answer_events("r2")]
    )
    started = time.perf_counter()
    result = await Runner.run(Agent(MODEL), "go", client=client)
    assert time.perf_counter() - started >= 0.3
    assert result.final_output == "done" and result.steps[0].attempts == 2


async def test_a_stream_shows_each_retry_before_it_goes_out() -> None:
    client = ScriptedTransport(
        [
            rate_limited("r1", "Please try again in 0.2s."),
            turn_events("r2", [], "failed", "server_error"),
            answer_events("r3"),
        ]
    )
    events = [event async for event in Runner.run_stream(Agent(MODEL), "go", client=client)]
    retried = [event for event in events if isinstance(event, TurnRetried)]
    assert [(e.turn, e.attempt, e.code, e.wait_s, e.model) for e in retried] == [
        (1, 1, "rate_limit_exceeded", 0.2, MODEL),
        (1, 2, "server_error", 0.0, MODEL),
    ]
    assert "try again in 0.2s" in retried[0].message
    assert isinstance(events[-1], RunFinished) and events[-1].result.steps[0].attempts == 3


async def test_a_rate_limit_that_says_no_wait_backs_off() -> None:
    # 0.5 s, less a quarter at most: a server that did not say is not hammered either.
    client = ScriptedTransport([rate_limited("r1", "Slow down."), answer_events("r2")])
    started = time.perf_counter()
    result = await Runner.run(Agent(MODEL), "go", client=client)
    assert time.perf_counter() - started >= 0.375
    assert result.steps[0].attempts == 2


async def test_jitter_leaves_the_global_random_state_alone() -> None:
    """An application that seeds ``random`` gets the same draws with hotloop retrying under it:
    the runner's and the transports' jitter have generators of their own."""
    random.seed(7)
    state = random.getstate()
    client = ScriptedTransport([rate_limited("r1", "Slow down."), answer_events("r2")])
    await Runner.run(Agent(MODEL), "go", client=client)
    backoff = Backoff(1.0, first=0.001, cap=0.001)
    assert await backoff.wait() and await backoff.wait()
    assert random.getstate() == state


async def test_a_rate_limit_asking_for_minutes_is_raised_at_once() -> None:
    client = ScriptedTransport(
        [rate_limited("r1", "Please try again in 2m0s."), answer_events("r2")]
    )
    started = time.perf_counter()
    with pytest.raises(ModelError) as raised:
        await Runner.run(Agent(MODEL), "go", client=client)
    assert time.perf_counter() - started < 1.0
    assert raised.value.code == "rate_limit_exceeded" and raised.value.retry_after == 120.0
    assert len(client.requests) == 1 and raised.value.partial is not None


async def test_a_fallback_to_another_model_does_not_wait_out_the_rate_limit() -> None:
    client = ScriptedTransport([rate_limited("r1", "Please try again in 5s."), answer_events("r2")])
    agent = Agent(MODEL, policies=[Fallback("backup")])
    started = time.perf_counter()
    result = await Runner.run(agent, "go", client=client)
    assert time.perf_counter() - started < 1.0
    assert result.final_output == "done"
    assert [request.model for request in client.requests] == [MODEL, "backup"]


async def test_a_rate_limit_wait_past_the_turn_deadline_is_raised_at_once() -> None:
    client = ScriptedTransport([rate_limited("r1", "Please try again in 5s."), answer_events("r2")])
    started = time.perf_counter()
    with pytest.raises(ModelError) as raised:
        await Runner.run(Agent(MODEL, turn_timeout=2.0), "go", client=client)
    assert time.perf_counter() - started < 1.0
    assert raised.value.retry_after == 5.0 and len(client.requests) == 1
