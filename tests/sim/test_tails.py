"""Tail profiles of the simulated model: lognormal time to first token, mid-stream stalls and
failures (429, 500 before output, dropped streams), drawn once per response and deterministic
for a seed; replicas that draw independently; several models with their own profiles.

Everything timed runs on a fake clock; the failure kinds are checked over a real gateway on a
loopback port, as a client sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import Counter
from itertools import pairwise
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from hotloop.backends.sim import SimBackend
from hotloop.cli import _parser
from hotloop.errors import APIError, ScenarioError
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import GenerationRequest
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import DRAW_UNIFORMS, PROFILES, LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario
from support import FakeClock, generation_request, started_builder, ten_turn_scenario

MODEL = "ten"
#: A long answer (50 tokens of 4 characters) so stalls and drops have room mid-stream.
ANSWER = "abcd" * 50


def answer_scenario() -> Scenario:
    return Scenario.from_dict({"name": "answer", "task": "Say it.", "turns": [{"text": ANSWER}]})


def engine(profile: LatencyProfile, clock: FakeClock, **kwargs: Any) -> SimEngine:
    return SimEngine({MODEL: answer_scenario()}, profile, clock=clock, sleep=clock.sleep, **kwargs)


def request(text: str = "go", model: str = MODEL) -> GenerationRequest:
    return generation_request(text, model)


def builder() -> ResponseBuilder:
    return started_builder(MODEL)


async def run(sim: SimEngine, clock: FakeClock, req: GenerationRequest) -> tuple[list[float], str]:
    """The fake times of the response's deltas, and how it ended (``completed`` or a code)."""
    times: list[float] = []
    try:
        async for events in sim.generate(req, builder()):
            times.extend(clock.now for event in events if event.type.endswith(".delta"))
    except APIError as exc:
        return times, str(exc.code)
    return times, "completed"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the constant profiles -------------------------------------------------------------------


def test_constant_profiles_are_unchanged() -> None:
    """The figures of ``fast``, ``frontier`` and ``zero`` stay exactly what they were, with no
    tails: benchmarks keep their numbers."""
    expected = {
        "fast": (0.200, 1000.0, 30_000.0, 0.020, 0.002),
        "frontier": (0.800, 65.0, 5_000.0, 0.020, 0.002),
        "zero": (0.0, 0.0, 0.0, 0.0, 0.0),
    }
    for name, figures in expected.items():
        profile = PROFILES[name]
        assert (
            profile.ttft_s,
            profile.decode_tokens_per_s,
            profile.prefill_tokens_per_s,
            profile.service_overhead_s,
            profile.service_s_per_1k_tokens,
        ) == figures
        assert not profile.has_tails


async def test_a_constant_profile_never_draws_and_times_exactly() -> None:
    clock = FakeClock()
    profile = get_profile("fast")
    sim = engine(profile, clock, seed=5)
    req = request()
    times, outcome = await run(sim, clock, req)
    assert outcome == "completed"
    assert sim.draws == 0
    first = profile.service_time(req.processed_tokens) + profile.first_token_time(
        req.context.tokens
    )
    assert times[0] - 1000.0 == pytest.approx(first)
    assert times[-1] - times[0] == pytest.approx((len(times) - 1) / 1000.0)


# -- distributions ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fast-tail", "frontier-tail", "fast-jitter"])
def test_ttft_is_lognormal_with_the_configured_median_and_p99(name: str) -> None:
    profile = PROFILES[name].override(spike_probability=0)
    rng = random.Random(1)
    draws = [profile.draw(rng).ttft_s for _ in range(20_000)]
    median = quantile(draws, 0.5)
    p99 = quantile(draws, 0.99)
    assert median == pytest.approx(profile.ttft_s, rel=0.04)
    assert p99 / median == pytest.approx(profile.ttft_p99_ratio, rel=0.10)


def test_spikes_come_at_their_rate_and_follow_their_lognormal() -> None:
    profile = PROFILES["fast-tail"]
    rng = random.Random(5)
    draws = [profile.draw(rng).ttft_s for _ in range(40_000)]
    # The body's p99 is 3 x 0.2 s: a first token later than 1.5 s is a spike.
    spikes = [draw for draw in draws if draw > 1.5]
    assert len(spikes) / len(draws) == pytest.approx(profile.spike_probability, abs=0.002)
    assert quantile(spikes, 0.5) == pytest.approx(profile.spike_s + profile.ttft_s, rel=0.15)
    only = get_profile("zero").override(spike_probability=1, spike_s=2.0, spike_p99_ratio=3)
    rng = random.Random(6)
    alone = [only.draw(rng).ttft_s for _ in range(20_000)]
    assert quantile(alone, 0.5) == pytest.approx(2.0, rel=0.04)
    assert quantile(alone, 0.99) == pytest.approx(6.0, rel=0.10)


def test_stall_durations_follow_their_lognormal() -> None:
    profile = get_profile("zero").override(stall_probability=1, stall_s=2.0, stall_p99_ratio=5)
    rng = random.Random(2)
    stalls = [profile.draw(rng).stall_s for _ in range(20_000)]
    assert quantile(stalls, 0.5) == pytest.approx(2.0, rel=0.04)
    assert quantile(stalls, 0.99) == pytest.approx(10.0, rel=0.10)


def test_stall_and_failure_rates_match_flaky() -> None:
    profile = PROFILES["flaky"]
    rng = random.Random(3)
    draws = [profile.draw(rng) for _ in range(40_000)]
    failures = Counter(draw.failure for draw in draws)
    n = len(draws)
    assert sum(draw.stall_s > 0 for draw in draws) / n == pytest.approx(0.01, abs=0.002)
    assert failures["rate_limit"] / n == pytest.approx(0.02, abs=0.003)
    assert failures["server_error"] / n == pytest.approx(0.01, abs=0.002)
    assert failures["drop"] / n == pytest.approx(0.01, abs=0.002)


def test_draws_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    profile = PROFILES["flaky"]
    clock = FakeClock()

    def sequence(seed: int, stream: str = "r#0") -> list[Any]:
        sim = engine(profile, clock, seed=seed, stream=stream)
        return [sim.draw() for _ in range(50)]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)
    assert sequence(7) != sequence(7, "r#1")


def test_a_draw_consumes_a_fixed_count_of_numbers() -> None:
    """Draw k depends on the seed and k only: whatever earlier draws drew (stalls, failures),
    each took exactly ``DRAW_UNIFORMS`` numbers."""
    profile = get_profile("zero").override(
        ttft_p99_ratio=3,
        spike_probability=0.5,
        spike_s=1,
        stall_probability=0.5,
        stall_s=1,
        drop_probability=0.5,
    )
    rng = random.Random(9)
    for _ in range(100):
        profile.draw(rng)
    replay = random.Random(9)
    for _ in range(100 * DRAW_UNIFORMS):
        replay.random()
    assert rng.random() == replay.random()


def test_tail_parameters_are_validated() -> None:
    base = get_profile("fast")
    with pytest.raises(ScenarioError, match="between 0 and 1"):
        base.override(stall_probability=1.5)
    with pytest.raises(ScenarioError, match="at least 1"):
        base.override(ttft_p99_ratio=0.5)
    with pytest.raises(ScenarioError, match="must not exceed 1"):
        base.override(rate_limit_probability=0.6, drop_probability=0.6)


# -- the engine: draws in time ---------------------------------------------------------------


async def test_a_stall_adds_its_duration_between_two_tokens() -> None:
    clock = FakeClock()
    profile = get_profile("fast").override(stall_probability=1, stall_s=0.5)
    times, outcome = await run(engine(profile, clock), clock, request())
    assert outcome == "completed"
    gaps = [later - earlier for earlier, later in pairwise(times)]
    stalled = [gap for gap in gaps if gap > 0.1]
    # One gap between two tokens (so after the first: mid-stream) is the stall plus a token.
    assert stalled == [pytest.approx(0.5 + 0.001)]


async def test_the_engine_uses_its_drawn_ttft() -> None:
    clock = FakeClock()
    profile = get_profile("fast-tail")
    sim = engine(profile, clock, seed=4, stream="x")
    req = request()
    expected = profile.draw(random.Random("4/x")).ttft_s
    times, outcome = await run(sim, clock, req)
    assert outcome == "completed"
    first = profile.service_time(req.processed_tokens) + profile.first_token_time(
        req.context.tokens, expected
    )
    assert times[0] - 1000.0 == pytest.approx(first)


async def test_failure_rates_over_many_requests() -> None:
    clock = FakeClock()
    profile = get_profile("zero").override(
        stall_probability=0.1, stall_s=1.0, rate_limit_probability=0.05, drop_probability=0.05
    )
    sim = engine(profile, clock, seed=11)
    outcomes: Counter[str] = Counter()
    stalls = 0
    for _ in range(2000):
        start = clock.now
        times, outcome = await run(sim, clock, request())
        outcomes[outcome] += 1
        stalls += outcome == "completed" and times[-1] - start > 0.5
        if outcome == "stream_dropped":
            assert 1 <= len(times) <= len(ANSWER) // 4
        if outcome == "rate_limit_exceeded":
            assert times == []
    assert outcomes["rate_limit_exceeded"] / 2000 == pytest.approx(0.05, abs=0.015)
    assert outcomes["stream_dropped"] / 2000 == pytest.approx(0.05, abs=0.015)
    assert stalls / outcomes["completed"] == pytest.approx(0.1, abs=0.025)


async def test_a_failed_response_leaves_the_prefix_cache_alone() -> None:
    clock = FakeClock()
    sim = engine(get_profile("zero").override(drop_probability=1), clock)
    _, outcome = await run(sim, clock, request())
    assert outcome == "stream_dropped"
    assert len(sim.prefix_cache) == 0


# -- replicas and models ---------------------------------------------------------------------


def test_two_replicas_draw_independently_and_replay_for_a_seed() -> None:
    def draws(seed: int) -> list[list[Any]]:
        backend = SimBackend(ten_turn_scenario(), "flaky", replicas=2, seed=seed)
        return [[sim.draw() for _ in range(20)] for sim in backend.engines()]

    first, second = draws(1)
    assert first != second
    assert [draw.ttft_s for draw in first] != [draw.ttft_s for draw in second]
    assert draws(1) == [first, second]
    assert draws(2) != [first, second]


async def test_a_hedge_lands_on_another_replica_and_a_sequence_keeps_to_one() -> None:
    clock = FakeClock()
    profile = get_profile("fast").override(ttft_p99_ratio=2)
    backend = SimBackend(answer_scenario(), profile, replicas=2, clock=clock, sleep=clock.sleep)
    session = backend.open_session()
    req = request(model="hotloop-sim")

    async def one() -> None:
        async for _ in session.generate(req, builder()):
            await asyncio.sleep(0)

    # Two copies of one request at once: the second goes to the idle replica.
    await asyncio.gather(one(), one())
    assert sorted(sim.draws for sim in backend.engines()) == [1, 1]
    # One after the other: the conversation's preferred replica, every time.
    for _ in range(4):
        await one()
    assert sorted(sim.draws for sim in backend.engines()) == [1, 5]


async def test_replica_slots_queue_responses() -> None:
    clock = FakeClock()
    backend = SimBackend(answer_scenario(), "fast", replica_slots=1, clock=clock, sleep=clock.sleep)
    (sim,) = backend.engines()
    session = backend.open_session()
    ends: list[float] = []

    async def one() -> None:
        async for _ in session.generate(request(model="hotloop-sim"), builder()):
            pass
        ends.append(clock.now)

    await asyncio.gather(one(), one())
    assert sim.has_free_slot()
    # The second waited for the first: it ended a whole response later.
    assert ends[1] - 1000.0 > 1.9 * (ends[0] - 1000.0)


async def test_models_have_their_own_profiles() -> None:
    backend = SimBackend(
        ten_turn_scenario(), "zero", models={"small": "fast", "large": "frontier-tail"}
    )
    listed = backend.models()
    assert "hotloop-sim" in listed
    assert "hotloop-sim@large" in listed
    assert "hotloop-sim@large:coding" in listed
    assert "hotloop-sim@small:generic" in listed
    assert backend.accepts_model("hotloop-sim@small:generic:5")
    assert not backend.accepts_model("hotloop-sim@medium")
    assert not backend.accepts_model("hotloop-sim@large:nope")
    assert backend.engines("large")[0].profile is PROFILES["frontier-tail"]
    assert backend.engines("small")[0].profile is PROFILES["fast"]
    with pytest.raises(ScenarioError, match="model name"):
        SimBackend("coding", "zero", models={"a:b": "fast"})


def test_gateway_flags_configure_models_replicas_and_seed() -> None:
    args = _parser().parse_args(
        [
            "gateway",
            "--model-profile",
            "small=fast",
            "--model-profile",
            "large=frontier-tail",
            "--replicas",
            "3",
            "--seed",
            "42",
        ]
    )
    assert args.model_profile == [("small", "fast"), ("large", "frontier-tail")]
    assert (args.replicas, args.seed, args.replica_slots) == (3, 42, None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["gateway", "--model-profile", "small=nope"])


# -- the failure kinds over a real gateway ---------------------------------------------------


async def serve(profile: LatencyProfile) -> GatewayServer:
    return GatewayServer(SimBackend(answer_scenario(), profile), GatewayConfig())


async def test_a_rate_limit_is_a_429_with_retry_after() -> None:
    profile = get_profile("zero").override(rate_limit_probability=1, retry_after_s=2)
    async with await serve(profile) as server, httpx.AsyncClient() as client:
        reply = await client.post(
            f"{server.base_url}/responses", json={"model": "hotloop-sim", "input": "hi"}
        )
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "2"
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert reply.json()["error"]["type"] == "rate_limit_error"


async def test_a_server_error_fails_before_any_output() -> None:
    profile = get_profile("zero").override(server_error_probability=1)
    async with await serve(profile) as server, httpx.AsyncClient() as client:
        reply = await client.post(
            f"{server.base_url}/responses", json={"model": "hotloop-sim", "input": "hi"}
        )
        assert reply.status_code == 500
        assert reply.json()["error"]["code"] == "server_error"
        streamed = await client.post(
            f"{server.base_url}/responses",
            json={"model": "hotloop-sim", "input": "hi", "stream": True},
        )
    kinds = [
        json.loads(line[len("data: ") :])["type"]
        for line in streamed.text.splitlines()
        if line.startswith("data: ")
    ]
    assert kinds == ["response.created", "response.in_progress", "response.failed"]


async def test_a_dropped_stream_fails_mid_stream_and_the_socket_serves_on() -> None:
    profile = get_profile("zero").override(drop_probability=1)
    async with await serve(profile) as server, connect(server.websocket_url) as ws:
        for _ in range(2):  # the socket keeps serving after a dropped stream
            await ws.send(
                json.dumps({"type": "response.create", "model": "hotloop-sim", "input": "hi"})
            )
            events = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
            while events[-1]["type"] not in ("response.completed", "response.failed", "error"):
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            deltas = [event for event in events if event["type"] == "response.output_text.delta"]
            assert 1 <= len(deltas) <= len(ANSWER) // 4
            failed = events[-1]
            assert failed["type"] == "response.failed"
            assert failed["response"]["error"]["code"] == "stream_dropped"


def test_bench_refuses_a_tail_profile() -> None:
    """The benchmark compares runs with a lower bound of constant latencies."""
    from hotloop.bench.command import _profile
    from hotloop.errors import HotloopError

    with pytest.raises(HotloopError, match="constant profile"):
        _profile(argparse.Namespace(profile="fast-tail", latency=[]))
    with pytest.raises(HotloopError, match="constant profile"):
        _profile(argparse.Namespace(profile="fast", latency=["drop_probability=0.1"]))
    assert _profile(argparse.Namespace(profile="fast", latency=[])) is PROFILES["fast"]
