"""``response.cancel`` in the WebSocket server session, with no socket and no event loop.

A cancel names a lane: the create running there gets one ``Cancel`` action; queued creates are
not touched; a lane with nothing running gets no answer (the client raced the end of its
response); a malformed ``stream_id`` is refused as for a create.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotloop.protocol.server_session import (
    Cancel,
    Job,
    Queued,
    Send,
    ServerSession,
    SessionConfig,
    SessionState,
    Start,
)

CONFIG = SessionConfig(max_lanes=3, max_active_responses=2, idle_timeout=10.0)


def create(stream_id: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "response.create", "model": "m", "input": "hi"}
    if stream_id is not None:
        frame["stream_id"] = stream_id
    return json.dumps(frame)


def cancel(stream_id: Any = None, *, named: bool = True) -> str:
    frame: dict[str, Any] = {"type": "response.cancel"}
    if named and stream_id is not None:
        frame["stream_id"] = stream_id
    return json.dumps(frame)


def start(session: ServerSession, stream_id: str | None = None) -> Job:
    (action,) = session.receive(create(stream_id), 0.0)
    assert isinstance(action, Start), action
    return action.job


def test_a_cancel_stops_the_create_running_on_its_lane_once() -> None:
    session = ServerSession(CONFIG, 0.0)
    job = start(session, "a")
    other = start(session, "b")
    assert session.receive(cancel("a"), 1.0) == (Cancel(job),)
    assert session.cancelled(job) and not session.cancelled(other)
    assert session.last_active == 1.0
    # A second cancel of the same response decides nothing more.
    assert session.receive(cancel("a"), 2.0) == ()
    # The driver stops it and reports it ended, as for any create; the lane serves again.
    assert session.finish(job, 3.0) == ()
    assert session.running("a") is None and session.busy == 1
    again = start(session, "a")
    assert not session.cancelled(again)
    assert session.receive(cancel("a"), 4.0) == (Cancel(again),)
    assert session.running("b") is other  # the other lane was never touched


def test_a_cancel_without_stream_id_is_for_the_default_lane() -> None:
    session = ServerSession(CONFIG, 0.0)
    named = start(session, "a")
    default = start(session)
    assert session.receive(cancel(), 0.0) == (Cancel(default),)
    assert not session.cancelled(named)


def test_a_cancel_for_a_lane_with_nothing_running_is_not_answered() -> None:
    session = ServerSession(CONFIG, 0.0)
    # A lane never used: no lane is made for it (it would count against max_lanes).
    assert session.receive(cancel("never-used"), 0.0) == ()
    assert session.named_lanes == 0
    # A lane whose response just ended: the cancel raced its terminal event, no error.
    job = start(session, "a")
    session.finish(job, 1.0)
    assert session.receive(cancel("a"), 1.0) == ()
    assert session.receive(cancel(), 1.0) == ()
    assert session.busy == 0 and session.state is SessionState.OPEN


def test_queued_creates_on_the_lane_are_not_touched() -> None:
    session = ServerSession(CONFIG, 0.0)
    running = start(session, "a")
    (queued,) = session.receive(create("a"), 0.0)
    assert isinstance(queued, Queued)
    assert session.receive(cancel("a"), 0.0) == (Cancel(running),)
    assert session.depth("a") == 2 and session.queued == 1  # still waiting, still counted
    # Once the cancelled create ends, the queued one starts as usual, not cancelled.
    (started,) = session.finish(running, 1.0)
    assert started == Start(queued.job) and not session.cancelled(queued.job)


def test_a_create_waiting_for_a_slot_is_not_cancelled() -> None:
    session = ServerSession(CONFIG, 0.0)
    first = start(session, "a")
    start(session, "b")
    (waiting,) = session.receive(create("c"), 0.0)  # both slots are taken
    assert isinstance(waiting, Queued)
    assert session.receive(cancel("c"), 0.0) == ()
    (started,) = session.finish(first, 1.0)
    assert started.job is waiting.job and not session.cancelled(waiting.job)


@pytest.mark.parametrize("stream_id", ["", "no spaces", "x" * 257, 7, ["a"], True])
def test_a_malformed_stream_id_is_refused_as_for_a_create(stream_id: Any) -> None:
    session = ServerSession(CONFIG, 0.0)
    job = start(session)
    (action,) = session.receive(json.dumps({"type": "response.cancel", "stream_id": stream_id}), 0)
    assert isinstance(action, Send) and action.error is not None
    frame = json.loads(action.data)
    assert frame["type"] == "error" and frame["status"] == 400
    assert frame["error"]["code"] == "invalid_stream_id"
    assert frame["error"]["param"] == "stream_id"
    assert "stream_id" not in frame  # never echoed
    assert not session.cancelled(job) and session.named_lanes == 0


def test_a_closing_session_ignores_cancels() -> None:
    session = ServerSession(CONFIG, 0.0)
    job = start(session, "a")
    assert session.timer(0.0) == ()  # busy: not idle
    session.receive(create("b"), CONFIG.connection_lifetime)  # past the lifetime: closes
    assert session.state is SessionState.CLOSING
    assert session.receive(cancel("a"), CONFIG.connection_lifetime) == ()
    assert not session.cancelled(job)


def test_the_unknown_type_error_names_cancel() -> None:
    session = ServerSession(CONFIG, 0.0)
    (action,) = session.receive(json.dumps({"type": "response.pause"}), 0.0)
    assert isinstance(action, Send) and action.error is not None
    assert action.error.code == "unknown_event_type"
    assert "'response.cancel'" in action.error.message
