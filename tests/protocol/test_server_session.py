"""The WebSocket server session, with no socket and no event loop.

Example tests pin each rule (frame types, limits, lifetime, idleness, the eviction rule); a
Hypothesis state machine then plays random interleavings of creates on lanes, completions,
failures, garbage frames, clock advances and disconnects against the session, with the driver's
part played by the test, and checks the invariants after every step.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from hotloop.errors import APIError
from hotloop.protocol.cache import CachedResponse, ResponseCache
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.server_session import (
    CLOSE_GOING_AWAY,
    FRAME_RULES,
    NO_PARENT,
    Action,
    CacheHit,
    Cancel,
    Close,
    Job,
    Queued,
    Send,
    ServerSession,
    SessionConfig,
    SessionState,
    Start,
    StoreLookup,
    evicted_by_failure,
    lookup_parent,
)
from hotloop.wire.items import Message

CONFIG = SessionConfig(
    max_message_bytes=2048,
    max_lanes=3,
    max_active_responses=2,
    idle_timeout=10.0,
    connection_lifetime=100.0,
    cache_max_entries=4,
    cache_max_bytes=10**6,
    max_queued_creates=4,
)

#: Every error code the session itself sends.
SESSION_ERRORS = frozenset(
    {
        "message_too_large",
        "invalid_json",
        "missing_required_parameter",
        "unknown_event_type",
        "invalid_stream_id",
        "websocket_stream_limit_reached",
        "websocket_connection_limit_reached",
        "websocket_queue_full",
    }
)


def create(stream_id: str | None = None, previous: str | None = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "response.create", "model": "m", "input": "hi", **extra}
    if stream_id is not None:
        frame["stream_id"] = stream_id
    if previous is not None:
        frame["previous_response_id"] = previous
    return json.dumps(frame, ensure_ascii=False)


def conversation(text: str = "x") -> Conversation:
    return Conversation.start([Message(role="user", content=text)])


def sent(action: Action) -> dict[str, Any]:
    """The frame a ``Send`` action carries, decoded."""
    assert isinstance(action, Send), action
    frame: dict[str, Any] = json.loads(action.data)
    return frame


def assert_error(
    actions: tuple[Action, ...],
    code: str,
    *,
    status: int = 400,
    stream_id: str | None = None,
    type: str = "invalid_request_error",
) -> None:
    """One ``error`` envelope with ``code``; ``stream_id`` only when the lane is valid."""
    assert len(actions) == 1, actions
    frame = sent(actions[0])
    assert frame["type"] == "error" and frame["status"] == status
    assert frame["error"]["code"] == code
    assert frame["error"]["type"] == type
    assert isinstance(actions[0], Send) and actions[0].error is not None
    assert actions[0].error.code == code
    if stream_id is None:
        assert "stream_id" not in frame
    else:
        assert frame["stream_id"] == stream_id


def started(actions: tuple[Action, ...]) -> list[Job]:
    assert all(isinstance(a, Start) for a in actions), actions
    return [a.job for a in actions if isinstance(a, Start)]


def queued(actions: tuple[Action, ...]) -> Job:
    """The create the session queued."""
    assert len(actions) == 1 and isinstance(actions[0], Queued), actions
    return actions[0].job


# -- frames -------------------------------------------------------------------------------


def test_the_frame_table_names_create_steer_and_a_missing_type() -> None:
    assert set(FRAME_RULES) == {"response.create", "response.cancel", "response.steer", None}


@pytest.mark.parametrize(
    ("data", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        (b"\xff\xfe", "invalid_json", None),
        ('"\\ud800"', "invalid_json", None),
        ("{}", "missing_required_parameter", "type"),
        ('{"type": null}', "missing_required_parameter", "type"),
        ('{"type": "response.pause"}', "unknown_event_type", "type"),
        ('{"type": 7}', "unknown_event_type", "type"),
        ('{"type": ["response.create"]}', "unknown_event_type", "type"),
        ('{"type": {"a": 1}}', "unknown_event_type", "type"),
    ],
)
def test_garbage_frames_get_connection_level_errors(
    data: str | bytes, code: str, param: str | None
) -> None:
    session = ServerSession(CONFIG, 0.0)
    actions = session.receive(data, 1.0)
    assert_error(actions, code)
    assert sent(actions[0])["error"]["param"] == param
    assert session.state is SessionState.OPEN and session.busy == 0


def test_frames_over_the_limit_count_bytes_not_characters() -> None:
    session = ServerSession(CONFIG, 0.0)
    assert_error(session.receive("x" * 2049, 0.0), "message_too_large", status=413)
    assert_error(session.receive(b"x" * 2049, 0.0), "message_too_large", status=413)
    # 700 three-byte characters: fewer characters than the limit, more bytes.
    wide = create(input="€" * 700)
    assert len(wide) < 2048 < len(wide.encode())
    assert_error(session.receive(wide, 0.0), "message_too_large", status=413)
    assert started(session.receive(create(input="y" * 1900), 0.0))


def test_steer_is_refused_echoing_what_was_sent() -> None:
    session = ServerSession(CONFIG, 0.0)
    steer = {"type": "response.steer", "previous_response_id": "resp_1", "input": "a cat"}
    (action,) = session.receive(json.dumps(steer), 0.0)
    assert isinstance(action, Send) and action.error is None
    frame = sent(action)
    assert frame["type"] == "response.steer.failed"
    assert frame["error"]["code"] == "steering_not_supported"
    assert frame["steer"] == {"previous_response_id": "resp_1", "input": "a cat"}


@pytest.mark.parametrize("stream_id", ["", "no spaces", "x" * 257, 7, ["a"], True])
def test_invalid_stream_ids_are_refused_without_echo(stream_id: Any) -> None:
    session = ServerSession(CONFIG, 0.0)
    frame = {"type": "response.create", "model": "m", "input": "x", "stream_id": stream_id}
    assert_error(session.receive(json.dumps(frame), 0.0), "invalid_stream_id")
    assert session.named_lanes == 0


# -- lanes --------------------------------------------------------------------------------


def test_a_lane_runs_its_creates_one_at_a_time_in_order() -> None:
    session = ServerSession(CONFIG, 0.0)
    (first,) = started(session.receive(create("a"), 0.0, received_ns=11))
    assert first.stream_id == "a" and first.received_ns == 11 and first.number == 0
    assert queued(session.receive(create("a"), 0.0)).number == 1  # behind the first
    assert queued(session.receive(create("a"), 0.0)).number == 2
    assert session.depth("a") == 3 and session.busy == 3
    (second,) = session.finish(first, 1.0)
    assert second.job.number == 1 and session.running("a") is second.job
    (third,) = session.finish(second.job, 2.0)
    assert session.finish(third.job, 3.0) == ()
    assert session.depth("a") == 0 and session.busy == 0 and session.last_active == 3.0
    assert session.depth("never-used") == 0 and session.running("never-used") is None
    with pytest.raises(ValueError, match="not running"):
        session.finish(third.job, 4.0)


def test_lanes_share_the_active_slots_in_the_order_they_became_ready() -> None:
    session = ServerSession(CONFIG, 0.0)  # two slots
    (a,) = started(session.receive(create("a"), 0.0))
    (b,) = started(session.receive(create("b"), 0.0))
    assert queued(session.receive(create("c"), 0.0)).stream_id == "c"  # no slot
    assert queued(session.receive(create(None), 0.0)).stream_id is None
    assert queued(session.receive(create("a"), 0.0)).stream_id == "a"  # behind a's create
    assert session.active == 2
    # a ends: its next create waits behind c and the default lane, which were ready first.
    (c,) = started(session.finish(a, 1.0))
    assert c.stream_id == "c"
    (default,) = started(session.finish(b, 1.0))
    assert default.stream_id is None
    (a2,) = started(session.finish(c, 1.0))
    assert a2.stream_id == "a" and a2.number == 4


def test_named_lanes_are_limited_and_the_default_lane_does_not_count() -> None:
    session = ServerSession(CONFIG, 0.0)
    for lane in ("a", "b", "c"):
        for job in started(session.receive(create(lane), 0.0)):
            session.finish(job, 0.0)
    assert_error(session.receive(create("d"), 0.0), "websocket_stream_limit_reached", stream_id="d")
    assert started(session.receive(create(None), 0.0))  # the default lane
    assert started(session.receive(create("a"), 0.0))  # an existing lane
    assert session.named_lanes == 3


# -- time ---------------------------------------------------------------------------------


def test_a_create_past_the_lifetime_is_refused_and_the_session_closes() -> None:
    session = ServerSession(CONFIG, 5.0)
    (running,) = started(session.receive(create("a"), 6.0))
    queued(session.receive(create("a"), 6.0))
    error, close = session.receive(create("b"), 105.0)
    assert_error((error,), "websocket_connection_limit_reached", stream_id="b")
    assert close == Close(CLOSE_GOING_AWAY, "connection lifetime reached")
    assert session.state is SessionState.CLOSING
    assert session.busy == 1  # the queued create was dropped; the running one only ends
    assert session.receive(create("a"), 105.0) == ()  # frames are ignored from now on
    assert session.finish(running, 106.0) == ()
    assert session.busy == 0 and session.depth("a") == 0


def test_an_idle_session_closes_and_a_busy_one_does_not() -> None:
    session = ServerSession(CONFIG, 0.0)
    assert session.timeout(0.0) == 10.0
    assert session.timeout(4.0) == 6.0
    assert session.timer(9.9) == ()
    (job,) = started(session.receive(create(), 9.0))
    assert session.timeout(30.0) == 10.0  # busy: wake up again later, never close
    assert session.timer(30.0) == ()
    session.finish(job, 31.0)
    assert session.timeout(35.0) == 6.0
    assert session.timer(40.9) == ()
    assert session.timer(41.0) == (Close(CLOSE_GOING_AWAY, "idle timeout"),)
    assert session.state is SessionState.CLOSING
    assert session.timer(60.0) == ()


# -- the cache ----------------------------------------------------------------------------


def test_lookup_goes_to_the_cache_then_the_store() -> None:
    cache = ResponseCache()
    entry = CachedResponse("resp_1", conversation(), "a", stored=False)
    cache.put(entry)
    assert lookup_parent(None, cache) is NO_PARENT
    assert lookup_parent("resp_1", cache) == CacheHit(entry)
    assert lookup_parent("resp_2", cache) == StoreLookup("resp_2")
    # HTTP has no connection cache: any parent comes from the store.
    assert lookup_parent("resp_1", None) == StoreLookup("resp_1")


def test_a_failure_evicts_a_cached_parent_of_its_own_lane_only() -> None:
    entry = CachedResponse("resp_1", conversation(), "a", stored=False)
    assert evicted_by_failure("a", CacheHit(entry)) == "resp_1"
    assert evicted_by_failure("b", CacheHit(entry)) is None
    assert evicted_by_failure(None, CacheHit(entry)) is None
    assert evicted_by_failure("a", StoreLookup("resp_1")) is None
    assert evicted_by_failure("a", NO_PARENT) is None

    session = ServerSession(CONFIG, 0.0)
    (job,) = started(session.receive(create("a"), 0.0))
    session.commit(job, "resp_1", conversation(), stored=False)
    session.finish(job, 0.0)
    (fork,) = started(session.receive(create("b", "resp_1"), 0.0))
    lookup = session.lookup_parent("resp_1")
    assert isinstance(lookup, CacheHit)
    refused = session.fail(fork, lookup, APIError("no such model", status=404, code="nope"))
    assert_error(refused, "nope", status=404, stream_id="b")
    assert "resp_1" in session.cache  # a fork on another lane leaves it
    session.finish(fork, 0.0)
    (retry,) = started(session.receive(create("a", "resp_1"), 0.0))
    assert session.fail(retry, session.lookup_parent("resp_1")) == ()
    assert "resp_1" not in session.cache  # a same-lane continuation evicts it
    session.finish(retry, 0.0)


def test_a_rate_limit_refusal_carries_its_retry_after_in_the_error_headers() -> None:
    session = ServerSession(CONFIG, 0.0)
    (job,) = started(session.receive(create("a"), 0.0))
    limited = APIError("slow down", status=429, code="upstream_rate_limited", retry_after=2.5)
    (action,) = session.fail(job, session.lookup_parent(None), limited)
    error = sent(action)
    assert error["status"] == 429 and error["error"]["headers"] == {"retry-after": "2.5"}
    assert error["error"]["code"] == "upstream_rate_limited"


def test_a_lost_connection_drops_queue_and_cache_and_starts_nothing() -> None:
    session = ServerSession(CONFIG, 0.0)
    (job,) = started(session.receive(create("a"), 0.0))
    session.commit(job, "resp_1", conversation(), stored=True)
    session.receive(create("a"), 0.0)
    session.connection_lost()
    assert session.state is SessionState.CLOSED
    assert len(session.cache) == 0 and session.busy == 1
    session.commit(job, "resp_2", conversation(), stored=True)
    assert len(session.cache) == 0  # a late commit is not cached any more
    assert session.finish(job, 1.0) == ()
    assert session.busy == 0
    assert session.receive(create("a"), 1.0) == ()
    assert session.timer(100.0) == ()


def test_a_full_queue_refuses_creates_until_it_drains() -> None:
    session = ServerSession(CONFIG, 0.0)
    (first,) = started(session.receive(create("a"), 0.0))
    waiting = [queued(session.receive(create("a"), 0.0)) for _ in range(CONFIG.max_queued_creates)]
    assert session.queued == CONFIG.max_queued_creates
    assert_error(
        session.receive(create("a"), 0.0),
        "websocket_queue_full",
        status=429,
        stream_id="a",
        type="rate_limit_error",
    )
    # A create that would start at once is not queued, so it is admitted.
    assert len(started(session.receive(create("b"), 0.0))) == 1
    assert session.busy == 2 + CONFIG.max_queued_creates
    # Once one queued create starts, there is room for one more.
    assert started(session.finish(first, 1.0)) == [waiting[0]]
    queued(session.receive(create("a"), 1.0))
    assert session.queued == CONFIG.max_queued_creates


def test_the_queue_is_bounded_in_bytes_and_dropped_with_the_connection() -> None:
    frame = create("a")
    config = SessionConfig(max_queued_bytes=2 * len(frame))
    session = ServerSession(config, 0.0)
    started(session.receive(frame, 0.0))
    queued(session.receive(frame, 0.0))
    queued(session.receive(frame, 0.0))
    assert session.queued_bytes == 2 * len(frame)
    actions = session.receive(frame, 0.0)
    assert sent(actions[0])["error"]["code"] == "websocket_queue_full"
    session.connection_lost()
    assert session.queued == 0 and session.queued_bytes == 0 and session.depth("a") == 1


# -- the state machine ----------------------------------------------------------------------

LANES = st.sampled_from([None, "a", "b", "c", "d", "e"])
BAD_LANES = st.one_of(
    st.just(""), st.just("has space"), st.just("x" * 257), st.integers(), st.booleans()
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
FRAME_TYPES = ("response.create", "response.cancel", "response.steer")
#: Frames that are never an admissible create, cancel or steer: bytes, text, any JSON value,
#: and objects whose ``type`` is none of those.
GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries(
        {"type": JSON_VALUES.filter(lambda t: t not in FRAME_TYPES)},
        optional={"model": JSON_VALUES, "input": JSON_VALUES, "stream_id": JSON_VALUES},
    ).map(json.dumps),
)


class SessionMachine(RuleBasedStateMachine):
    """Plays the driver: runs what the session starts and reports how each create ends."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.session = ServerSession(CONFIG, self.now)
        #: Creates started and not finished, by job number.
        self.running: dict[int, Job] = {}
        #: Per lane, the creates admitted and not started, oldest first (the expected order).
        self.queued: dict[str | None, deque[Job]] = {}
        #: The latest committed response of each lane, which the cache must keep.
        self.latest: dict[str | None, str] = {}
        self.committed: list[str] = []
        self.responses = 0
        self.expired = False
        #: Lanes with a queued create and none running, in the order they became so.
        self.ready: deque[str | None] = deque()

    # -- helpers ----------------------------------------------------------------------------

    def finish(self, job: Job) -> None:
        """Report ``job`` ended and record what the session starts in its place."""
        if self.session.state is SessionState.OPEN and self.queued.get(job.stream_id):
            self.ready.append(job.stream_id)  # its lane's next create now needs a slot
        starts = self.session.finish(job, self.now)
        for start in started(starts):
            # Lanes get free slots in the order they became ready; a lane runs its own
            # creates in the order they arrived.
            assert start.stream_id == self.ready.popleft()
            expected = self.queued[start.stream_id].popleft()
            assert start is expected, (start, expected)
            assert start.number not in self.running
            self.running[start.number] = start

    def pick(self, data: st.DataObject) -> Job:
        number = data.draw(st.sampled_from(sorted(self.running)))
        return self.running.pop(number)

    # -- frames -----------------------------------------------------------------------------

    @rule(
        lane=LANES,
        parent=st.one_of(st.none(), st.just("resp_unknown"), st.integers(0, 30)),
        data=st.data(),
    )
    def send_create(self, lane: str | None, parent: str | int | None, data: st.DataObject) -> None:
        session = self.session
        if isinstance(parent, int):
            parent = data.draw(st.sampled_from(self.committed)) if self.committed else None
        state = session.state
        # A new named lane when the connection already has all it may have.
        over_limit = (
            lane is not None and lane not in self.queued and session.named_lanes >= CONFIG.max_lanes
        )
        # Whether the create would wait in the queue rather than start at once.
        would_wait = (
            bool(self.queued.get(lane))
            or session.running(lane) is not None
            or bool(self.ready)
            or session.active >= CONFIG.max_active_responses
        )
        actions = session.receive(create(lane, parent), self.now, received_ns=7)
        if state is not SessionState.OPEN:
            assert actions == ()
            return
        assert session.last_active == self.now
        if self.now - session.opened_at >= CONFIG.connection_lifetime:
            # Past the lifetime every create is refused and the session asks to close.
            assert len(actions) == 2
            assert_error(actions[:1], "websocket_connection_limit_reached", stream_id=lane)
            assert actions[1] == Close(CLOSE_GOING_AWAY, "connection lifetime reached")
            assert session.state is SessionState.CLOSING
            for lane_queue in self.queued.values():
                lane_queue.clear()
            self.ready.clear()
            self.expired = True
            return
        if would_wait and sum(map(len, self.queued.values())) >= CONFIG.max_queued_creates:
            assert_error(
                actions,
                "websocket_queue_full",
                status=429,
                stream_id=lane,
                type="rate_limit_error",
            )
            return
        if over_limit:
            assert_error(actions, "websocket_stream_limit_reached", stream_id=lane)
            return
        lane_queue = self.queued.setdefault(lane, deque())
        assert len(actions) == 1
        action = actions[0]
        if isinstance(action, Start):
            job = action.job
            assert not lane_queue and session.running(lane) is job
            self.running[job.number] = job
        else:
            # Queued: behind its lane's running or queued create, or waiting for a slot.
            job = queued(actions)
            if not lane_queue and session.running(lane) is None:
                self.ready.append(lane)  # waiting for a slot, not behind its lane
            lane_queue.append(job)
        assert job.stream_id == lane and job.received_ns == 7

    @rule(lane=BAD_LANES)
    def send_create_on_a_bad_lane(self, lane: Any) -> None:
        frame = {"type": "response.create", "model": "m", "input": "x", "stream_id": lane}
        open_ = self.session.state is SessionState.OPEN
        actions = self.session.receive(json.dumps(frame), self.now)
        if open_:
            assert_error(actions, "invalid_stream_id")
        else:
            assert actions == ()

    @rule(data=GARBAGE)
    def send_garbage(self, data: str | bytes) -> None:
        open_ = self.session.state is SessionState.OPEN
        busy = self.session.busy
        actions = self.session.receive(data, self.now)
        assert self.session.busy == busy
        if not open_:
            assert actions == ()
            return
        assert len(actions) == 1
        action = actions[0]
        assert isinstance(action, Send) and action.error is not None
        assert action.error.code in SESSION_ERRORS
        assert "stream_id" not in sent(action)

    @rule(size=st.integers(CONFIG.max_message_bytes + 1, 3 * CONFIG.max_message_bytes))
    def send_oversized(self, size: int) -> None:
        open_ = self.session.state is SessionState.OPEN
        actions = self.session.receive("€" * (size // 3 + 1), self.now)
        if open_:
            assert_error(actions, "message_too_large", status=413)
        else:
            assert actions == ()

    @rule(lane=LANES)
    def send_cancel(self, lane: str | None) -> None:
        session = self.session
        open_ = session.state is SessionState.OPEN
        busy = session.busy
        job = session.running(lane)
        again = job is not None and session.cancelled(job)
        frame = {"type": "response.cancel"} | ({"stream_id": lane} if lane else {})
        actions = session.receive(json.dumps(frame), self.now)
        assert session.busy == busy  # a cancel admits nothing and drops nothing queued
        if not open_ or job is None or again:
            assert actions == ()  # nothing running (or cancelled already): no answer
            return
        assert actions == (Cancel(job),) and session.cancelled(job)
        # The job stays running until the driver reports it ended (complete, fail, teardown).

    @rule(steer=JSON_VALUES)
    def send_steer(self, steer: Any) -> None:
        open_ = self.session.state is SessionState.OPEN
        frame = json.dumps({"type": "response.steer", "input": steer})
        actions = self.session.receive(frame, self.now)
        if open_:
            assert len(actions) == 1 and sent(actions[0])["type"] == "response.steer.failed"
        else:
            assert actions == ()

    # -- creates ending ---------------------------------------------------------------------

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), stored=st.booleans())
    def complete(self, data: st.DataObject, stored: bool) -> None:
        job = self.pick(data)
        session = self.session
        session.lookup_parent(job.frame.get("previous_response_id"))
        response_id = f"resp_{self.responses}"
        self.responses += 1
        session.commit(job, response_id, conversation(response_id), stored)
        if session.state is not SessionState.CLOSED:
            assert response_id in session.cache
            self.latest[job.stream_id] = response_id
            self.committed.append(response_id)
        else:
            assert response_id not in session.cache  # a commit after the end is dropped
        self.finish(job)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), refused=st.booleans())
    def fail(self, data: st.DataObject, refused: bool) -> None:
        job = self.pick(data)
        session = self.session
        lookup = session.lookup_parent(job.frame.get("previous_response_id"))
        error = APIError("refused", code="model_not_found", status=404) if refused else None
        actions = session.fail(job, lookup, error)
        if refused:
            assert_error(actions, "model_not_found", status=404, stream_id=job.stream_id)
        else:
            assert actions == ()
        if isinstance(lookup, CacheHit):
            parent = lookup.entry
            if parent.lane == job.stream_id:
                # A failed same-lane continuation evicts its parent: a blind retry fails.
                assert parent.response_id not in session.cache
                assert isinstance(session.lookup_parent(parent.response_id), StoreLookup)
                if self.latest.get(parent.lane) == parent.response_id:
                    del self.latest[parent.lane]
            else:
                # A failed fork on another lane leaves it.
                assert parent.response_id in session.cache
        self.finish(job)

    # -- time and the end -------------------------------------------------------------------

    @rule(seconds=st.floats(0, 30, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        timeout = self.session.timeout(self.now)
        assert timeout >= 0
        if not self.session.busy:
            assert timeout == max(0.0, self.session.last_active + CONFIG.idle_timeout - self.now)

    @rule()
    def past_the_lifetime(self) -> None:
        self.now = max(self.now, self.session.opened_at + CONFIG.connection_lifetime)

    @rule()
    def timer(self) -> None:
        session = self.session
        idle = (
            session.state is SessionState.OPEN
            and not session.busy
            and self.now - session.last_active >= CONFIG.idle_timeout
        )
        actions = session.timer(self.now)
        if idle:
            assert actions == (Close(CLOSE_GOING_AWAY, "idle timeout"),)
            assert session.state is SessionState.CLOSING
        else:
            assert actions == ()

    @precondition(lambda self: self.session.state is not SessionState.CLOSED)
    @rule()
    def connection_lost(self) -> None:
        self.session.connection_lost()
        for lane_queue in self.queued.values():
            lane_queue.clear()
        self.ready.clear()
        self.latest.clear()
        assert len(self.session.cache) == 0

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def lanes_and_slots_stay_within_their_limits(self) -> None:
        session = self.session
        assert session.named_lanes <= CONFIG.max_lanes
        assert session.active == len(self.running) <= CONFIG.max_active_responses
        for job in self.running.values():
            assert session.running(job.stream_id) is job

    @invariant()
    def every_admitted_create_is_counted_once(self) -> None:
        session = self.session
        queued = sum(len(q) for q in self.queued.values())
        assert session.busy == len(self.running) + queued
        lanes = set(self.queued) | {job.stream_id for job in self.running.values()}
        assert sum(session.depth(lane) for lane in lanes) == session.busy
        if session.state is not SessionState.OPEN:
            assert queued == 0  # a session that decided to close runs nothing new
        # What the connection holds queued is what the session counts, within its bound.
        assert session.queued == queued <= CONFIG.max_queued_creates
        assert (session.queued_bytes > 0) == (queued > 0)

    @invariant()
    def no_slot_idles_while_a_create_waits(self) -> None:
        if self.session.state is not SessionState.OPEN:
            return
        for lane, lane_queue in self.queued.items():
            if lane_queue:
                assert (self.session.running(lane) is None) == (lane in self.ready)
        if self.ready:
            assert self.session.active == CONFIG.max_active_responses

    @invariant()
    def the_latest_response_of_each_lane_stays_cached(self) -> None:
        for response_id in self.latest.values():
            assert response_id in self.session.cache

    @invariant()
    def the_lifetime_is_final(self) -> None:
        if self.expired:
            assert self.session.state is not SessionState.OPEN

    def teardown(self) -> None:
        # The driver ends what is running (a real one cancels it): every depth returns to 0.
        session = self.session
        while self.running:
            number = min(self.running)
            job = self.running.pop(number)
            self.finish(job)
        assert session.busy == 0
        assert session.active == 0
        for lane in self.queued:
            assert session.depth(lane) == 0


SessionMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_server_session_state_machine = SessionMachine.TestCase
