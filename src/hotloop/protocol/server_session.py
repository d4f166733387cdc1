"""The server side of WebSocket mode as a pure state machine: frames in, actions out.

A :class:`ServerSession` holds every rule of one WebSocket connection and none of its I/O:
no sockets, no tasks, no clock of its own (the time is passed in as a number). The gateway's
socket handler is a driver around it: it feeds each frame to :meth:`ServerSession.receive`
and carries out the actions that come back, runs each started create as a task, and tells
the session when a create ends.

The actions: :class:`Start` (run this create now), :class:`Queued` (it waits on its lane;
nothing to do), :class:`Cancel` (stop this running create), :class:`Send` (one encoded text
frame), :class:`Close` (close the socket with this code and reason). A started create then
goes through :meth:`ServerSession.lookup_parent` (the driver fetches a store lookup),
:meth:`~ServerSession.fail` or :meth:`~ServerSession.commit`, and always
:meth:`~ServerSession.finish`, which returns the creates that may start in its place. What
the session decides:

* **frames** — a table maps a frame's ``type`` to its handler (:data:`FRAME_RULES`):
  ``response.create`` is admitted to a lane or refused, ``response.cancel`` cancels the
  response running on a lane (below), ``response.steer`` is refused with
  ``response.steer.failed`` / ``steering_not_supported``, a missing ``type`` is
  ``missing_required_parameter`` and any other ``type`` is ``unknown_event_type``. Before
  that, a frame over the size limit is ``message_too_large`` (413) and a frame that is not a
  JSON object is ``invalid_json``; these connection-level errors carry no ``stream_id``.
* **cancelling** — ``{"type": "response.cancel", "stream_id": ...}`` (a hotloop extension;
  no ``stream_id``: the default lane; a malformed one is ``invalid_stream_id``) names a lane,
  not a response: the create *running* on that lane gets a :class:`Cancel` (once), and the
  driver stops it and ends its response with ``response.failed`` / ``response_cancelled``.
  Creates queued behind it on that lane are not touched: they were sent after the response
  the client gave up on and start as usual once it ended (a client that wants them gone
  cancels each when it runs). A lane with nothing running gets no answer at all: the response
  the cancel meant has already ended and its terminal event is on its way, so a client racing
  the end of its response never gets an error for it. The driver may still find the running
  create too far along (its response already ended and is being committed or sent): that
  terminal event stands, exactly as if the cancel had arrived a moment later.
* **lanes** — a create runs on the lane its ``stream_id`` names (``None``: the default lane).
  ``stream_id`` is 1-256 characters of ``[A-Za-z0-9_.-]`` (else ``invalid_stream_id``). A lane
  runs its creates one at a time in the order they arrived; different lanes run concurrently,
  at most ``max_active_responses`` at once (a lane waiting for a slot gets one in the order it
  became ready). At most ``max_lanes`` named lanes exist per connection (the default lane does
  not count): the next new one is ``websocket_stream_limit_reached``. What one connection
  may have queued (admitted, not started) is bounded by ``max_queued_creates`` and
  ``max_queued_bytes`` (frame sizes): a create that would be queued past either is refused
  with ``websocket_queue_full`` (429) and the socket stays open.
* **lifetime and idleness** — a create on a connection older than ``connection_lifetime`` is
  refused with ``websocket_connection_limit_reached`` and the session asks to close with 1001
  (so SDKs reconnect). A connection with nothing queued or running and no frame for
  ``idle_timeout`` is closed with 1001 too. Once a close is decided, frames are ignored and
  queued creates are dropped.
* **the connection-scoped cache** — the session owns the connection's
  :class:`~hotloop.protocol.cache.ResponseCache`. A create's ``previous_response_id`` is looked
  up in it first; a miss sends the gateway to the store (:func:`lookup_parent`, which the HTTP
  endpoints use too, with no cache). A continuation that fails after its parent was found in
  the cache evicts that parent when it ran on the parent's own lane, so a blind retry fails
  the same way; a failed fork on another lane leaves the parent to its own lane
  (:func:`evicted_by_failure`).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hotloop.errors import APIError, DecodeError
from hotloop.protocol.cache import CachedResponse, ResponseCache
from hotloop.protocol.conversation import Conversation
from hotloop.wire import codec
from hotloop.wire.events import SteerFailed, WebSocketError

__all__ = [
    "CLOSE_GOING_AWAY",
    "FRAME_RULES",
    "NO_PARENT",
    "STREAM_ID_PATTERN",
    "Action",
    "CacheHit",
    "Cancel",
    "Close",
    "Job",
    "NoParent",
    "ParentLookup",
    "Queued",
    "Send",
    "ServerSession",
    "SessionConfig",
    "SessionState",
    "Start",
    "StoreLookup",
    "evicted_by_failure",
    "lookup_parent",
]

#: ``stream_id``: 1-256 characters of ``[A-Za-z0-9_.-]``.
STREAM_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,256}")

#: The close code "going away" (RFC 6455): the SDKs reconnect when they see it.
CLOSE_GOING_AWAY: Final = 1001

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The limits of one WebSocket connection. Durations are seconds; sizes are bytes."""

    #: The largest frame served; a larger one is answered with ``message_too_large``.
    max_message_bytes: int = 64 * _MiB
    #: Named lanes (``stream_id``) per connection; the default lane does not count.
    max_lanes: int = 32
    #: Creates generating at once across the connection's lanes.
    max_active_responses: int = 16
    #: No frame and nothing queued or running for this long: the socket is closed.
    idle_timeout: float = 900.0
    #: A create on a connection older than this is refused and the socket is closed.
    connection_lifetime: float = 3600.0
    cache_max_entries: int = 128
    cache_max_bytes: int = 256 * _MiB
    #: Creates queued (admitted, not started) across the connection's lanes.
    max_queued_creates: int = 64
    #: The frames of those queued creates, in bytes.
    max_queued_bytes: int = 64 * _MiB


class SessionState(enum.Enum):
    """Where a session is in its life.

    ``OPEN`` serves frames. ``CLOSING``: the session asked to close; frames are ignored,
    queued creates were dropped and running ones only finish. ``CLOSED``: the connection is
    gone; the cache is dropped and nothing starts or commits any more.
    """

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# -- what the session hands the driver ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One admitted ``response.create``: what a driver's task runs."""

    #: Admission order on this connection, from 0.
    number: int
    stream_id: str | None
    frame: Mapping[str, Any]
    #: The driver's receive timestamp (``perf_counter_ns``), for the gateway's timings.
    received_ns: int
    #: The frame's size in bytes (characters of a text frame), counted while it is queued.
    size: int = 0


@dataclass(frozen=True, slots=True)
class Start:
    """Run ``job`` now; tell the session with :meth:`ServerSession.finish` when it ends."""

    job: Job


@dataclass(frozen=True, slots=True)
class Queued:
    """``job`` waits on its lane (behind its running create, or for a free slot); a later
    :meth:`ServerSession.finish` starts it. Nothing for the driver to do."""

    job: Job


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` (one encoded text frame); ``error`` is set when it is an ``error``."""

    data: bytes
    error: APIError | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with ``code`` and ``reason``, then stop reading."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client cancelled the running ``job``: stop it (and so its generation) and end its
    lane's response with ``response.failed`` / ``response_cancelled``, committing nothing.
    :meth:`ServerSession.finish` follows as for any create that ends."""

    job: Job


Action = Start | Queued | Cancel | Send | Close


# -- resolving previous_response_id ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoParent:
    """The request starts a new conversation."""


@dataclass(frozen=True, slots=True)
class CacheHit:
    """The parent is in the connection's cache."""

    entry: CachedResponse


@dataclass(frozen=True, slots=True)
class StoreLookup:
    """The parent is not cached here: only the store can have it."""

    response_id: str


ParentLookup = NoParent | CacheHit | StoreLookup

NO_PARENT: Final = NoParent()


def lookup_parent(response_id: str | None, cache: ResponseCache | None) -> ParentLookup:
    """Where ``previous_response_id`` resolves: this connection's cache, else the store.

    HTTP has no connection and passes no cache, so its parents always come from the store.
    """
    if response_id is None:
        return NO_PARENT
    entry = cache.get(response_id) if cache is not None else None
    if entry is not None:
        return CacheHit(entry)
    return StoreLookup(response_id)


def evicted_by_failure(stream_id: str | None, lookup: ParentLookup) -> str | None:
    """The cached parent a failed create on lane ``stream_id`` evicts, if any.

    Only a parent found in the cache and made on the same lane: a blind retry of that
    continuation then fails the same way instead of silently resuming, while a fork that failed
    on another lane leaves the parent to the lane that owns it.
    """
    if isinstance(lookup, CacheHit) and lookup.entry.lane == stream_id:
        return lookup.entry.response_id
    return None


# -- the session --------------------------------------------------------------------------


@dataclass(slots=True)
class _Lane:
    pending: deque[Job] = field(default_factory=deque)
    active: Job | None = None
    #: A Cancel was decided for ``active`` (one per create).
    cancelled: bool = False


class ServerSession:
    """The rules of one WebSocket connection; see the module docstring.

    Every method takes the current time as ``now`` (seconds, monotonic) from the driver's
    clock. Methods that decide something return the actions to carry out, in order.
    """

    __slots__ = (
        "_active",
        "_frame_size",
        "_jobs",
        "_lanes",
        "_waiting",
        "busy",
        "cache",
        "config",
        "last_active",
        "opened_at",
        "queued",
        "queued_bytes",
        "state",
    )

    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self.cache = ResponseCache(config.cache_max_entries, config.cache_max_bytes)
        self.state = SessionState.OPEN
        self.opened_at = now
        #: When the connection last had something to do: a frame in, or a create ending.
        self.last_active = now
        #: Creates admitted and not finished (queued or running); idle only at 0.
        self.busy = 0
        self._lanes: dict[str | None, _Lane] = {}
        #: Lanes with a queued create and none running, waiting for a slot, in order.
        self._waiting: deque[str | None] = deque()
        self._active = 0
        self._jobs = 0
        #: Creates queued (admitted, not started) and the sizes of their frames.
        self.queued = 0
        self.queued_bytes = 0
        #: The size of the frame being handled by :meth:`receive`.
        self._frame_size = 0

    # -- observation ------------------------------------------------------------------------

    @property
    def named_lanes(self) -> int:
        return len(self._lanes) - (None in self._lanes)

    @property
    def active(self) -> int:
        """Creates running now (started and not finished)."""
        return self._active

    def depth(self, stream_id: str | None) -> int:
        """Creates queued or running on one lane."""
        lane = self._lanes.get(stream_id)
        if lane is None:
            return 0
        return len(lane.pending) + (lane.active is not None)

    def running(self, stream_id: str | None) -> Job | None:
        lane = self._lanes.get(stream_id)
        return lane.active if lane is not None else None

    def cancelled(self, job: Job) -> bool:
        """Whether a :class:`Cancel` was decided for ``job`` (running, not finished)."""
        lane = self._lanes.get(job.stream_id)
        return lane is not None and lane.active is job and lane.cancelled

    # -- frames -----------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float, received_ns: int = 0) -> tuple[Action, ...]:
        """One frame from the client (text or binary)."""
        if self.state is not SessionState.OPEN:
            return ()
        self.last_active = now
        limit = self.config.max_message_bytes
        size = len(data)
        if isinstance(data, str) and size * 4 > limit:
            # The limit is in bytes: a text frame may hold up to 4 UTF-8 bytes per character.
            size = len(data.encode("utf-8", "surrogatepass"))
        if size > limit:
            return self._error(
                APIError(
                    f"The message is {size} bytes; the limit is {limit} bytes.",
                    status=413,
                    code="message_too_large",
                )
            )
        self._frame_size = size
        try:
            frame = codec.decode_object(data, max_depth=codec.MAX_NESTING_DEPTH)
        except codec.NestingTooDeep:
            return self._error(
                APIError(
                    f"The frame nests arrays and objects more than {codec.MAX_NESTING_DEPTH} "
                    "levels deep.",
                    code="nesting_too_deep",
                )
            )
        except DecodeError as exc:
            return self._error(APIError(f"Invalid JSON frame: {exc}", code="invalid_json"))
        kind = frame.get("type")
        # A non-string type (a number, a list) is simply unknown; never a dictionary key.
        rule = FRAME_RULES.get(kind) if kind is None or isinstance(kind, str) else None
        if rule is None:
            rule = ServerSession._on_unknown_type
        return rule(self, frame, now, received_ns)

    def _error(self, error: APIError, stream_id: str | None = None) -> tuple[Send]:
        body = error.body()
        headers = error.headers()
        if headers:
            body["headers"] = headers
        event = WebSocketError(status=error.status, error=body, stream_id=stream_id)
        return (Send(codec.encode_event(event), error),)

    def _on_create(
        self, frame: Mapping[str, Any], now: float, received_ns: int
    ) -> tuple[Action, ...]:
        config = self.config
        raw_id = frame.get("stream_id")
        if not _valid_stream_id(raw_id):
            return self._invalid_stream_id()
        stream_id: str | None = raw_id
        if now - self.opened_at >= config.connection_lifetime:
            error = APIError(
                f"This connection reached its {config.connection_lifetime:.0f} s lifetime; "
                "open a new connection.",
                code="websocket_connection_limit_reached",
            )
            return (
                *self._error(error, stream_id),
                self._close("connection lifetime reached"),
            )
        lane = self._lanes.get(stream_id)
        size = self._frame_size
        if (
            self.queued >= config.max_queued_creates
            or self.queued_bytes + size > config.max_queued_bytes
        ) and (
            (lane is not None and (lane.active is not None or lane.pending))
            or self._waiting
            or self._active >= config.max_active_responses
        ):
            # It would wait in the queue, which is full: refused, so that what one socket
            # holds in memory stays bounded.
            return self._error(
                APIError(
                    f"This connection already has {self.queued} creates "
                    f"({self.queued_bytes} bytes) waiting; the limits are "
                    f"{config.max_queued_creates} creates and {config.max_queued_bytes} bytes. "
                    "Wait for a response to finish before sending more.",
                    status=429,
                    type="rate_limit_error",
                    code="websocket_queue_full",
                ),
                stream_id,
            )
        if lane is None:
            if stream_id is not None and self.named_lanes >= config.max_lanes:
                return self._error(
                    APIError(
                        f"This connection already has {config.max_lanes} named streams.",
                        code="websocket_stream_limit_reached",
                        param="stream_id",
                    ),
                    stream_id,
                )
            lane = self._lanes[stream_id] = _Lane()
        job = Job(self._jobs, stream_id, frame, received_ns, size)
        self._jobs += 1
        self.busy += 1
        if (
            lane.active is None
            and not lane.pending
            and not self._waiting
            and self._active < config.max_active_responses
        ):
            # The common case, a continuation on an idle lane with a free slot: it starts
            # now (what the general path below would decide, without its queue operations).
            lane.active = job
            self._active += 1
            return (Start(job),)
        lane.pending.append(job)
        self.queued += 1
        self.queued_bytes += size
        if lane.active is None and len(lane.pending) == 1:
            self._waiting.append(stream_id)
            starts = self._start_waiting()
            if starts:
                return starts
        # The lane is busy, or every slot is: the create waits its turn, never rejected.
        return (Queued(job),)

    def _invalid_stream_id(self) -> tuple[Send]:
        return self._error(
            APIError(
                "'stream_id' must be 1-256 characters of [A-Za-z0-9_.-]",
                code="invalid_stream_id",
                param="stream_id",
            )
        )

    def _on_cancel(
        self, frame: Mapping[str, Any], now: float, received_ns: int
    ) -> tuple[Action, ...]:
        raw_id = frame.get("stream_id")
        if not _valid_stream_id(raw_id):
            return self._invalid_stream_id()
        lane = self._lanes.get(raw_id)  # never creates a lane: a cancel holds nothing
        if lane is None or lane.active is None or lane.cancelled:
            # Nothing running (its response ended and its terminal event is on its way), or
            # already cancelled: nothing to do, and no error for a client racing the end.
            return ()
        lane.cancelled = True
        return (Cancel(lane.active),)

    def _on_steer(
        self, frame: Mapping[str, Any], now: float, received_ns: int
    ) -> tuple[Action, ...]:
        # Steering is not implemented; the protocol's own answer for that is
        # response.steer.failed with steering_not_supported, echoing what was sent.
        steer = {
            "previous_response_id": frame.get("previous_response_id"),
            "input": frame.get("input"),
        }
        event = SteerFailed(
            steer=steer,
            error={
                "type": "invalid_request_error",
                "code": "steering_not_supported",
                "message": "This gateway does not support response.steer.",
            },
        )
        return (Send(codec.encode_event(event)),)

    def _on_missing_type(
        self, frame: Mapping[str, Any], now: float, received_ns: int
    ) -> tuple[Action, ...]:
        return self._error(
            APIError(
                "Missing required parameter: 'type'.",
                code="missing_required_parameter",
                param="type",
            )
        )

    def _on_unknown_type(
        self, frame: Mapping[str, Any], now: float, received_ns: int
    ) -> tuple[Action, ...]:
        return self._error(
            APIError(
                f"Unknown event type {frame.get('type')!r}; "
                "expected 'response.create', 'response.cancel' or 'response.steer'.",
                code="unknown_event_type",
                param="type",
            )
        )

    # -- the life of a create ---------------------------------------------------------------

    def lookup_parent(self, response_id: str | None) -> ParentLookup:
        """Where a create's ``previous_response_id`` resolves (the cache first)."""
        return lookup_parent(response_id, self.cache)

    def commit(self, job: Job, response_id: str, conversation: Conversation, stored: bool) -> None:
        """Cache a finished response of ``job`` as the latest of its lane."""
        if self.state is not SessionState.CLOSED:
            self.cache.put(CachedResponse(response_id, conversation, job.stream_id, stored))

    def fail(
        self, job: Job, lookup: ParentLookup, error: APIError | None = None
    ) -> tuple[Action, ...]:
        """``job`` failed (before or while generating): apply the eviction rule.

        With ``error`` (a request-scoped refusal) the ``error`` frame to send comes back,
        carrying the lane's ``stream_id``; a failure while generating was already reported by
        the response's own ``response.failed``.
        """
        evicted = evicted_by_failure(job.stream_id, lookup)
        if evicted is not None:
            self.cache.evict(evicted)
        return self._error(error, job.stream_id) if error is not None else ()

    def finish(self, job: Job, now: float) -> tuple[Start, ...]:
        """``job`` ended (completed, failed, or cancelled): start what may start now."""
        lane = self._lanes.get(job.stream_id)
        if lane is None or lane.active is not job:
            raise ValueError(f"job {job.number} is not running")
        lane.active = None
        lane.cancelled = False
        self._active -= 1
        self.busy -= 1
        self.last_active = now
        if self.state is not SessionState.OPEN:
            return ()
        if lane.pending:
            self._waiting.append(job.stream_id)
        return self._start_waiting()

    def _start_waiting(self) -> tuple[Start, ...]:
        started: list[Start] = []
        while self._waiting and self._active < self.config.max_active_responses:
            lane = self._lanes[self._waiting.popleft()]
            job = lane.active = lane.pending.popleft()
            self.queued -= 1
            self.queued_bytes -= job.size
            self._active += 1
            started.append(Start(job))
        return tuple(started)

    # -- time and the end -------------------------------------------------------------------

    def timeout(self, now: float) -> float:
        """Seconds until the driver should call :meth:`timer` if no frame arrives."""
        idle = self.config.idle_timeout
        if self.busy:
            # Wake up even while busy: a create that ends during this wait makes the
            # connection idle again without any frame arriving.
            return idle
        return max(0.0, self.last_active + idle - now)

    def timer(self, now: float) -> tuple[Action, ...]:
        """The wait of :meth:`timeout` ran out: close the connection if it is idle."""
        if (
            self.state is not SessionState.OPEN
            or self.busy
            or now - self.last_active < self.config.idle_timeout
        ):
            return ()
        return (self._close("idle timeout"),)

    def _close(self, reason: str) -> Close:
        self.state = SessionState.CLOSING
        self._drop_queued()
        return Close(CLOSE_GOING_AWAY, reason)

    def connection_lost(self) -> None:
        """The socket is gone: drop the queue and the cache; running creates get cancelled."""
        self.state = SessionState.CLOSED
        self._drop_queued()
        self.cache.clear()

    def _drop_queued(self) -> None:
        for lane in self._lanes.values():
            self.busy -= len(lane.pending)
            lane.pending.clear()
        self._waiting.clear()
        self.queued = 0
        self.queued_bytes = 0


def _valid_stream_id(raw: object) -> bool:
    """``None`` (the default lane) or 1-256 characters of ``[A-Za-z0-9_.-]``."""
    return raw is None or (isinstance(raw, str) and STREAM_ID_PATTERN.fullmatch(raw) is not None)


_FrameRule = Callable[[ServerSession, Mapping[str, Any], float, int], tuple[Action, ...]]

#: A frame's ``type`` → what the session does with it; any other type is unknown.
FRAME_RULES: Final[Mapping[str | None, _FrameRule]] = {
    "response.create": ServerSession._on_create,
    "response.cancel": ServerSession._on_cancel,
    "response.steer": ServerSession._on_steer,
    None: ServerSession._on_missing_type,
}
