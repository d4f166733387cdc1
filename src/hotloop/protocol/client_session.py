"""The client's side of the Responses API's chained modes, as a sans-I/O session.

A :class:`ClientSession` holds what a client connection knows and makes every decision a
transport needs, without awaiting, sleeping, reading a clock or touching a socket (no rule
depends on the time):

* **what to send** for a turn (:meth:`ClientSession.next_send`): only the new items plus
  ``previous_response_id``, or the whole history. Which one follows :class:`Chaining`: over a
  WebSocket, a response can be continued by id only on the connection that produced it (its
  cache died with any other); a store-backed HTTP loop can continue any id (the server stored
  it); a stateless loop never chains;
* **which response ids live where**: each continuable response's connection (its
  *generation*: every new connection gets the next number) and lane (``stream_id``). A
  connection that closes takes its ids with it; a continuation that fails on the lane of the
  response it continued takes that response with it (the server evicts the parent, so a
  blind incremental retry would fail the same way); a ``previous_response_not_found`` answer
  forgets the id;
* **which lane** a turn runs on (:meth:`ClientSession.acquire_lane`): the lane of the response
  it continues when that lane is free, which keeps each chain on its own lane;
* **what to do when a send fails** (:meth:`ClientSession.failed`): the failure is classified
  into a :class:`FailureKind`, and a rule table (:data:`WEBSOCKET_RULES`, :data:`HTTP_RULES`)
  maps the kind and whether the turn had delivered an event yet to an :class:`Action`:
  re-send the whole history on the same connection, reconnect and re-send it, or raise
  :class:`TransportError` (``replay_safe`` or not). Re-sends are bounded per turn
  (``max_sends``), so a server that keeps refusing cannot make a turn loop forever.

The events of a turn never pass through the session: a driver hands each one to its caller
directly, and tells the session only how the turn ended (:meth:`ClientSession.finished`) or
failed. :data:`~hotloop.wire.events.RESPONSE_END_EVENTS` end a turn (handed to the caller first);
:data:`~hotloop.wire.events.ERROR_EVENTS` end it as a failure (never handed over:
:meth:`ClientSession.failed` decides).

The transports are its drivers: ``hotloop.transport.websocket`` moves frames between a socket
and the session, ``hotloop.transport.http`` does the same for HTTP requests.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from hotloop.errors import HotloopError
from hotloop.wire.events import (
    ResponseCompleted,
    ResponseIncomplete,
)

__all__ = [
    "CONTINUABLE",
    "ERROR_CODES",
    "HTTP_RULES",
    "MAX_LIVE_IDS",
    "MAX_SENDS",
    "WEBSOCKET_RULES",
    "Action",
    "Chaining",
    "ClientSession",
    "ClientTurn",
    "Failure",
    "FailureKind",
    "Lane",
    "Phase",
    "Rule",
    "RuleTable",
    "Send",
    "TransportError",
    "connection_failure",
    "error_failure",
    "is_transient",
    "retry_after",
]

#: A WebSocket lane: a ``stream_id``, or ``None`` for the default lane (HTTP has only that).
Lane = str | None

#: Sends of one turn, the first included: a turn re-sent this often gives up.
MAX_SENDS = 3
#: Continuable response ids remembered per session; the oldest are forgotten first (a turn
#: continuing a forgotten id sends the whole history, which is always correct).
MAX_LIVE_IDS = 4096

#: Terminal event types whose response can be continued by id; a failed one cannot.
CONTINUABLE = frozenset({ResponseCompleted.type, ResponseIncomplete.type})


class TransportError(HotloopError):
    """The model request failed on the way: connection lost, HTTP error, error event.

    ``code`` is the server's error code when there was one. ``replay_safe`` is true when the
    request can be sent again unchanged (the runner then retries it, up to a limit).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        replay_safe: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.replay_safe = replay_safe
        #: How long the server asked to wait before trying again (s), when it said.
        self.retry_after = retry_after


class Chaining(enum.Enum):
    """When a turn may send only its new items plus ``previous_response_id``."""

    #: Never: every turn sends the whole history (stateless HTTP, Chat Completions).
    NEVER = "never"
    #: When the previous response was produced on the connection the turn is sent on
    #: (WebSocket mode with ``store: false``: the state lives in the connection's cache).
    CONNECTION = "connection"
    #: Whenever the turn names a previous response (HTTP with ``store: true``: the server's
    #: store holds it, whichever connection made it).
    STORED = "stored"


class FailureKind(enum.Enum):
    """What went wrong with one send, as far as the rules care."""

    #: ``previous_response_not_found`` answering an incremental send.
    CACHE_MISS = "cache miss"
    #: ``websocket_connection_limit_reached``: the connection reached its lifetime.
    CONNECTION_LIMIT = "connection limit"
    #: The server closed the connection with 1001 (going away).
    GOING_AWAY = "going away"
    #: The connection closed or broke any other way.
    DROPPED = "dropped"
    #: An error answer worth sending again: status 408, 409, 429 or 5xx.
    TRANSIENT = "transient"
    #: Any other error answer (the request itself was refused: it would fail the same way).
    REJECTED = "rejected"


class Phase(enum.Enum):
    """Where in its turn a send failed: before or after the turn's first event."""

    BEFORE_FIRST_EVENT = "before the first event"
    AFTER_FIRST_EVENT = "after the first event"


class Action(enum.Enum):
    """What a driver does about a failed send."""

    #: The server no longer holds the previous response: send the same turn again with the
    #: whole history, on the same connection (drivers count it as a cache miss).
    RESEND_FULL = "resend full"
    #: The connection is gone or going: open a new one and send the whole history on it.
    RECONNECT = "reconnect and resend full"
    #: Raise :class:`TransportError` with ``replay_safe=False``.
    RAISE = "raise"
    #: Raise :class:`TransportError` with ``replay_safe=True``: nothing of the turn was
    #: committed, so the caller may send it again.
    RAISE_REPLAY_SAFE = "raise, replay safe"


_RESENDS = frozenset({Action.RESEND_FULL, Action.RECONNECT})


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a rule table: the action, and the one to take once a turn's sends are spent.

    ``exhausted`` matters only for a re-sending action; a raising rule raises either way.
    """

    action: Action
    exhausted: Action = Action.RAISE

    def __post_init__(self) -> None:
        if self.exhausted in _RESENDS:
            raise ValueError("a rule's exhausted action must raise")


RuleTable = Mapping[tuple[FailureKind, Phase], Rule]

_BEFORE, _AFTER = Phase.BEFORE_FIRST_EVENT, Phase.AFTER_FIRST_EVENT
_RAISE = Rule(Action.RAISE)
_RAISE_REPLAY_SAFE = Rule(Action.RAISE_REPLAY_SAFE, Action.RAISE_REPLAY_SAFE)


def _table(rows: Iterable[tuple[FailureKind, Phase, Rule]]) -> RuleTable:
    table = {(kind, phase): rule for kind, phase, rule in rows}
    missing = {(kind, phase) for kind in FailureKind for phase in Phase} - table.keys()
    if missing:
        raise ValueError(f"a rule table must cover every failure in every phase: {missing}")
    return MappingProxyType(table)


#: WebSocket mode. Before the turn's first event nothing of it reached the caller, so a
#: lost or expiring connection is recovered by sending the whole history on a new one, and a
#: cache miss by sending it on the same one. After the first event the caller may have acted
#: on the partial turn (started tools): a lost connection is raised as replay safe and the
#: caller decides; an error answer is never replay safe then.
WEBSOCKET_RULES: RuleTable = _table(
    [
        (FailureKind.CACHE_MISS, _BEFORE, Rule(Action.RESEND_FULL)),
        (FailureKind.CACHE_MISS, _AFTER, _RAISE),
        (FailureKind.CONNECTION_LIMIT, _BEFORE, Rule(Action.RECONNECT)),
        (FailureKind.CONNECTION_LIMIT, _AFTER, _RAISE),
        (FailureKind.GOING_AWAY, _BEFORE, Rule(Action.RECONNECT, Action.RAISE_REPLAY_SAFE)),
        (FailureKind.GOING_AWAY, _AFTER, _RAISE_REPLAY_SAFE),
        (FailureKind.DROPPED, _BEFORE, Rule(Action.RECONNECT, Action.RAISE_REPLAY_SAFE)),
        (FailureKind.DROPPED, _AFTER, _RAISE_REPLAY_SAFE),
        (FailureKind.TRANSIENT, _BEFORE, _RAISE_REPLAY_SAFE),
        (FailureKind.TRANSIENT, _AFTER, _RAISE),
        (FailureKind.REJECTED, _BEFORE, _RAISE),
        (FailureKind.REJECTED, _AFTER, _RAISE),
    ]
)

#: HTTP (Responses over SSE, Chat Completions). A cache miss of a store-backed loop sends the
#: whole history again; a broken request is raised as replay safe (the caller's next attempt
#: gets a fresh pooled connection); an error status is replay safe only when transient. The
#: two WebSocket-only failures are mapped as their nearest HTTP meaning.
HTTP_RULES: RuleTable = _table(
    [
        (FailureKind.CACHE_MISS, _BEFORE, Rule(Action.RESEND_FULL)),
        (FailureKind.CACHE_MISS, _AFTER, _RAISE),
        (FailureKind.CONNECTION_LIMIT, _BEFORE, _RAISE),
        (FailureKind.CONNECTION_LIMIT, _AFTER, _RAISE),
        (FailureKind.GOING_AWAY, _BEFORE, _RAISE_REPLAY_SAFE),
        (FailureKind.GOING_AWAY, _AFTER, _RAISE_REPLAY_SAFE),
        (FailureKind.DROPPED, _BEFORE, _RAISE_REPLAY_SAFE),
        (FailureKind.DROPPED, _AFTER, _RAISE_REPLAY_SAFE),
        (FailureKind.TRANSIENT, _BEFORE, _RAISE_REPLAY_SAFE),
        (FailureKind.TRANSIENT, _AFTER, _RAISE),
        (FailureKind.REJECTED, _BEFORE, _RAISE),
        (FailureKind.REJECTED, _AFTER, _RAISE),
    ]
)

#: Error codes with a rule of their own; any other error answer is classified by its status.
ERROR_CODES: Mapping[str, FailureKind] = MappingProxyType(
    {
        "previous_response_not_found": FailureKind.CACHE_MISS,
        "websocket_connection_limit_reached": FailureKind.CONNECTION_LIMIT,
    }
)
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_CONNECTION_LOST = "connection_lost"
_GOING_AWAY_CLOSE_CODE = 1001


def is_transient(status: int | None) -> bool:
    """Whether an error status is worth sending the same request again for.

    A timeout, a conflict, rate limiting or a server error may pass; any other refusal (an
    unknown model, a malformed request) would fail the same way.
    """
    return status is not None and (status in _TRANSIENT_STATUSES or status >= 500)


@dataclass(frozen=True, slots=True)
class Failure:
    """A send that failed, as a driver saw it: built by :func:`error_failure` or
    :func:`connection_failure`. ``message`` is what a raised error will say."""

    kind: FailureKind
    message: str
    code: str | None = None
    status: int | None = None
    #: The wait the server asked for before trying again (s), when it said.
    retry_after: float | None = None


def error_failure(
    message: str, *, code: str | None, status: int | None, retry_after: float | None = None
) -> Failure:
    """The server answered an error (an error event, or an HTTP error status)."""
    kind = ERROR_CODES.get(code) if code is not None else None
    if kind is None:
        kind = FailureKind.TRANSIENT if is_transient(status) else FailureKind.REJECTED
    return Failure(kind, message, code, status, retry_after)


#: "try again in 1.5s", "in 20ms", "in 1m30s", "retry after 2 s": how rate-limit messages say
#: the wait.
_TRY_AGAIN = re.compile(
    r"(?:try again in|retry after) "
    r"(?:(\d+(?:\.\d+)?)\s*m(?!s))?"  # minutes
    r"\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b)?",  # then seconds or milliseconds
    re.IGNORECASE,
)


def _header_wait(headers: Mapping[str, str]) -> float | None:
    """The wait the ``retry-after-ms`` or ``retry-after`` header asks for (a negative or
    unreadable value asks for none)."""
    raw = headers.get("retry-after-ms")
    if raw is not None:
        with contextlib.suppress(ValueError):
            milliseconds = float(raw)
            if milliseconds >= 0:
                return milliseconds / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return seconds if seconds >= 0 else None


def retry_after(
    headers: Mapping[str, str] | None = None, message: str | None = None
) -> float | None:
    """The wait (s) a server asked for before trying again, or ``None`` when it did not say.

    Read from the headers first (``retry-after-ms``, then ``retry-after`` in seconds or as an
    HTTP date; names in lower case, as HTTP clients give them), then from an error message
    ("Please try again in 1.5s", "in 20ms", "in 1m30s", "Retry after 2 s": how rate-limit
    messages say it, the only place a streamed ``response.failed`` has it).
    """
    if headers:
        wait = _header_wait(headers)
        if wait is not None:
            return wait
    if message:
        found = _TRY_AGAIN.search(message)
        if found is not None and (found.group(1) or found.group(2)):
            minutes, amount, unit = found.groups()
            seconds = float(minutes or 0) * 60
            if amount is not None:
                seconds += float(amount) / (1000 if unit.lower() == "ms" else 1)
            return seconds
    return None


def connection_failure(message: str, *, close_code: int | None = None) -> Failure:
    """The connection closed or broke; ``close_code`` is the server's close code if it sent one."""
    going_away = close_code == _GOING_AWAY_CLOSE_CODE
    kind = FailureKind.GOING_AWAY if going_away else FailureKind.DROPPED
    return Failure(kind, message, _CONNECTION_LOST)


@dataclass(frozen=True, slots=True)
class Send:
    """What to send for one attempt of a turn.

    ``previous_response_id`` is set when only ``history[input_from:]`` goes out (an
    incremental send); otherwise it is ``None``, ``input_from`` is 0 and the whole history
    goes out. ``generation`` is the connection the send goes on (drivers route the turn's
    events by it); ``number`` counts the turn's sends, from 1.
    """

    previous_response_id: str | None
    input_from: int
    lane: Lane
    generation: int
    number: int

    @property
    def incremental(self) -> bool:
        return self.previous_response_id is not None


class ClientTurn:
    """One turn in a session, from :meth:`ClientSession.start_turn` until it finished or raised.

    Mutable on purpose: the session updates it as the turn is sent and re-sent.
    """

    __slots__ = ("done", "full", "lane", "last", "new_from", "previous_response_id", "sends")

    def __init__(self, previous_response_id: str | None, new_from: int, lane: Lane) -> None:
        self.previous_response_id = previous_response_id
        self.new_from = new_from
        self.lane = lane
        #: Sends so far; the last one.
        self.sends = 0
        self.last: Send | None = None
        #: A failure forced the whole history for every further send of this turn.
        self.full = False
        self.done = False


class ClientSession:
    """The state and rules of one client connection (or HTTP client); see the module docstring.

    ``rules`` is the failure table (:data:`WEBSOCKET_RULES` or :data:`HTTP_RULES`),
    ``chaining`` when a turn may send only its new items. ``lanes`` are the lanes turns may
    run on, in the order they are handed out (a WebSocket's ``stream_id`` values and ``None``
    for the default lane; HTTP needs none: its turns all run on ``None`` without acquiring).
    """

    def __init__(
        self,
        rules: RuleTable,
        chaining: Chaining,
        *,
        lanes: Iterable[Lane] = (None,),
        max_sends: int = MAX_SENDS,
        max_live_ids: int = MAX_LIVE_IDS,
    ) -> None:
        if max_sends < 1:
            raise ValueError("max_sends must be at least 1")
        self.rules = rules
        self.chaining = chaining
        self.max_sends = max_sends
        self.max_live_ids = max_live_ids
        #: The latest connection's number (0: none yet) and whether it is open.
        self.generation = 0
        self.open = False
        # Continuable response id -> (generation, lane) that produced it, oldest first.
        self._live: OrderedDict[str, tuple[int, Lane]] = OrderedDict()
        # A stack: the lane released last is handed out next (the first of ``lanes`` first).
        self._free: list[Lane] = list(reversed(list(lanes)))

    # -- connections -----------------------------------------------------------------------

    def connecting(self) -> int:
        """The generation the connection being opened will have (nothing changes yet)."""
        return self.generation + 1

    def connected(self, generation: int) -> None:
        """The connection numbered ``generation`` (from :meth:`connecting`) is open."""
        if generation != self.generation + 1:
            raise ValueError(f"connection {generation} opened after {self.generation}")
        self.generation = generation
        self.open = True

    def disconnected(self, generation: int) -> None:
        """The connection ``generation`` closed: the responses it produced are gone with it.

        A stale generation (an older connection closing late) changes nothing.
        """
        if generation == self.generation:
            self.open = False

    def chainable(self, response_id: str) -> bool:
        """Whether a turn sent now may continue ``response_id`` by id."""
        if self.chaining is Chaining.STORED:
            return True
        if self.chaining is Chaining.NEVER or not self.open:
            return False
        where = self._live.get(response_id)
        return where is not None and where[0] == self.generation

    def where(self, response_id: str) -> tuple[int, Lane] | None:
        """The connection (generation) and lane that produced ``response_id``, if remembered."""
        return self._live.get(response_id)

    # -- lanes -----------------------------------------------------------------------------

    @property
    def has_free_lane(self) -> bool:
        return bool(self._free)

    def acquire_lane(self, previous_response_id: str | None = None) -> Lane:
        """Take a free lane: that of ``previous_response_id`` when it is free, else the next.

        Raises ``LookupError`` when no lane is free (check :attr:`has_free_lane`; a driver
        waits for :meth:`release_lane`).
        """
        free = self._free
        if not free:
            raise LookupError("no free lane")
        if previous_response_id is not None and len(free) > 1:
            where = self._live.get(previous_response_id)
            if where is not None and where[0] == self.generation and where[1] in free:
                free.remove(where[1])
                return where[1]
        return free.pop()

    def release_lane(self, lane: Lane) -> None:
        """``lane`` is free again."""
        self._free.append(lane)

    # -- turns -----------------------------------------------------------------------------

    def start_turn(
        self, previous_response_id: str | None, new_from: int, lane: Lane = None
    ) -> ClientTurn:
        """A turn continuing ``previous_response_id`` whose new items start at ``new_from``."""
        return ClientTurn(previous_response_id, new_from, lane)

    def next_send(self, turn: ClientTurn) -> Send:
        """What to send now for ``turn`` (after the driver made sure a connection is open)."""
        if turn.done:
            raise RuntimeError("the turn is over")
        turn.sends += 1
        previous = turn.previous_response_id
        if previous is not None and not turn.full and self.chainable(previous):
            send = Send(previous, turn.new_from, turn.lane, self.generation, turn.sends)
        else:
            send = Send(None, 0, turn.lane, self.generation, turn.sends)
        turn.last = send
        return send

    def finished(
        self, turn: ClientTurn, event_type: str | None = None, response_id: str | None = None
    ) -> None:
        """``turn`` ended with its terminal event (``event_type``, of response ``response_id``).

        A completed or incomplete response can be continued on the connection that produced
        it; a failed continuation on its parent's lane evicted the parent.
        """
        turn.done = True
        send = turn.last
        if self.chaining is not Chaining.CONNECTION or send is None:
            return
        if event_type in CONTINUABLE and response_id is not None:
            live = self._live
            live[response_id] = (send.generation, send.lane)
            if len(live) > self.max_live_ids:
                live.popitem(last=False)
        elif send.incremental:
            self._parent_failed(send)

    def failed(
        self,
        turn: ClientTurn,
        failure: Failure,
        *,
        delivered: bool,
        cause: BaseException | None = None,
    ) -> Action:
        """The last send of ``turn`` failed; ``delivered``: the turn had handed over an event.

        Returns :attr:`Action.RESEND_FULL` or :attr:`Action.RECONNECT` (the driver does it,
        then asks :meth:`next_send` again), or raises :class:`TransportError` (``cause``, if
        given, is chained to it).
        """
        send = turn.last
        if send is None or turn.done:
            raise RuntimeError("failed() of a turn that is not in flight")
        kind = failure.kind
        if kind is FailureKind.CACHE_MISS and not send.incremental:
            # The whole history was sent: there was no cached response to miss, so the
            # server refused the request itself.
            kind = FailureKind.TRANSIENT if is_transient(failure.status) else FailureKind.REJECTED
        if self.chaining is Chaining.CONNECTION and send.incremental:
            if kind is FailureKind.CACHE_MISS:
                self._live.pop(send.previous_response_id or "", None)
            elif kind is FailureKind.TRANSIENT or kind is FailureKind.REJECTED:
                self._parent_failed(send)
        rule = self.rules[kind, _AFTER if delivered else _BEFORE]
        action = rule.action
        if action in _RESENDS:
            if turn.sends < self.max_sends:
                turn.full = True
                if action is Action.RECONNECT:
                    self.disconnected(send.generation)
                return action
            action = rule.exhausted
        turn.done = True
        error = TransportError(
            failure.message,
            code=failure.code,
            status=failure.status,
            replay_safe=action is Action.RAISE_REPLAY_SAFE,
            retry_after=failure.retry_after,
        )
        if cause is not None:
            raise error from cause
        raise error

    def _parent_failed(self, send: Send) -> None:
        # The server evicts the parent of a continuation that fails on the parent's own lane
        # (a fork that fails on another lane leaves it): continuing it again would miss.
        previous = send.previous_response_id
        if previous is not None and self._live.get(previous) == (send.generation, send.lane):
            del self._live[previous]
