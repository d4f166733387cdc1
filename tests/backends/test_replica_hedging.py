"""Hedging and failover across replicas, inside the gateway (``hotloop.backends.hedging``).

The unit tests run on looptime's virtual clock: the event loop's time moves only when every
task waits, so a hedge delay of 0.5 s and a first token 10 s away take no real time, and the
times asserted are exact. The engines take the loop's clock and ``asyncio.sleep``.

The last tests run a real gateway over loopback with the official ``openai`` SDK as the
client, which knows nothing of hedging.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import pytest
from openai import AsyncOpenAI

from hotloop.backends.hedging import HedgeSettings, ReplicaHedging, StagedBuilder, _Lost, _Race
from hotloop.backends.responses import ResponsesBackend
from hotloop.backends.sim import SimBackend
from hotloop.backends.upstream import UpstreamConfig, UpstreamConfigError
from hotloop.errors import APIError, HotloopError
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import Generation
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario
from hotloop.wire.events import Event
from hotloop.wire.responses import Usage
from support import generation_request, started_builder

MODEL = "m"
ANSWER = "abcd" * 50

#: The replica that answers at once (0.2 s to the first token), and one that takes 10 s.
FAST = get_profile("fast")
SLOW = FAST.override(ttft_s=10.0)


def scenario() -> Scenario:
    return Scenario.from_dict({"name": "answer", "task": "Say it.", "turns": [{"text": ANSWER}]})


def engines(*profiles: LatencyProfile) -> list[SimEngine]:
    loop = asyncio.get_running_loop()
    return [
        SimEngine({MODEL: scenario()}, profile, clock=loop.time, stream=f"r#{index}")
        for index, profile in enumerate(profiles)
    ]


class Replicas:
    """Attempt ``i`` runs on ``engines[order[i]]``; records when each started and ended."""

    def __init__(self, sims: Sequence[SimEngine], order: Sequence[int] = (0, 1, 2)) -> None:
        self.sims = sims
        self.order = order
        self.started: list[tuple[int, float]] = []
        self.cancelled: list[int] = []
        self.running = 0

    async def attempt(self, index: int, out: ResponseBuilder) -> Generation:
        replica = self.order[index]
        self.started.append((replica, asyncio.get_running_loop().time()))
        self.running += 1
        try:
            async for events in self.sims[replica].generate(generation_request(), out):
                yield events
        except asyncio.CancelledError:
            self.cancelled.append(replica)
            raise
        finally:
            self.running -= 1


async def collect(
    hedging: ReplicaHedging, replicas: Replicas, out: ResponseBuilder
) -> tuple[list[Event], float]:
    """Every event of the turn, and the loop time of the first delta."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    first: float | None = None
    events: list[Event] = []
    async for batch in hedging.generate(replicas.attempt, out):
        for event in batch:
            if first is None and event.type.endswith(".delta"):
                first = loop.time() - start
            events.append(event)
    assert first is not None
    return events, first


def text_of(out: ResponseBuilder) -> str:
    return "".join(part.text for item in out.output for part in getattr(item, "content", ()))


@pytest.mark.looptime
async def test_the_hedge_fires_at_its_delay_and_the_fast_replica_wins() -> None:
    replicas = Replicas(engines(SLOW, FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=0.5, budget=1.0), 2)
    out = started_builder()
    events, first = await collect(hedging, replicas, out)
    # The hedge went out at exactly 0.5 s, to the other replica; its first token came 0.2 s
    # (plus the service time) later, and the slow replica was cancelled at once.
    assert replicas.started == [
        (0, pytest.approx(replicas.started[0][1])),
        (1, pytest.approx(replicas.started[0][1] + 0.5)),
    ]
    service = FAST.service_time(generation_request().processed_tokens)
    first_token = FAST.first_token_time(generation_request().context.tokens)
    assert first == pytest.approx(0.5 + service + first_token)
    assert replicas.cancelled == [0] and replicas.running == 0
    assert text_of(out) == ANSWER  # one response, exactly the answer, once
    assert (hedging.requests, hedging.hedges, hedging.wins, hedging.failovers) == (1, 1, 1, 0)
    sequence = [event.sequence_number for event in events]
    assert sequence == list(range(2, 2 + len(events)))  # after start(): no gap, no repeat


@pytest.mark.looptime
async def test_no_hedge_when_the_first_replica_answers_in_time() -> None:
    replicas = Replicas(engines(FAST, FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=0.5, budget=1.0), 2)
    out = started_builder()
    await collect(hedging, replicas, out)
    assert [replica for replica, _ in replicas.started] == [0]
    assert hedging.hedges == 0 and replicas.cancelled == [] and text_of(out) == ANSWER


@pytest.mark.looptime
async def test_the_first_replica_can_still_win_after_the_hedge_went_out() -> None:
    # The first replica answers at 0.6 s; the hedge, out at 0.5 s, would answer at 10.5 s.
    first_at = FAST.override(ttft_s=0.6)
    replicas = Replicas(engines(first_at, SLOW))
    hedging = ReplicaHedging(HedgeSettings(delay=0.5, budget=1.0), 2)
    out = started_builder()
    await collect(hedging, replicas, out)
    assert [replica for replica, _ in replicas.started] == [0, 1]
    assert replicas.cancelled == [1] and text_of(out) == ANSWER
    assert (hedging.hedges, hedging.wins) == (1, 0)


@pytest.mark.looptime
async def test_the_budget_caps_the_share_of_hedged_turns() -> None:
    hedging = ReplicaHedging(HedgeSettings(delay=0.5, budget=0.1), 2)
    for _ in range(30):
        await collect(hedging, Replicas(engines(SLOW, FAST)), started_builder())
    assert hedging.requests == 30 and hedging.hedges == 3 and hedging.wins == 3


@pytest.mark.looptime
async def test_the_adaptive_delay_waits_for_samples_then_takes_the_percentile() -> None:
    hedging = ReplicaHedging(HedgeSettings(percentile=0.5, min_samples=5, budget=1.0), 2)
    for _ in range(5):
        replicas = Replicas(engines(FAST, FAST))
        await collect(hedging, replicas, started_builder())
        assert len(replicas.started) == 1  # too few samples: no hedge yet
    delay = hedging.delay()
    service = FAST.service_time(generation_request().processed_tokens)
    # (looptime keeps its clock in microseconds)
    expected = service + FAST.first_token_time(generation_request().context.tokens)
    assert delay == pytest.approx(expected, abs=1e-5)
    replicas = Replicas(engines(SLOW, FAST))
    await collect(hedging, replicas, started_builder())
    assert replicas.started[1][1] - replicas.started[0][1] == pytest.approx(expected, abs=1e-5)


@pytest.mark.looptime
async def test_a_failure_before_output_fails_over_to_another_replica() -> None:
    failing = FAST.override(server_error_probability=1)
    replicas = Replicas(engines(failing, FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=None, budget=0.0), 2)  # no hedges at all
    out = started_builder()
    await collect(hedging, replicas, out)
    assert [replica for replica, _ in replicas.started] == [0, 1]
    assert text_of(out) == ANSWER
    assert (hedging.hedges, hedging.failovers) == (0, 1)


@pytest.mark.looptime
async def test_a_failure_after_output_stands() -> None:
    dropping = FAST.override(drop_probability=1)
    replicas = Replicas(engines(dropping, FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=None, budget=0.0), 2)
    with pytest.raises(APIError) as raised:
        await collect(hedging, replicas, started_builder())
    assert raised.value.code == "stream_dropped"
    assert [replica for replica, _ in replicas.started] == [0]  # nothing re-sent mid-output


@pytest.mark.looptime
async def test_attempts_are_bounded_and_the_last_failure_is_raised() -> None:
    failing = FAST.override(server_error_probability=1)
    replicas = Replicas(engines(failing, failing, failing))
    hedging = ReplicaHedging(HedgeSettings(budget=0.0, max_attempts=3), 3)
    with pytest.raises(APIError) as raised:
        await collect(hedging, replicas, started_builder())
    assert raised.value.code == "server_error" and len(replicas.started) == 3


#: Outputs its first token at once, then stalls 60 s mid-stream.
STALLING = FAST.override(stall_probability=1, stall_s=60.0)


@pytest.mark.looptime
async def test_a_stalled_turn_is_taken_over_by_a_replica_that_reproduces_it() -> None:
    replicas = Replicas(engines(STALLING, FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=5.0, stall=1.0, budget=1.0), 2)
    out = started_builder()
    events, _ = await collect(hedging, replicas, out)
    # The second replica started 1 s after the first one's last token, caught up with what
    # the client had been sent, and took over; the stalled one was cancelled.
    assert [replica for replica, _ in replicas.started] == [0, 1]
    assert replicas.cancelled == [0] and replicas.running == 0
    assert text_of(out) == ANSWER  # every character once, in order
    deltas = "".join(getattr(event, "delta", "") for event in events)
    assert deltas == ANSWER
    assert (hedging.stall_hedges, hedging.stall_wins, hedging.hedges) == (1, 1, 1)


@pytest.mark.looptime
async def test_a_stall_hedge_that_says_something_else_never_takes_over() -> None:
    loop = asyncio.get_running_loop()
    other = Scenario.from_dict({"name": "other", "task": "x", "turns": [{"text": "zzzz" * 50}]})
    sims = [
        SimEngine({MODEL: scenario()}, STALLING.override(stall_s=3.0), clock=loop.time),
        SimEngine({MODEL: other}, FAST, clock=loop.time),
    ]
    replicas = Replicas(sims)
    hedging = ReplicaHedging(HedgeSettings(delay=5.0, stall=1.0, budget=1.0), 2)
    out = started_builder()
    await collect(hedging, replicas, out)
    assert text_of(out) == ANSWER  # the stalled replica finished its own answer
    assert (hedging.stall_hedges, hedging.stall_wins) == (1, 0)
    assert replicas.running == 0


def test_a_staged_builder_holds_usage_and_warnings_until_it_wins() -> None:
    out = started_builder()
    race = _Race(out)
    first, second = StagedBuilder(race, 0), StagedBuilder(race, 1)
    usage = Usage(input_tokens=3, output_tokens=1)
    second.warn("held")
    second.set_usage(usage)
    first.warn("dropped: this attempt loses")
    assert out.warnings == () and out.usage is None
    events = second.open_text()  # the first output: the second attempt wins
    assert events and out.warnings == ("held",) and out.usage == usage
    with pytest.raises(_Lost):
        first.delta("too late")
    assert out.warnings == ("held",)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="negative"):
        HedgeSettings(delay=-1)
    with pytest.raises(ValueError, match="percentile"):
        HedgeSettings(percentile=1.0)
    with pytest.raises(ValueError, match="budget"):
        HedgeSettings(budget=-0.1)
    with pytest.raises(ValueError, match="stall"):
        HedgeSettings(stall=0)


# -- a real gateway, an unmodified SDK -------------------------------------------------------


async def test_the_gateway_hedges_for_an_sdk_that_cannot() -> None:
    # Half the responses wait 2 s more for their first token; a turn with no output after
    # 0.05 s (every turn: the first token takes 0.2 s at best) also goes to the other replica.
    profile = get_profile("fast").override(spike_probability=0.5, spike_s=2.0)
    hedging = HedgeSettings(delay=0.05, budget=1.0)
    backend = SimBackend("coding", profile, replicas=2, seed=3, hedging=hedging)
    async with (
        GatewayServer(backend, GatewayConfig()) as server,
        AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as sdk,
    ):
        texts = []
        for index in range(8):
            response = await sdk.responses.create(model="hotloop-sim:generic:0", input=f"{index}")
            texts.append(response.output_text)
        active = server.gateway.metrics.active_responses._value.get()
    counters = backend.replica_hedging()
    assert counters is not None
    assert all(texts) and len(texts) == 8
    assert (counters.requests, counters.hedges) == (8, 8)
    # Some first attempts drew a spike and lost to their hedge; both replicas drew once per
    # attempt, and nothing is left running.
    assert 1 <= counters.wins < 8
    assert sum(engine.draws for engine in backend.engine_list) == 16
    assert active == 0 and all(load == 0 for load in backend._models[None].load)


async def test_a_gateway_hedges_across_its_upstream_replicas() -> None:
    """Two upstream URLs serve one model; one takes 30 s to its first token. The turn is
    hedged to the other, answers from it, and the slow upstream stops generating."""
    slow_backend = SimBackend("coding", get_profile("fast").override(ttft_s=30.0))
    async with (
        GatewayServer(slow_backend) as slow,
        GatewayServer(SimBackend("coding", get_profile("fast"))) as fast,
    ):
        upstream = UpstreamConfig(
            urls=(slow.base_url, fast.base_url),
            api="responses",
            models={"m": "hotloop-sim:generic:0"},
            hedging=HedgeSettings(delay=0.1, budget=1.0),
        )
        backend = ResponsesBackend(upstream)
        async with (
            GatewayServer(backend) as gateway,
            AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as sdk,
        ):
            for index in range(4):
                response = await asyncio.wait_for(
                    sdk.responses.create(model="m", input=f"question {index}"), timeout=20
                )
                assert response.output_text
            # The slow upstream got the turns that preferred it first, and stopped each one
            # when the hedge won: nothing is left generating there.
            for _ in range(200):
                if slow.gateway.metrics.active_responses._value.get() == 0:
                    break
                await asyncio.sleep(0.01)
            assert slow.gateway.metrics.active_responses._value.get() == 0
    hedging = backend.hedging
    # No turn had output after 0.1 s (the fast upstream's first token takes 0.2 s), so every
    # turn was hedged; the fast upstream won each, whether it was asked first or second.
    assert hedging is not None and (hedging.requests, hedging.hedges) == (4, 4)
    assert hedging.failovers == 0


def test_upstream_hedging_is_read_from_a_config_table() -> None:
    table = {"urls": ["http://a/v1", "http://b/v1"], "hedge": "auto", "hedge_budget": 0.05}
    settings = UpstreamConfig.from_dict(table).hedging
    assert settings == HedgeSettings(delay=None, budget=0.05)
    two = ["http://a/v1", "http://b/v1"]
    assert UpstreamConfig.from_dict({"urls": two, "hedge": 0.4}).hedging == (
        HedgeSettings(delay=0.4)
    )
    with pytest.raises(UpstreamConfigError, match="two replica URLs"):
        UpstreamConfig.from_dict({"url": "http://a/v1", "hedge": 0.4})
    with pytest.raises(UpstreamConfigError, match="not websocket"):
        UpstreamConfig.from_dict({"urls": two, "api": "responses", "websocket": True, "hedge": 1})
    with pytest.raises(UpstreamConfigError, match="hedge must be"):
        UpstreamConfig.from_dict({"url": "http://a/v1", "hedge": "soon"})
    with pytest.raises(UpstreamConfigError, match="needs hedge"):
        UpstreamConfig.from_dict({"url": "http://a/v1", "hedge_budget": 0.1})
    stalls = UpstreamConfig.from_dict({"urls": two, "hedge": "auto", "hedge_stall": 0.3})
    assert stalls.hedging == HedgeSettings(stall=0.3)
    with pytest.raises(UpstreamConfigError, match="hedge_stall must be"):
        UpstreamConfig.from_dict({"urls": two, "hedge": "auto", "hedge_stall": 0})


def test_a_staged_builder_reads_the_turns_state_and_claims_without_output() -> None:
    out = started_builder()
    race = _Race(out)
    first, second = StagedBuilder(race, 0), StagedBuilder(race, 1)
    assert first.response is out.response and first.usage is None
    assert not first.item_open and first.output == ()
    first.set_incomplete("max_output_tokens")  # held until it wins
    assert out.incomplete_reason is None
    first.claim()  # an attempt that ended with no output at all answered the turn
    assert race.winner == 0 and out.incomplete_reason == "max_output_tokens"
    first.open_text()
    assert first.item_open and not second.item_open
    with pytest.raises(_Lost):
        second.claim()


async def test_an_attempt_with_no_output_answers_the_turn() -> None:
    hedging = ReplicaHedging(HedgeSettings(delay=5.0, budget=1.0), 2)

    async def silent(index: int, out: ResponseBuilder) -> Generation:
        out.set_usage(Usage(input_tokens=1))
        return
        yield ()  # an async generator that yields nothing

    out = started_builder()
    assert [events async for events in hedging.generate(silent, out)] == []
    assert out.usage == Usage(input_tokens=1) and hedging.hedges == 0


@pytest.mark.looptime
async def test_a_refused_hedge_leaves_the_first_attempt_to_answer() -> None:
    """A hedge that fails in a way another replica would repeat (a 400) is not failed over;
    the first attempt, still running, answers."""
    sims = engines(FAST.override(ttft_s=1.0))

    async def attempt(index: int, out: ResponseBuilder) -> Generation:
        if index == 1:
            raise APIError("bad request", status=400, code="invalid_request")
        async for events in sims[0].generate(generation_request(), out):
            yield events

    hedging = ReplicaHedging(HedgeSettings(delay=0.5, budget=1.0), 2)
    out = started_builder()
    async for _ in hedging.generate(attempt, out):
        pass
    assert text_of(out) == ANSWER
    assert (hedging.hedges, hedging.wins, hedging.failovers) == (1, 0, 0)


@pytest.mark.looptime
async def test_a_stall_over_budget_is_waited_out() -> None:
    replicas = Replicas(engines(STALLING.override(stall_s=3.0), FAST))
    hedging = ReplicaHedging(HedgeSettings(delay=5.0, stall=1.0, budget=0.0), 2)
    out = started_builder()
    _, _ = await collect(hedging, replicas, out)
    assert [replica for replica, _ in replicas.started] == [0]
    assert text_of(out) == ANSWER and hedging.stall_hedges == 0


def test_the_gateway_options_make_the_settings() -> None:
    from hotloop.cli import _hedging

    def namespace(**changes: object) -> argparse.Namespace:
        fields: dict[str, object] = {
            "hedge": "0.5",
            "hedge_budget": 0.2,
            "hedge_stall": None,
            "config": None,
            "upstream": [],
            "replicas": 2,
        }
        fields.update(changes)
        return argparse.Namespace(**fields)

    assert _hedging(namespace(hedge=None)) is None
    assert _hedging(namespace()) == HedgeSettings(delay=0.5, budget=0.2)
    assert _hedging(namespace(hedge="auto", hedge_stall=0.3)) == HedgeSettings(
        budget=0.2, stall=0.3
    )
    with pytest.raises(HotloopError, match="--config"):
        _hedging(namespace(config="upstreams.toml"))
    with pytest.raises(HotloopError, match="--hedge-stall"):
        _hedging(namespace(hedge_stall=0.0))
