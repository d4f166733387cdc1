"""Hedged requests on looptime's virtual clock: exactly when the hedge and a stall re-send go out.

The event loop's time moves only when every task waits, so an attempt whose first output
comes 10 s after it was sent takes no real time, and the times asserted are exact (to
looptime's microsecond). The transport is scripted: attempt ``n`` produces its first output
``first[n]`` seconds after it was sent (and, for stalls, pauses ``pause[n]`` seconds after it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

import pytest

from hotloop.protocol.builder import ResponseBuilder
from hotloop.runtime import Agent, Hedge, Runner
from hotloop.transport import ModelRequest, OnEvent, PushingTransport, TransportStats
from hotloop.wire.responses import ResponseObject

MODEL = "m"


class Timed(PushingTransport):
    """Attempt ``n`` outputs after ``first[n]`` s, pauses ``pause[n]`` s, then completes."""

    def __init__(self, first: Sequence[float], pause: Sequence[float] = ()) -> None:
        self.first = first
        self.pause = pause
        self.stats = TransportStats()
        self.sent: list[float] = []
        self.cancelled: list[tuple[int, float]] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        loop = asyncio.get_running_loop()
        index = len(self.sent)
        self.sent.append(loop.time())
        out = ResponseBuilder(
            ResponseObject(id=f"resp_{index}", created_at=0, model=MODEL, status="x")
        )
        try:
            for event in out.start():
                on_event(event)
            await asyncio.sleep(self.first[index])
            for event in (*out.open_text(), *out.delta(f"answer {index}")):
                on_event(event)
            if index < len(self.pause):
                await asyncio.sleep(self.pause[index])
            for event in (*out.close_item(), *out.finish()):
                on_event(event)
        except asyncio.CancelledError:
            self.cancelled.append((index, loop.time()))
            raise

    async def close(self) -> None:
        return None


async def run(agent: Agent, client: Timed) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await Runner.run(agent, "hi", client=client)
    client.sent = [sent - start for sent in client.sent]
    client.cancelled = [(index, when - start) for index, when in client.cancelled]
    return str(result.final_output), loop.time() - start


@pytest.mark.looptime
async def test_the_hedge_goes_out_at_its_delay_and_the_loser_stops_when_the_winner_starts() -> None:
    hedge = Hedge(delay=0.5, budget=1.0)
    client = Timed(first=[10.0, 0.2])
    output, took = await run(Agent(MODEL, policies=[hedge]), client)
    assert output == "answer 1"
    assert client.sent == [0.0, pytest.approx(0.5, abs=1e-5)]
    # The first attempt is cancelled the moment the hedge produced output: 0.5 + 0.2 s.
    assert client.cancelled == [(0, pytest.approx(0.7, abs=1e-5))]
    assert took == pytest.approx(0.7, abs=1e-5)
    assert (hedge.requests, hedge.hedges, hedge.wins) == (1, 1, 1)


@pytest.mark.looptime
async def test_an_attempt_that_answers_before_the_delay_is_never_hedged() -> None:
    hedge = Hedge(delay=0.5, budget=1.0)
    client = Timed(first=[0.499])
    output, took = await run(Agent(MODEL, policies=[hedge]), client)
    assert output == "answer 0" and client.sent == [0.0] and hedge.hedges == 0
    assert took == pytest.approx(0.499, abs=1e-5)


@pytest.mark.looptime
async def test_the_adaptive_delay_is_the_percentile_of_the_times_seen() -> None:
    hedge = Hedge(percentile=0.95, min_samples=20, budget=1.0)
    agent = Agent(MODEL, policies=[hedge])
    # Twenty turns whose first output took 0.1, 0.2, ... 2.0 s: no hedge while learning.
    for n in range(1, 21):
        client = Timed(first=[n / 10])
        await run(agent, client)
        assert len(client.sent) == 1
    delay = hedge.hedge_delay()
    # The p95 of 0.1 ... 2.0, interpolated between samples: 0.1 + 0.95 x 19 x 0.1 s.
    assert delay == pytest.approx(1.905, abs=1e-5)
    client = Timed(first=[30.0, 0.1])
    output, took = await run(agent, client)
    assert output == "answer 1"
    assert client.sent == [0.0, pytest.approx(delay, abs=1e-5)]
    assert took == pytest.approx(delay + 0.1, abs=1e-5)


@pytest.mark.looptime
async def test_a_stall_is_re_sent_exactly_when_the_quiet_passes_the_limit() -> None:
    hedge = Hedge(stall=2.0, budget=1.0, min_samples=1000)
    # The first attempt outputs at 0.1 s, then stalls 60 s; the re-send answers at once.
    client = Timed(first=[0.1, 0.1], pause=[60.0, 0.0])
    output, took = await run(Agent(MODEL, policies=[hedge]), client)
    assert output == "answer 1"
    assert client.sent == [0.0, pytest.approx(2.1, abs=1e-5)]  # 2 s after the last event
    assert client.cancelled == [(0, pytest.approx(2.1, abs=1e-5))]
    assert took == pytest.approx(2.2, abs=1e-5)
    assert hedge.stall_resends == 1


@pytest.mark.looptime
async def test_the_budget_holds_over_many_turns() -> None:
    hedge = Hedge(delay=0.5, budget=0.1)
    agent = Agent(MODEL, policies=[hedge])
    hedged = 0
    for _ in range(50):
        client = Timed(first=[1.0, 0.1])  # every turn deserves a hedge
        await run(agent, client)
        hedged += len(client.sent) == 2
        assert hedge.hedges <= 0.1 * hedge.requests
    assert hedged == hedge.hedges == 5 and hedge.requests == 50


def test_hedge_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="delay must not be negative"):
        Hedge(delay=-1.0)
    with pytest.raises(ValueError, match="stall must be positive"):
        Hedge(stall=0.0)
    with pytest.raises(ValueError, match="percentile"):
        Hedge(percentile=0.0)
