"""Hedged requests: a turn with no output after a delay goes out again; the first answer wins.

Driven by a scripted transport (no sockets): each attempt's first output waits on an event
the test controls, so which attempt wins never depends on timing; only the hedge's own delay
is a time, and the assertions are about which attempts happened, not how long they took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest

from hotloop.protocol.builder import ResponseBuilder
from hotloop.runtime import Agent, Hedge, Runner
from hotloop.sim.latency import get_profile
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.transport import ModelRequest, OnEvent, PushingTransport, TransportStats, connect
from hotloop.wire.events import Event
from hotloop.wire.responses import ResponseObject
from support import ten_turn_scenario

MODEL = "m"
TEN = ten_turn_scenario()
TEN_MODEL = "hotloop-sim"


def answer(response_id: str, text: str) -> tuple[list[Event], list[Event]]:
    """A text answer's events: before its first output, and the rest."""
    out = ResponseBuilder(ResponseObject(id=response_id, created_at=0, model=MODEL, status="x"))
    head = list(out.start())
    body = [*out.open_text(), *out.delta(text), *out.close_item(), *out.finish()]
    return head, body


class Scripted(PushingTransport):
    """A transport whose ``n``-th attempt answers ``text_n`` once ``gates[n]`` is set."""

    def __init__(self, gates: list[asyncio.Event]) -> None:
        self.gates = gates
        self.stats = TransportStats()
        self.sent: list[ModelRequest] = []
        self.cancelled: list[int] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        index = len(self.sent)
        self.sent.append(request)
        head, body = answer(f"resp_{index}", f"answer {index}")
        for event in head:
            on_event(event)
        await self.wait(index)
        for event in body:
            on_event(event)

    async def wait(self, index: int) -> None:
        """Until attempt ``index`` may go on; a cancelled attempt is recorded."""
        try:
            await self.gates[index].wait()
        except asyncio.CancelledError:
            self.cancelled.append(index)
            raise

    async def close(self) -> None:
        return None


def gates(*opened: bool) -> list[asyncio.Event]:
    events = [asyncio.Event() for _ in opened]
    for event, is_open in zip(events, opened, strict=True):
        if is_open:
            event.set()
    return events


async def test_a_slow_first_attempt_is_hedged_and_the_hedge_wins() -> None:
    hedge = Hedge(delay=0.05, budget=1.0)
    client = Scripted(gates(False, True))  # the first never answers; the hedge at once
    result = await Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client)
    assert result.final_output == "answer 1" and result.last_response_id == "resp_1"
    assert len(client.sent) == 2 and client.cancelled == [0]  # the loser was cancelled
    assert (hedge.requests, hedge.hedges, hedge.wins) == (1, 1, 1)
    assert result.steps[0].attempts == 1  # a hedge is not a re-send


async def test_the_first_attempt_can_still_win_after_the_hedge_went_out() -> None:
    hedge = Hedge(delay=0.02, budget=1.0)
    first, second = gates(False, False)
    client = Scripted([first, second])
    run = asyncio.create_task(Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client))
    while len(client.sent) < 2:
        await asyncio.sleep(0.005)
    first.set()  # the original answers first after all
    result = await run
    assert result.final_output == "answer 0" and client.cancelled == [1]
    assert (hedge.hedges, hedge.wins) == (1, 0)


async def test_no_hedge_when_the_first_attempt_answers_in_time() -> None:
    hedge = Hedge(delay=5.0, budget=1.0)
    client = Scripted(gates(True))
    result = await Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client)
    assert result.final_output == "answer 0" and len(client.sent) == 1
    assert hedge.hedges == 0 and client.cancelled == []


async def test_the_budget_caps_the_share_of_hedged_turns() -> None:
    hedge = Hedge(delay=0.0, budget=0.1)
    agent = Agent(MODEL, policies=[hedge])
    hedged = 0
    for _ in range(20):
        client = Scripted(gates(False, True))
        # Without a hedge the first attempt would never answer: open it after a moment.
        run = asyncio.create_task(Runner.run(agent, "hi", client=client))
        await asyncio.sleep(0.01)
        client.gates[0].set()
        await run
        hedged += len(client.sent) == 2
    assert hedged == hedge.hedges == 2  # 10% of 20 turns
    assert hedge.requests == 20


def test_the_adaptive_delay_is_a_percentile_of_what_was_seen() -> None:
    hedge = Hedge(percentile=0.9, min_samples=10)
    assert hedge.hedge_delay() is None  # no hedging before enough samples
    for n in range(1, 101):
        hedge._delays.add(float(n))
    delay = hedge.hedge_delay()
    assert delay is not None and 89 <= delay <= 91
    with pytest.raises(ValueError):
        Hedge(percentile=1.0)


async def test_a_hedge_can_go_to_another_model() -> None:
    client = Scripted(gates(False, True))
    agent = Agent(MODEL, policies=[Hedge(delay=0.01, budget=1.0, model="backup")])
    result = await Runner.run(agent, "hi", client=client)
    assert [request.model for request in client.sent] == [MODEL, "backup"]
    assert result.final_output == "answer 1"


#: Every first token takes 50 ms: with a 10 ms hedge delay, every turn is hedged.
SLOW_START = get_profile("zero").override(ttft_s=0.05)


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_hedged_turns_over_a_real_gateway_run_every_tool_once(
    gateway_factory: Any, transport: Any
) -> None:
    hedge = Hedge(delay=0.01, budget=1.0)
    log = ExecutionLog()
    agent = Agent(
        TEN_MODEL, TEN.instructions, scenario_tools(TEN, time_scale=0, log=log), policies=[hedge]
    )
    async with gateway_factory(profile=SLOW_START) as server:
        async with connect(server.base_url, transport=transport) as client:
            result = await Runner.run(agent, TEN.task, client=client)
    assert check_run(TEN, result, log) == ()
    assert set(log.by_arguments().values()) == {1}  # tools only from the winners
    assert hedge.requests == len(TEN.turns) and hedge.hedges == len(TEN.turns)


class StallsMidway(Scripted):
    """Like :class:`Scripted`, but each attempt's output starts before its gate: a stall."""

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        index = len(self.sent)
        self.sent.append(request)
        out = ResponseBuilder(
            ResponseObject(id=f"resp_{index}", created_at=0, model=MODEL, status="x")
        )
        for event in (*out.start(), *out.open_text(), *out.delta(f"answer {index}")):
            on_event(event)
        await self.wait(index)
        for event in (*out.close_item(), *out.finish()):
            on_event(event)


async def test_a_response_that_stalls_after_its_output_started_is_sent_again() -> None:
    hedge = Hedge(stall=0.05, budget=1.0, min_samples=1000)  # no first-output hedging here
    client = StallsMidway(gates(False, True))
    result = await Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client)
    assert result.final_output == "answer 1" and client.cancelled == [0]
    assert result.steps[0].attempts == 2  # the runner sent the turn again
    assert (hedge.stall_resends, hedge.hedges) == (1, 1)


async def test_a_stall_over_budget_is_waited_out() -> None:
    hedge = Hedge(stall=0.02, budget=0.0, min_samples=1000)
    first = asyncio.Event()
    client = StallsMidway([first])
    run = asyncio.create_task(Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client))
    await asyncio.sleep(0.1)  # five stall periods: no budget, so no re-send
    first.set()
    result = await run
    assert result.final_output == "answer 0" and len(client.sent) == 1
    assert hedge.stall_resends == 0
