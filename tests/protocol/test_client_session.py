"""The client session's rules, with no socket and no event loop.

The unit tests pin the rule tables, the classification of failures and the session's small
contracts. Two hypothesis state machines then drive a session the way a driver does — turns
started on lanes, sends, first events, terminal events, error answers, connections that drop
or go away — in random order, and check at every step what must always hold:

* a send continues a response by id only on the connection that produced it, while that
  connection is open, and never after a failure forced the whole history (so after a drop or a
  cache miss the next send is full);
* a turn is sent at most ``MAX_SENDS`` times: no failure makes it loop forever;
* every failure gets the action an independent statement of the rules expects, and anything
  raised is a :class:`TransportError` with the failure's code and status;
* an error answer after the first event of a turn is never replay safe;
* a lane is never held by two turns at once, and a continuation gets its parent's lane when
  that lane is free.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import hotloop
from hotloop.protocol.client_session import (
    CONTINUABLE,
    HTTP_RULES,
    MAX_SENDS,
    WEBSOCKET_RULES,
    Action,
    Chaining,
    ClientSession,
    ClientTurn,
    Failure,
    FailureKind,
    Lane,
    Phase,
    Rule,
    RuleTable,
    Send,
    TransportError,
    connection_failure,
    error_failure,
    is_transient,
    retry_after,
)
from hotloop.protocol.client_session import _table as rule_table
from hotloop.transport import TransportError as ExportedTransportError

CACHE_MISS_CODE = "previous_response_not_found"
LIMIT_CODE = "websocket_connection_limit_reached"
LANES: tuple[Lane, ...] = ("hl-1", "hl-2", None)
#: Small, so that the machines also see remembered ids forgotten for room.
MAX_IDS = 6
TERMINALS = ("response.completed", "response.incomplete", "response.failed")

#: Error answers: codes with rules of their own, transient and other statuses, no status.
ERRORS = st.one_of(
    st.sampled_from(
        [
            (CACHE_MISS_CODE, 400),
            (LIMIT_CODE, 400),
            ("model_not_found", 404),
            ("rate_limit_exceeded", 429),
            ("server_error", 500),
            ("invalid_input", 400),
            (None, 408),
            (None, 409),
            (None, 503),
            (None, None),
            ("server_error", None),
        ]
    ),
    st.tuples(st.none(), st.integers(400, 599)),
)
CLOSE_CODES = st.sampled_from([None, 1000, 1001, 1006, 1011])


# -- the tables and the classification ------------------------------------------------------


@pytest.mark.parametrize("table", [WEBSOCKET_RULES, HTTP_RULES], ids=["websocket", "http"])
def test_a_rule_table_covers_every_failure_in_every_phase(table: RuleTable) -> None:
    assert set(table) == {(kind, phase) for kind in FailureKind for phase in Phase}
    for (kind, phase), rule_ in table.items():
        # Once the turn's first event is out, nothing is re-sent behind the caller's back.
        if phase is Phase.AFTER_FIRST_EVENT:
            assert rule_.action in {Action.RAISE, Action.RAISE_REPLAY_SAFE}, kind
        # An error answer after the first event is never replay safe; a lost connection is.
        if phase is Phase.AFTER_FIRST_EVENT and kind not in {
            FailureKind.DROPPED,
            FailureKind.GOING_AWAY,
        }:
            assert rule_.action is Action.RAISE, kind


def test_the_websocket_rules() -> None:
    before = {kind: WEBSOCKET_RULES[kind, Phase.BEFORE_FIRST_EVENT] for kind in FailureKind}
    assert before == {
        FailureKind.CACHE_MISS: Rule(Action.RESEND_FULL, Action.RAISE),
        FailureKind.CONNECTION_LIMIT: Rule(Action.RECONNECT, Action.RAISE),
        FailureKind.GOING_AWAY: Rule(Action.RECONNECT, Action.RAISE_REPLAY_SAFE),
        FailureKind.DROPPED: Rule(Action.RECONNECT, Action.RAISE_REPLAY_SAFE),
        FailureKind.TRANSIENT: Rule(Action.RAISE_REPLAY_SAFE, Action.RAISE_REPLAY_SAFE),
        FailureKind.REJECTED: Rule(Action.RAISE),
    }


def test_the_http_rules() -> None:
    before = {kind: HTTP_RULES[kind, Phase.BEFORE_FIRST_EVENT].action for kind in FailureKind}
    assert before == {
        FailureKind.CACHE_MISS: Action.RESEND_FULL,
        FailureKind.CONNECTION_LIMIT: Action.RAISE,
        FailureKind.GOING_AWAY: Action.RAISE_REPLAY_SAFE,
        FailureKind.DROPPED: Action.RAISE_REPLAY_SAFE,
        FailureKind.TRANSIENT: Action.RAISE_REPLAY_SAFE,
        FailureKind.REJECTED: Action.RAISE,
    }


def test_a_table_with_a_hole_or_a_rule_that_never_gives_up_is_refused() -> None:
    with pytest.raises(ValueError, match="every failure"):
        rule_table([(FailureKind.DROPPED, Phase.BEFORE_FIRST_EVENT, Rule(Action.RAISE))])
    with pytest.raises(ValueError, match="must raise"):
        Rule(Action.RECONNECT, Action.RECONNECT)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (CACHE_MISS_CODE, 400, FailureKind.CACHE_MISS),
        (LIMIT_CODE, 400, FailureKind.CONNECTION_LIMIT),
        ("model_not_found", 404, FailureKind.REJECTED),
        ("invalid_api_key", 401, FailureKind.REJECTED),
        (None, 400, FailureKind.REJECTED),
        (None, None, FailureKind.REJECTED),
        (None, 408, FailureKind.TRANSIENT),
        (None, 409, FailureKind.TRANSIENT),
        ("rate_limit_exceeded", 429, FailureKind.TRANSIENT),
        ("server_error", 500, FailureKind.TRANSIENT),
        (None, 503, FailureKind.TRANSIENT),
    ],
)
def test_error_answers_are_classified_by_code_then_status(
    code: str | None, status: int | None, kind: FailureKind
) -> None:
    failure = error_failure("refused", code=code, status=status)
    assert failure == Failure(kind, "refused", code, status)
    assert is_transient(status) is (kind is FailureKind.TRANSIENT)


def test_a_close_with_1001_is_going_away_and_any_other_a_drop() -> None:
    assert connection_failure("gone", close_code=1001).kind is FailureKind.GOING_AWAY
    for code in (None, 1000, 1006, 1011):
        lost = connection_failure("gone", close_code=code)
        assert lost == Failure(FailureKind.DROPPED, "gone", "connection_lost")


def test_transport_error_is_the_one_the_transports_export() -> None:
    assert ExportedTransportError is TransportError
    assert hotloop.TransportError is TransportError


# -- the session's contracts ----------------------------------------------------------------


def connected_session(*, max_sends: int = MAX_SENDS, max_live_ids: int = MAX_IDS) -> ClientSession:
    session = ClientSession(
        WEBSOCKET_RULES,
        Chaining.CONNECTION,
        lanes=LANES,
        max_sends=max_sends,
        max_live_ids=max_live_ids,
    )
    session.connected(session.connecting())
    return session


def completed(session: ClientSession, response_id: str, previous: str | None = None) -> Send:
    lane = session.acquire_lane(previous)
    turn = session.start_turn(previous, 0, lane)
    send = session.next_send(turn)
    session.finished(turn, "response.completed", response_id)
    session.release_lane(lane)
    return send


def test_a_continuation_is_incremental_only_on_the_connection_that_made_its_parent() -> None:
    session = connected_session()
    assert not completed(session, "r1").incremental
    send = completed(session, "r2", "r1")
    assert send == Send("r1", 0, "hl-1", 1, 1)
    session.disconnected(1)
    session.connected(session.connecting())
    assert not completed(session, "r3", "r2").incremental  # r2 died with connection 1
    assert completed(session, "r4", "r3").incremental


def test_a_stale_disconnect_changes_nothing_and_connections_open_in_order() -> None:
    session = connected_session()
    session.connected(session.connecting())
    session.disconnected(1)
    assert session.open and session.generation == 2
    with pytest.raises(ValueError, match="connection 5"):
        session.connected(5)


def test_a_failed_response_cannot_be_continued_and_evicts_its_same_lane_parent() -> None:
    session = connected_session()
    completed(session, "r1")  # on hl-1
    lane = session.acquire_lane("r1")
    turn = session.start_turn("r1", 3, lane)
    assert session.next_send(turn) == Send("r1", 3, "hl-1", 1, 1)
    session.finished(turn, "response.failed", "r2")
    session.release_lane(lane)
    assert session.where("r2") is None
    assert session.where("r1") is None  # the server evicted the parent
    # A fork on another lane that fails leaves its parent alone.
    completed(session, "r3")  # on hl-1 again: released last, handed out first
    parent_lane = session.acquire_lane()  # hl-1 is busy now ...
    fork_lane = session.acquire_lane("r3")  # ... so the fork runs on hl-2
    assert (parent_lane, fork_lane) == ("hl-1", "hl-2")
    turn = session.start_turn("r3", 3, fork_lane)
    assert session.next_send(turn).incremental
    with pytest.raises(TransportError) as caught:
        session.failed(turn, error_failure("no", code="server_error", status=500), delivered=False)
    assert caught.value.replay_safe
    assert session.where("r3") == (1, "hl-1")


def test_a_cache_miss_forgets_the_id_and_resends_full_once() -> None:
    session = connected_session()
    completed(session, "r1")
    turn = session.start_turn("r1", 2, session.acquire_lane("r1"))
    first = session.next_send(turn)
    assert (first.incremental, first.input_from) == (True, 2)
    miss = error_failure("not found", code=CACHE_MISS_CODE, status=400)
    assert session.failed(turn, miss, delivered=False) is Action.RESEND_FULL
    assert session.where("r1") is None
    second = session.next_send(turn)
    assert (second.incremental, second.input_from, second.number) == (False, 0, 2)
    # The same answer to the whole history is a refusal, not a miss: raised, not re-sent.
    with pytest.raises(TransportError) as caught:
        session.failed(turn, miss, delivered=False)
    assert (caught.value.code, caught.value.replay_safe) == (CACHE_MISS_CODE, False)


def test_resends_are_bounded_then_the_exhausted_action_is_raised_with_its_cause() -> None:
    session = connected_session(max_sends=2)
    turn = session.start_turn(None, 0, None)
    session.next_send(turn)
    dropped = connection_failure("the socket closed")
    assert session.failed(turn, dropped, delivered=False) is Action.RECONNECT
    assert not session.open
    session.connected(session.connecting())
    session.next_send(turn)
    cause = OSError("reset")
    with pytest.raises(TransportError) as caught:
        session.failed(turn, dropped, delivered=False, cause=cause)
    assert caught.value.replay_safe and caught.value.code == "connection_lost"
    assert caught.value.__cause__ is cause
    with pytest.raises(RuntimeError, match="over"):
        session.next_send(turn)
    with pytest.raises(RuntimeError, match="not in flight"):
        session.failed(turn, dropped, delivered=False)
    with pytest.raises(ValueError, match="max_sends"):
        ClientSession(WEBSOCKET_RULES, Chaining.CONNECTION, max_sends=0)


def test_lanes_are_handed_out_in_order_and_a_continuation_gets_its_parents_lane() -> None:
    session = connected_session()
    assert [session.acquire_lane() for _ in LANES] == list(LANES)
    assert not session.has_free_lane
    with pytest.raises(LookupError):
        session.acquire_lane()
    for lane in reversed(LANES):
        session.release_lane(lane)
    # r1 on hl-1, r2 on hl-2 (hl-1 busy meanwhile); then each continuation goes home.
    a = session.acquire_lane()
    b = session.acquire_lane()
    for lane, response_id in ((a, "r1"), (b, "r2")):
        turn = session.start_turn(None, 0, lane)
        session.next_send(turn)
        session.finished(turn, "response.completed", response_id)
    session.release_lane(a)
    session.release_lane(b)  # released last: handed out next, to anyone without a home
    assert session.acquire_lane("r1") == "hl-1"
    assert session.acquire_lane("unknown") == "hl-2"


def test_remembered_ids_are_bounded_oldest_first() -> None:
    session = connected_session(max_live_ids=2)
    for response_id in ("r1", "r2", "r3"):
        completed(session, response_id)
    assert [session.where(r) for r in ("r1", "r2", "r3")] == [None, (1, "hl-1"), (1, "hl-1")]
    assert not session.chainable("r1") and session.chainable("r3")


def test_http_sessions_chain_by_store_or_never() -> None:
    stored = ClientSession(HTTP_RULES, Chaining.STORED)
    never = ClientSession(HTTP_RULES, Chaining.NEVER)
    for session, incremental in ((stored, True), (never, False)):
        turn = session.start_turn("resp_from_anywhere", 4)
        send = session.next_send(turn)
        assert send.incremental is incremental and send.lane is None
        session.finished(turn, "response.completed", "r9")
        assert session.where("r9") is None  # nothing to remember: the store holds it


# -- the state machines ---------------------------------------------------------------------


@dataclass
class Flight:
    """A turn the machine drives, and what it expects of it."""

    turn: ClientTurn
    previous: str | None
    new_from: int
    lane: Lane
    #: The send in flight; ``None`` while the turn waits to be sent (again).
    send: Send | None = None
    delivered: bool = False
    sends: int = 0
    forced_full: bool = False


def expected_websocket(
    failure: Failure, incremental: bool, delivered: bool, exhausted: bool
) -> Action:
    """The WebSocket rules, stated as plainly as the transport once wrote them inline."""
    code, status = failure.code, failure.status
    if failure.kind in {FailureKind.DROPPED, FailureKind.GOING_AWAY}:
        return Action.RAISE_REPLAY_SAFE if delivered or exhausted else Action.RECONNECT
    if not delivered and code == CACHE_MISS_CODE and incremental and not exhausted:
        return Action.RESEND_FULL
    if not delivered and code == LIMIT_CODE:
        return Action.RAISE if exhausted else Action.RECONNECT
    transient = not delivered and is_transient(status)
    return Action.RAISE_REPLAY_SAFE if transient else Action.RAISE


def expected_http(failure: Failure, incremental: bool, delivered: bool, exhausted: bool) -> Action:
    """The HTTP rules: a broken request is replay safe, an error status when it is transient."""
    code, status = failure.code, failure.status
    if failure.kind in {FailureKind.DROPPED, FailureKind.GOING_AWAY}:
        return Action.RAISE_REPLAY_SAFE
    if not delivered and code == CACHE_MISS_CODE and incremental and not exhausted:
        return Action.RESEND_FULL
    transient = not delivered and is_transient(status) and code != LIMIT_CODE
    return Action.RAISE_REPLAY_SAFE if transient else Action.RAISE


class SessionMachine(RuleBasedStateMachine):
    """What both machines share: turns, sends, first events, terminals, error answers."""

    session: ClientSession
    chaining: Chaining

    def __init__(self) -> None:
        super().__init__()
        self.flights: list[Flight] = []
        #: What the server holds, as the rules say: id -> (generation, lane), oldest first.
        self.live: OrderedDict[str, tuple[int, Lane]] = OrderedDict()
        #: Every continuable response ever produced: id -> (generation, lane).
        self.produced: dict[str, tuple[int, Lane]] = {}
        self.generation = 0
        self.open = False
        self.made = 0

    # What differs between the machines.

    def expected(
        self, failure: Failure, incremental: bool, delivered: bool, exhausted: bool
    ) -> Action:
        raise NotImplementedError

    def acquire(self, previous: str | None) -> Lane:
        return None

    def release(self, lane: Lane) -> None:
        return None

    def before_send(self) -> None:
        return None

    def reconnect(self, send: Send) -> None:
        return None

    def chainable(self, flight: Flight) -> bool:
        raise NotImplementedError

    # Rules.

    def waiting(self) -> list[Flight]:
        return [flight for flight in self.flights if flight.send is None]

    def in_flight(self) -> list[Flight]:
        return [flight for flight in self.flights if flight.send is not None]

    def can_start(self) -> bool:
        return len(self.flights) < len(LANES)

    @precondition(lambda self: self.can_start())
    @rule(data=st.data(), new_from=st.integers(0, 9))
    def start_turn(self, data: st.DataObject, new_from: int) -> None:
        previous = data.draw(st.sampled_from([None, "resp_nobody_made", *self.produced]))
        lane = self.acquire(previous)
        turn = self.session.start_turn(previous, new_from, lane)
        self.flights.append(Flight(turn, previous, new_from, lane))

    @precondition(lambda self: any(flight.send is None for flight in self.flights))
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        flight = data.draw(st.sampled_from(self.waiting()))
        self.before_send()
        chainable = self.chainable(flight)
        send = self.session.next_send(flight.turn)
        flight.sends += 1
        assert send.number == flight.sends <= MAX_SENDS
        assert (send.lane, send.generation) == (flight.lane, self.generation)
        if send.incremental:
            assert send.previous_response_id == flight.previous
            assert send.input_from == flight.new_from
            # A failure forced the whole history: never incremental again in this turn.
            assert not flight.forced_full
        else:
            assert send.input_from == 0
        # Incremental exactly when the rules allow it: never wrongly, never needlessly.
        assert send.incremental is (chainable and not flight.forced_full)
        flight.send, flight.delivered = send, False

    @precondition(lambda self: any(flight.send is not None for flight in self.flights))
    @rule(data=st.data())
    def first_event(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self.in_flight())).delivered = True

    @precondition(lambda self: any(flight.send is not None for flight in self.flights))
    @rule(data=st.data(), outcome=st.sampled_from(TERMINALS))
    def terminal_event(self, data: st.DataObject, outcome: str) -> None:
        flight = data.draw(st.sampled_from(self.in_flight()))
        send = flight.send
        assert send is not None
        self.made += 1
        response_id = f"resp_{self.made}"
        self.session.finished(flight.turn, outcome, response_id)
        if self.chaining is Chaining.CONNECTION:
            if outcome in CONTINUABLE:
                self.live[response_id] = (send.generation, send.lane)
                if len(self.live) > MAX_IDS:
                    self.live.popitem(last=False)
            elif send.incremental:
                self.evict_same_lane_parent(send)
        if outcome in CONTINUABLE:
            self.produced[response_id] = (send.generation, send.lane)
        self.end(flight)

    @precondition(lambda self: any(flight.send is not None for flight in self.flights))
    @rule(data=st.data(), error=ERRORS)
    def error_answer(self, data: st.DataObject, error: tuple[str | None, int | None]) -> None:
        flight = data.draw(st.sampled_from(self.in_flight()))
        code, status = error
        self.fail(flight, error_failure(f"refused: {code}", code=code, status=status))

    # Helpers.

    def evict_same_lane_parent(self, send: Send) -> None:
        previous = send.previous_response_id
        if previous is not None and self.live.get(previous) == (send.generation, send.lane):
            del self.live[previous]

    def end(self, flight: Flight) -> None:
        self.flights.remove(flight)
        self.release(flight.lane)

    def fail(self, flight: Flight, failure: Failure) -> None:
        send = flight.send
        assert send is not None
        exhausted = flight.sends >= MAX_SENDS
        expected = self.expected(failure, send.incremental, flight.delivered, exhausted)
        if self.chaining is Chaining.CONNECTION and send.incremental:
            # The server no longer holds an id it reported missing, nor (on the same lane)
            # the parent of a continuation it refused.
            if failure.kind is FailureKind.CACHE_MISS:
                self.live.pop(send.previous_response_id or "", None)
            elif failure.kind in {FailureKind.TRANSIENT, FailureKind.REJECTED}:
                self.evict_same_lane_parent(send)
        try:
            action = self.session.failed(flight.turn, failure, delivered=flight.delivered)
        except TransportError as error:
            assert expected in {Action.RAISE, Action.RAISE_REPLAY_SAFE}
            assert error.replay_safe is (expected is Action.RAISE_REPLAY_SAFE)
            assert (error.code, error.status, str(error)) == (
                failure.code,
                failure.status,
                failure.message,
            )
            if flight.delivered and failure.kind not in {
                FailureKind.DROPPED,
                FailureKind.GOING_AWAY,
            }:
                assert not error.replay_safe  # an error answer after the first event
            self.end(flight)
            return
        assert action is expected
        flight.send, flight.forced_full = None, True
        if action is Action.RECONNECT:
            self.reconnect(send)

    @invariant()
    def the_session_knows_what_the_server_holds(self) -> None:
        if self.chaining is Chaining.CONNECTION:
            for response_id in self.produced:
                assert self.session.where(response_id) == self.live.get(response_id)
                held = self.live.get(response_id)
                chainable = held is not None and self.open and held[0] == self.generation
                assert self.session.chainable(response_id) is chainable
        assert self.session.open is self.open
        assert self.session.generation == self.generation


class WebSocketSessionMachine(SessionMachine):
    """One WebSocket-mode connection: lanes, generations, drops and going-away closes."""

    chaining = Chaining.CONNECTION

    def __init__(self) -> None:
        super().__init__()
        self.session = ClientSession(
            WEBSOCKET_RULES, Chaining.CONNECTION, lanes=LANES, max_live_ids=MAX_IDS
        )
        self.free: list[Lane] = list(LANES)

    def expected(
        self, failure: Failure, incremental: bool, delivered: bool, exhausted: bool
    ) -> Action:
        return expected_websocket(failure, incremental, delivered, exhausted)

    def acquire(self, previous: str | None) -> Lane:
        assert self.session.has_free_lane
        home = self.live.get(previous) if previous is not None else None
        lane = self.session.acquire_lane(previous)
        assert lane in self.free
        if home is not None and home[0] == self.generation and home[1] in self.free:
            assert lane == home[1]  # a continuation goes home when it can
        self.free.remove(lane)
        return lane

    def release(self, lane: Lane) -> None:
        self.session.release_lane(lane)
        self.free.append(lane)

    def chainable(self, flight: Flight) -> bool:
        if flight.previous is None or not self.open:
            return False
        held = self.live.get(flight.previous)
        chainable = held is not None and held[0] == self.generation
        if chainable:
            # Only from the connection that produced it.
            assert self.produced[flight.previous][0] == self.generation
        return chainable

    def before_send(self) -> None:
        if not self.open:  # a driver opens a connection before it sends
            self.connect()

    def reconnect(self, send: Send) -> None:
        # The driver closes the connection if it is still the failed send's: every other turn
        # in flight on it fails as dropped.
        if send.generation == self.generation and self.open:
            self.close_connection(None)

    @precondition(lambda self: not self.open)
    @rule()
    def connect(self) -> None:
        generation = self.session.connecting()
        assert generation == self.generation + 1
        self.session.connected(generation)
        self.generation, self.open = generation, True

    @precondition(lambda self: self.open)
    @rule(close_code=CLOSE_CODES)
    def connection_closes(self, close_code: int | None) -> None:
        self.close_connection(close_code)

    def close_connection(self, close_code: int | None) -> None:
        self.session.disconnected(self.generation)
        self.open = False
        failure = connection_failure("the WebSocket closed during the turn", close_code=close_code)
        for flight in self.in_flight():
            assert flight.send is not None
            if flight.send.generation == self.generation:
                self.fail(flight, failure)

    @precondition(lambda self: self.generation > 1)
    @rule(data=st.data())
    def an_old_connection_closes_late(self, data: st.DataObject) -> None:
        self.session.disconnected(data.draw(st.integers(1, self.generation - 1)))

    @invariant()
    def lanes_are_never_shared(self) -> None:
        held = [flight.lane for flight in self.flights]
        assert len(held) == len(set(held))
        assert sorted(map(str, held + self.free)) == sorted(map(str, LANES))
        assert self.session.has_free_lane is bool(self.free)


class HTTPSessionMachine(SessionMachine):
    """HTTP requests: a store-backed loop that chains by id, or a stateless one."""

    def __init__(self) -> None:
        super().__init__()
        self.session = ClientSession(HTTP_RULES, Chaining.NEVER)
        self.chaining = Chaining.NEVER

    @initialize(chaining=st.sampled_from([Chaining.STORED, Chaining.NEVER]))
    def choose(self, chaining: Chaining) -> None:
        self.session = ClientSession(HTTP_RULES, chaining)
        self.chaining = chaining

    def expected(
        self, failure: Failure, incremental: bool, delivered: bool, exhausted: bool
    ) -> Action:
        return expected_http(failure, incremental, delivered, exhausted)

    def can_start(self) -> bool:
        return len(self.flights) < 4

    def chainable(self, flight: Flight) -> bool:
        return self.chaining is Chaining.STORED and flight.previous is not None

    @precondition(lambda self: any(flight.send is not None for flight in self.flights))
    @rule(data=st.data())
    def request_breaks(self, data: st.DataObject) -> None:
        flight = data.draw(st.sampled_from(self.in_flight()))
        self.fail(flight, connection_failure("HTTP request failed: ReadError()"))


TestWebSocketSession = WebSocketSessionMachine.TestCase
TestWebSocketSession.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestHTTPSession = HTTPSessionMachine.TestCase
TestHTTPSession.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize(
    ("headers", "message", "seconds"),
    [
        ({"retry-after": "2"}, None, 2.0),
        ({"retry-after": "0.5"}, "try again in 9s", 0.5),  # a header wins over the message
        ({"retry-after-ms": "150", "retry-after": "9"}, None, 0.15),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, 0.0),  # a date gone by
        ({"retry-after": "soon"}, None, None),
        ({"retry-after": "-1", "retry-after-ms": "-5"}, "try again in 2s", 2.0),  # invalid
        (None, "Rate limit reached for gpt-x. Please try again in 1.5s.", 1.5),
        (None, "Please try again in 20ms.", 0.02),
        (None, "Please try again in 1m30s.", 90.0),
        (None, "Rate limit reached (simulated). Please try again in 1 s.", 1.0),
        (None, "The upstream is rate limiting requests. Retry after 30 s.", 30.0),
        (None, "try again in 2 seconds", 2.0),
        (None, "Please try again later.", None),
        (None, None, None),
    ],
)
def test_retry_after_reads_headers_then_the_message(
    headers: dict[str, str] | None, message: str | None, seconds: float | None
) -> None:
    assert retry_after(headers, message) == seconds


def test_a_rate_limit_carries_its_retry_after_to_the_error_raised() -> None:
    session = ClientSession(HTTP_RULES, Chaining.NEVER)
    turn = session.start_turn(None, 0, None)
    session.next_send(turn)
    limited = error_failure("slow down", code=None, status=429, retry_after=1.5)
    with pytest.raises(TransportError) as caught:
        session.failed(turn, limited, delivered=False)
    assert caught.value.replay_safe and caught.value.status == 429
    assert caught.value.retry_after == 1.5
