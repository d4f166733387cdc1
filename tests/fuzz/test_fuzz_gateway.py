"""Fast fuzzing of the gateway and the client-side decoders, inside ``make test``.

The same strategies and oracle as the long run (``make fuzz``), with a few hundred examples:
WebSocket frame groups, HTTP bodies and decoder streams. The gateway runs on the real sim
engine in an event loop of its own thread, so that each Hypothesis example is one call and a
failing example shrinks. After each test, the gauges must be back at their baseline and a
bystander conversation open during the test must complete and continue a turn.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.fuzzing import (
    DOCUMENTED_CODES,
    REPLY_TIMEOUT,
    Frame,
    Fuzzer,
    Outcomes,
    check_error_body,
    http_inputs,
    live_gateway,
    stream_inputs,
    ws_groups,
)
from support import LoopThread

T = TypeVar("T")

# Hypothesis warns when the global ``random`` state changes while it draws an input, taking it
# for a strategy that uses ``random``. None of these strategies does (nor does hotloop: its
# jitter has generators of its own), but the live gateway runs in another thread, where
# uvicorn's and websockets' keepalive pings draw from the global ``random`` whenever they fire.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

FUZZ = settings(
    deadline=None,
    database=None,  # nothing written to the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class LiveGateway:
    """A fuzzer and its gateway, served by an event loop in a thread of their own."""

    def __init__(self) -> None:
        self.thread = LoopThread()
        self._context = live_gateway()
        self.fuzzer: Fuzzer = self.call(self._context.__aenter__())

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.thread.call(coroutine, timeout=4 * REPLY_TIMEOUT)

    def close(self) -> None:
        self.call(self._context.__aexit__(None, None, None))
        self.thread.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveGateway]:
    gateway = LiveGateway()
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def fuzzer(live: LiveGateway) -> Iterator[Fuzzer]:
    """The fuzzer, with a batch around the test: the bystander and gauge checks after it."""
    fuzzer = live.fuzzer
    live.call(fuzzer.begin_batch())
    yield fuzzer
    live.call(fuzzer.end_batch())
    assert fuzzer.out.failed == 0, fuzzer.out.summary()


def assert_clean(fuzzer: Fuzzer, before: int) -> None:
    assert fuzzer.out.failed == before, fuzzer.out.summary()


def test_websocket_frames(live: LiveGateway, fuzzer: Fuzzer) -> None:
    sockets = [live.call(fuzzer.ws_socket())]

    @settings(FUZZ, max_examples=120)
    @given(group=ws_groups)
    def check(group: list[Frame]) -> None:
        before = fuzzer.out.failed
        sockets[0] = live.call(fuzzer.ws_group(sockets[0], group))
        assert_clean(fuzzer, before)

    try:
        check()
    finally:
        live.call(sockets[0].close())
    assert fuzzer.out.inputs["ws"] >= 120


def test_http_bodies(live: LiveGateway, fuzzer: Fuzzer) -> None:
    @settings(FUZZ, max_examples=150)
    @given(item=http_inputs())
    def check(item: Any) -> None:
        before = fuzzer.out.failed
        live.call(fuzzer.http_input(item))
        assert_clean(fuzzer, before)

    check()
    assert fuzzer.out.inputs["http"] >= 150


def test_decoders(live: LiveGateway, fuzzer: Fuzzer) -> None:
    @settings(FUZZ, max_examples=250)
    @given(item=stream_inputs())
    def check(item: Any) -> None:
        before = fuzzer.out.failed
        fuzzer.decoder_input(item)
        assert_clean(fuzzer, before)

    check()
    # The recorded streams decode to their terminal events when cut anywhere.
    for kind in ("responses", "chat"):
        assert fuzzer.streams[kind]
        for base in range(len(fuzzer.streams[kind])):
            assert fuzzer.decode_stream(kind, [fuzzer.streams[kind][base]], "recorded") in (
                "response.completed",
                "response.incomplete",
            )


# -- the oracle itself can fail --------------------------------------------------------------


def test_documented_codes_come_from_the_docs() -> None:
    assert {"invalid_json", "invalid_type", "invalid_value", "model_not_found"} <= DOCUMENTED_CODES
    assert "server_error" in DOCUMENTED_CODES  # documented, yet a crash for the oracle
    assert "invalid_request_error" not in DOCUMENTED_CODES  # a type, not a code


@pytest.mark.parametrize(
    ("error", "status", "failure"),
    [
        ({"message": "x", "type": "t", "param": None, "code": None}, 400, "undocumented"),
        ({"message": "x", "type": "t", "param": None, "code": "made_up"}, 400, "undocumented"),
        ({"message": "x", "type": "t", "param": None, "code": "server_error"}, 500, "crash"),
        ({"message": "x", "type": "t", "code": "invalid_json"}, 400, "crash"),
        (
            {
                "message": "'NoneType' object has no attribute 'get'",
                "type": "t",
                "param": None,
                "code": "invalid_json",
            },
            400,
            "crash",
        ),
        ({"message": "fine", "type": "t", "param": None, "code": "invalid_json"}, 400, None),
        (
            {
                "message": "slow down",
                "type": "rate_limit_error",
                "param": None,
                "code": "websocket_queue_full",
                "headers": {"retry-after": "2"},
            },
            429,
            None,
        ),
        (
            {
                "message": "slow down",
                "type": "t",
                "param": None,
                "code": "websocket_queue_full",
                "headers": {"x-other": "1"},
            },
            429,
            "crash",
        ),
    ],
)
def test_the_oracle_flags_bad_errors(
    error: dict[str, Any], status: int, failure: str | None
) -> None:
    out = Outcomes()
    check_error_body(error, out, "test", status=status)
    assert out.crashes == (failure == "crash")
    assert sum(out.undocumented.values()) == (failure == "undocumented")
