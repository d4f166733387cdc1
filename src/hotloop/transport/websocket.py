"""The Responses API in WebSocket mode: one persistent socket, only new items per turn.

:class:`WebSocketTransport` is a driver: it moves frames between a picows socket and a
:class:`~hotloop.protocol.client_session.ClientSession`, which decides everything else. A turn
that continues a response made on the *current* socket sends only the new items plus
``previous_response_id``; every other turn (the first, or any after a reconnect) sends the
whole history, because the server's connection-scoped cache died with the old socket.

Recovery is transparent when it is safe (the session's
:data:`~hotloop.protocol.client_session.WEBSOCKET_RULES`):

* ``previous_response_not_found`` before any event of the turn → the same request again with
  the full history, on the same socket;
* ``websocket_connection_limit_reached`` (the 60-minute lifetime) → a new socket, full history;
* the socket drops (or the server closes it with 1001, going away) before any event of the
  turn arrived → reconnect, full history;
* the server cannot be reached (a gateway restarting) → connect again with exponential
  backoff and jitter until ``reconnect_timeout`` (30 s) has passed, then ``connect_failed``.

A drop after events were delivered raises :class:`TransportError` with ``replay_safe=True``:
the runner decides (it may have started tools from that partial turn already).

Concurrent turns (several runs over one transport) use lanes: named lanes ``stream_id`` =
``hl-1`` … ``hl-N``, then the default lane; a continuation gets the lane of the response it
continues when that lane is free. There is no reader task: the socket's protocol callback
decodes each message and hands the event, by ``stream_id``, straight to the turn's
``on_event`` (:meth:`WebSocketTransport.stream_to`), so a streamed token wakes no task and
never reaches the session. When no live turn wants events of some type (``skip``: the runner
has no use for argument deltas, for instance, since ``arguments.done`` carries the whole
arguments), they are recognised by their first bytes and dropped unread.

A turn abandoned before its response ended (its task cancelled: a hedge that lost, a
deadline; or its ``on_event`` raised) sends ``{"type": "response.cancel", "stream_id": lane}``
(a hotloop gateway extension) while the socket is open: the gateway stops generating and ends
the response with ``response.failed`` / ``response_cancelled``. The lane stays out of use only
until that lane's terminal event (``response.completed`` / ``failed`` / ``incomplete`` or
``error``) arrives, so no late event of the old response can reach the lane's next turn; the
socket and its connection cache stay. If the socket changes first, the lane is freed then.

Otherwise the lane is *retired*: out of use until the socket changes, and a socket with no
turn left is closed (which is what stops a server that cannot cancel, and what recovers a
stalled socket). That happens to a turn that had no event yet (a silent server: only a fresh
socket helps), to a cancel whose end does not come within ``cancel_timeout`` (the socket may
be stalled), and to every abandoned turn once the server showed it does not know the frame:
it answers an ``error`` about the frame's ``type`` (``unknown_event_type``), which is
recognised and dropped (never handed to a live turn, even without a ``stream_id``), and no
more cancels are sent on this transport.

An ``error`` that names no lane, when the default lane has no turn waiting for its response to
start, answers a frame the server could not read (one over its size limit): it goes to the turn
that sent it, the only turn on the socket with no event yet; with several, it waits until all
but one of them got an event.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from hotloop.errors import HotloopError
from hotloop.protocol.client_session import (
    WEBSOCKET_RULES,
    Action,
    Chaining,
    ClientSession,
    Failure,
    connection_failure,
    error_failure,
    is_transient,
    retry_after,
)
from hotloop.transport.base import (
    RECONNECT_TIMEOUT,
    Backoff,
    ModelRequest,
    OnEvent,
    PushingTransport,
    TransportError,
    TransportStats,
    refusal_message,
    request_headers,
)
from hotloop.wire import codec
from hotloop.wire.events import ERROR_EVENTS, RESPONSE_END_EVENTS, Event, WebSocketError

__all__ = ["CANCEL_TIMEOUT", "WebSocketTransport", "request_body"]

#: Seconds a cancelled response's lane waits for that response's end before the socket is
#: suspected (stalled) and the lane retired until the socket changes.
CANCEL_TIMEOUT = 5.0
#: The events that end a response's stream on its lane: its own end, or an ``error``.
_LANE_ENDS = RESPONSE_END_EVENTS | ERROR_EVENTS
_CLOSED_MESSAGE = "the WebSocket closed during the turn"
#: Incoming messages have no practical size limit (the SDKs use ``max_size=None``).
_MAX_FRAME_BYTES = 1 << 30


def request_body(request: ModelRequest, *, incremental: bool, store: bool | None) -> dict[str, Any]:
    """The Responses request body of ``request``: incremental or with the whole history."""
    items = request.new_items if incremental else request.history
    body: dict[str, Any] = {
        "model": request.model,
        "input": [item.to_dict() for item in items],
    }
    if request.instructions is not None:
        body["instructions"] = request.instructions
    if request.tools:
        body["tools"] = list(request.tools)
    if incremental and request.previous_response_id is not None:
        body["previous_response_id"] = request.previous_response_id
    if store is not None:
        body["store"] = store
    body.update(request.settings)
    return body


class _Turn:
    """One in-flight send of a turn on a lane: the protocol callback hands it each event.

    Ordinary events go straight to the caller's ``on_event``, inside the callback: no queue and
    no task switch per streamed token, and no call into the session. The turn's task waits on
    one future, settled by the first of: a terminal event, an error event, the socket closing
    (a :class:`Failure`), or ``on_event`` raising.
    """

    __slots__ = ("delivered", "ended", "future", "generation", "on_event")

    def __init__(self, generation: int, on_event: OnEvent) -> None:
        self.generation = generation
        self.on_event = on_event
        self.delivered = False
        #: The response's terminal event (or an error) arrived: nothing more comes on the lane.
        self.ended = False
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def receive(self, event: Event) -> None:
        future = self.future
        kind = type(event)
        if future.done():
            # Settled (cancelled, or its caller raised): whatever still arrives is not the
            # caller's, but whether the response ended decides what happens to the lane.
            if kind in _LANE_ENDS:
                self.ended = True
            return
        if kind in ERROR_EVENTS:
            self.ended = True
            future.set_result(event)  # stream_to decides: retry, or raise
            return
        self.delivered = True
        if kind in RESPONSE_END_EVENTS:
            self.ended = True
            try:
                self.on_event(event)
            except Exception as exc:
                future.set_exception(exc)
                return
            future.set_result(event)
            return
        try:
            self.on_event(event)
        except Exception as exc:
            future.set_exception(exc)

    def closed(self, failure: Failure) -> None:
        if not self.future.done():
            self.future.set_result(failure)


class _Listener(WSListener):
    """picows callbacks of one socket: reassemble messages, hand them to the transport.

    Frames are handled in the protocol callback itself, with no reader task in between: one
    task switch less per streamed token.
    """

    def __init__(self, owner: WebSocketTransport, generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.fragments: list[bytes] | None = None
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                self.owner._deliver(frame.get_payload_as_bytes(), self.generation)
            else:
                self.fragments = [frame.get_payload_as_bytes()]
        elif kind is WSMsgType.CONTINUATION and self.fragments is not None:
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload, self.fragments = b"".join(self.fragments), None
                self.owner._deliver(payload, self.generation)
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = code.value
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner._disconnected(transport, self.generation, self.close_code)


class WebSocketTransport(PushingTransport):
    """A persistent, reconnecting WebSocket-mode connection; see the module docstring.

    ``url`` is the WebSocket URL of ``/v1/responses`` (``ws://host:port/v1/responses``).
    ``store`` is sent with every request (``False`` by default: state stays in the
    connection cache and never touches the server's storage). ``session`` holds the
    connection's state and rules (which ids live on the socket, which lanes are free).

    ``open_timeout`` bounds one opening handshake. A server that cannot be reached (refused,
    reset, handshake timed out, or an upgrade refused with 429 or 5xx) is tried again with
    :class:`~hotloop.transport.base.Backoff` until ``reconnect_timeout`` seconds have passed,
    then :class:`TransportError` ``connect_failed`` is raised; any other refused upgrade (401,
    403, 404, ...) is raised at once.

    ``cancel_timeout`` bounds the wait for the end of a response this transport cancelled
    (see the module docstring): past it, the socket may be stalled, and the lane is retired
    until the socket changes (a socket with no turn left is then closed).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        store: bool | None = False,
        max_lanes: int = 8,
        open_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        cancel_timeout: float = CANCEL_TIMEOUT,
    ) -> None:
        if reconnect_timeout < 0 or cancel_timeout < 0:
            raise ValueError("reconnect_timeout and cancel_timeout must not be negative")
        self.url = url
        self.reconnect_timeout = reconnect_timeout
        self.cancel_timeout = cancel_timeout
        self.store = store
        self.stats = TransportStats()
        self._headers = request_headers(api_key, headers)
        self._ssl_context = ssl_context
        self._open_timeout = open_timeout
        self.session = ClientSession(
            WEBSOCKET_RULES,
            Chaining.CONNECTION,
            lanes=[*(f"hl-{i}" for i in range(1, max_lanes + 1)), None],
        )
        self._socket: WSTransport | None = None
        self._connect_lock = asyncio.Lock()
        self._turns: dict[str | None, _Turn] = {}
        #: Errors naming no lane while several turns waited for their first event: the turns
        #: one of them answers (see _unanswered).
        self._orphans: list[tuple[Event, set[_Turn]]] = []
        self._lane_waiters: deque[asyncio.Future[None]] = deque()
        # What each live turn's caller said it has no use for (``skip``); a message of a type
        # that no live turn wants is dropped unread, recognised by its first bytes.
        self._skips: dict[object, frozenset[str]] = {}
        self._drop: tuple[bytes, ...] = ()
        # Lanes whose turn was abandoned mid-response and whose response was asked to stop
        # (``response.cancel``), with the generation of their socket and the timer of
        # ``cancel_timeout``: each stays out of use until its terminal event arrives, or the
        # socket changes, or the timer retires it.
        self._cancelling: dict[str | None, tuple[int, asyncio.TimerHandle]] = {}
        # Whether the server may understand ``response.cancel`` (until it says it does not),
        # and whether one was ever sent (only then can an error be the answer to one).
        self._can_cancel = True
        self._cancel_sent = False
        # Lanes abandoned mid-response that could not be cancelled: the server may still
        # stream on them, so they stay out of use until the socket changes.
        self._retired: list[str | None] = []
        self._closed = False

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket now (otherwise the first turn opens it): a warm start."""
        await self._ensure_socket()

    async def _ensure_socket(self) -> WSTransport:
        socket = self._socket
        if socket is not None:
            return socket
        async with self._connect_lock:
            if self._socket is not None:
                return self._socket
            if self._closed:
                raise TransportError("the transport is closed", code="closed")
            generation = self.session.connecting()
            backoff = Backoff(self.reconnect_timeout)
            while True:
                if self._closed:
                    raise TransportError("the transport is closed", code="closed")
                try:
                    socket, _ = await ws_connect(
                        lambda: _Listener(self, generation),
                        self.url,
                        extra_headers=self._headers,
                        ssl_context=self._ssl_context,
                        websocket_handshake_timeout=self._open_timeout,
                        max_frame_size=_MAX_FRAME_BYTES,
                        # Keepalive as the SDKs do it: a ping after 20 s of silence, 20 s to
                        # answer.
                        enable_auto_ping=True,
                        auto_ping_idle_timeout=20,
                        auto_ping_reply_timeout=20,
                    )
                    if socket.is_disconnected:
                        # picows returns a closed transport when the peer hangs up without
                        # answering the upgrade (a proxy or load balancer with no backend).
                        raise ConnectionResetError("the server closed the connection unanswered")
                    break
                except WSInvalidStatusError as exc:
                    response = exc.response
                    status = int(response.status) if response is not None else None
                    body = exc.raw_body or b""
                    # A 429 or 503 may say how long to stay away: not less than that.
                    asked = retry_after(response.headers) if response is not None else None
                    if is_transient(status) and await backoff.wait(asked or 0.0):
                        continue
                    raise TransportError(
                        refusal_message(self.url, status, body, websocket=True),
                        code=_error_code(body),
                        status=status,
                    ) from exc
                except (OSError, WSError, TimeoutError) as exc:
                    if not await backoff.wait():
                        raise TransportError(
                            f"cannot connect to {self.url}: {backoff.attempts} attempts in "
                            f"{self.reconnect_timeout} s failed, the last with {exc!r}",
                            code="connect_failed",
                        ) from exc
            self.session.connected(generation)
            if self.stats.connections_opened:
                self.stats.reconnects += 1
            self.stats.connections_opened += 1
            self._socket = socket
            return socket

    def _deliver(self, payload: bytes, generation: int) -> None:
        """A whole message arrived: route its event to the turn waiting on its lane."""
        drop = self._drop
        if drop and payload.startswith(drop):
            return  # no live turn wants it: not even decoded
        try:
            event = codec.decode_event(payload)
        except HotloopError:
            return  # a frame we cannot read cannot belong to a waiting turn
        if self._cancel_sent and type(event) in ERROR_EVENTS and _refuses_cancel(event):
            self._cancel_refused()  # the answer to a cancel, whatever lane it names
            return
        turn = self._turns.get(event.stream_id)
        # The default lane's own errors come before its response starts: an error naming no
        # lane after that answers another lane's frame the server could not read.
        laneless = event.stream_id is None and type(event) in ERROR_EVENTS
        if laneless and (turn is None or turn.delivered):
            turn = self._unanswered(event, generation)
        if turn is not None and turn.generation == generation:
            turn.receive(event)
            if self._orphans:
                self._answered(turn)
        elif self._cancelling:
            self._cancel_settled(event, generation)

    def _unanswered(self, event: Event, generation: int) -> _Turn | None:
        """The turn an ``error`` without ``stream_id`` answers, when the default lane has no
        turn waiting for its response to start.

        A server names no lane when it could not read the frame (one over its size limit), so
        the error answers the frame of a turn on this socket with no event yet. With one such
        turn, it is that turn's; with several, it is kept until all but one of them got an
        event of their own (:meth:`_answered`), and no turn is failed for another's frame.
        """
        waiting = {
            turn
            for turn in self._turns.values()
            if turn.generation == generation and not turn.delivered and not turn.future.done()
        }
        if len(waiting) == 1:
            return waiting.pop()
        if waiting:
            self._orphans.append((event, waiting))
        return None

    def _answered(self, turn: _Turn) -> None:
        """``turn`` got an event: it did not send the frame a kept laneless error answers."""
        kept: list[tuple[Event, set[_Turn]]] = []
        for event, candidates in self._orphans:
            waiting = {
                other for other in candidates if other is not turn and not other.future.done()
            }
            if len(waiting) == 1:
                waiting.pop().receive(event)
            elif waiting:
                kept.append((event, waiting))
        self._orphans = kept

    def _disconnected(self, socket: WSTransport, generation: int, close_code: int | None) -> None:
        if self._socket is socket:
            self._socket = None
            self._free_retired()
        self.session.disconnected(generation)
        self._orphans = [
            orphan for orphan in self._orphans if next(iter(orphan[1])).generation != generation
        ]
        failure = connection_failure(_CLOSED_MESSAGE, close_code=close_code)
        for turn in list(self._turns.values()):
            if turn.generation == generation:
                turn.closed(failure)

    async def drop(self) -> None:
        """Close the current socket; the next turn reconnects and re-sends the history."""
        socket = self._drop_now()
        if socket is not None:
            await socket.wait_disconnected()

    def _drop_now(self) -> WSTransport | None:
        socket = self._socket
        self._socket = None
        self._free_retired()
        if socket is not None:
            self.session.disconnected(self.session.generation)
            socket.send_close(WSCloseCode.OK)
            socket.disconnect()
        return socket

    def _free_retired(self) -> None:
        """The socket changed: nothing of the old one can reach a lane any more."""
        retired, self._retired = self._retired, []
        retired.extend(self._stop_cancelling())
        for lane in retired:
            self._release_lane(lane)

    def _abandon(self, lane: str | None, live: _Turn | None) -> None:
        """The turn on ``lane`` ended before its response did (cancelled, or its ``on_event``
        raised); ``live`` is its last send.

        If the response ended after all, or its socket is gone, the lane is free now. Else,
        once an event of it arrived, the server is asked to cancel it and the lane waits for
        its terminal event. Otherwise (a server that cannot cancel, or one that never
        answered this turn: a silent socket, which only a fresh one recovers) the lane leaves
        the socket: alone on it, the socket is closed (the next turn opens a fresh one, and
        the server stops generating); else the lane stays unused until the socket changes,
        or until no turn is left on it.
        """
        socket = self._socket
        if (
            live is None
            or live.ended
            or socket is None
            or socket.is_disconnected
            or live.generation != self.session.generation
        ):
            self._release_lane(lane)
            if self._retired and not self._turns:
                self._drop_now()
            return
        if self._can_cancel and live.delivered:
            frame: dict[str, Any] = {"type": "response.cancel"}
            if lane is not None:
                frame["stream_id"] = lane
            socket.send(WSMsgType.TEXT, codec.dumps(frame))
            self._cancel_sent = True
            self.stats.cancels += 1
            timer = asyncio.get_running_loop().call_later(
                self.cancel_timeout, self._cancel_overdue, lane, live.generation
            )
            self._cancelling[lane] = (live.generation, timer)
            return
        self._retired.append(lane)
        if not self._turns:
            self._drop_now()

    def _cancel_settled(self, event: Event, generation: int) -> None:
        """An event for no live turn: a lane being cancelled is free once its response ends."""
        lane = event.stream_id
        waiting = self._cancelling.get(lane)
        if waiting is not None and waiting[0] == generation and type(event) in _LANE_ENDS:
            del self._cancelling[lane]
            waiting[1].cancel()
            self._release_lane(lane)

    def _cancel_overdue(self, lane: str | None, generation: int) -> None:
        """No end came for the cancelled response on ``lane`` within ``cancel_timeout``: the
        socket may be stalled, so the lane is retired (until the socket changes), and a
        socket with no turn left is closed, as for a response that could not be cancelled."""
        waiting = self._cancelling.get(lane)
        if waiting is None or waiting[0] != generation:
            return
        del self._cancelling[lane]
        self._retired.append(lane)
        if not self._turns:
            self._drop_now()

    def _cancel_refused(self) -> None:
        """The server does not know ``response.cancel``: no more cancels on this transport;
        the lanes waiting for one are retired until the socket changes."""
        self._can_cancel = False
        self._retired.extend(self._stop_cancelling())
        if self._retired and not self._turns:
            self._drop_now()

    def _stop_cancelling(self) -> list[str | None]:
        """Forget every lane waiting for a cancelled response's end; return them."""
        lanes = list(self._cancelling)
        for _, timer in self._cancelling.values():
            timer.cancel()
        self._cancelling.clear()
        return lanes

    async def close(self) -> None:
        """Close the socket; turns after this raise ``TransportError`` ``closed``."""
        self._closed = True
        await self.drop()

    # -- lanes -----------------------------------------------------------------------------

    async def _acquire_lane(self, previous_response_id: str | None = None) -> str | None:
        session = self.session
        while not session.has_free_lane:
            waiter = asyncio.get_running_loop().create_future()
            self._lane_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_lane_waiter()  # woken, then cancelled: pass the lane on
                raise
            finally:
                if waiter in self._lane_waiters:
                    self._lane_waiters.remove(waiter)
        return session.acquire_lane(previous_response_id)

    def _release_lane(self, lane: str | None) -> None:
        self.session.release_lane(lane)
        self._wake_lane_waiter()

    def _wake_lane_waiter(self) -> None:
        while self._lane_waiters:
            waiter = self._lane_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- one turn --------------------------------------------------------------------------

    def _skipping(self, token: object, skip: frozenset[str] | None) -> None:
        if skip is None:
            del self._skips[token]
        else:
            self._skips[token] = skip
        common = frozenset.intersection(*self._skips.values()) if self._skips else frozenset()
        self._drop = codec.skipped_prefixes(common)

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        session = self.session
        previous = request.previous_response_id
        lane = await self._acquire_lane(previous)
        token = object()
        self._skipping(token, frozenset(skip))
        abandoned = False
        live: _Turn | None = None
        try:
            turn = session.start_turn(previous, request.new_from, lane)
            timings = request.timings
            stats = self.stats
            while True:
                if timings is not None and self._socket is None:
                    timings.connect_start_ns = time.perf_counter_ns()
                    socket = await self._ensure_socket()
                    timings.connect_end_ns = time.perf_counter_ns()
                else:
                    socket = await self._ensure_socket()
                send = session.next_send(turn)
                incremental = send.incremental
                body = request_body(request, incremental=incremental, store=self.store)
                body["type"] = "response.create"
                if lane is not None:
                    body["stream_id"] = lane
                frame = codec.dumps(body)
                if timings is not None:
                    timings.encoded_ns = time.perf_counter_ns()
                live = _Turn(send.generation, on_event)
                self._turns[lane] = live
                try:
                    if socket.is_disconnected:
                        live.closed(connection_failure(_CLOSED_MESSAGE))
                    else:
                        socket.send(WSMsgType.TEXT, frame)
                    if timings is not None:
                        timings.sent_ns = time.perf_counter_ns()
                        timings.body_bytes = len(frame)
                        timings.incremental = incremental
                    stats.requests += 1
                    stats.bytes_sent += len(frame)
                    if incremental:
                        stats.incremental_requests += 1
                    else:
                        stats.full_resends += 1
                    try:
                        end = await live.future
                    except BaseException:
                        # Cancelled, or on_event raised: the response may still stream on
                        # this lane.
                        abandoned = True
                        raise
                finally:
                    if self._turns.get(lane) is live:
                        del self._turns[lane]
                if type(end) in RESPONSE_END_EVENTS:
                    session.finished(turn, end.type, end.response.id)
                    return
                if not isinstance(end, Failure):
                    end = error_failure(
                        f"the server answered an error: {end.message}",
                        code=end.code,
                        status=getattr(end, "status", None),
                        retry_after=_retry_after(end),
                    )
                # Raises TransportError unless the rules say to send the turn again.
                action = session.failed(turn, end, delivered=live.delivered)
                if action is Action.RESEND_FULL:
                    stats.cache_misses += 1
                elif action is Action.RECONNECT and self._socket is socket:
                    await self.drop()  # unless it is already gone, or another turn replaced it
        finally:
            self._skipping(token, None)
            if abandoned:
                self._abandon(lane, live)
            else:
                self._release_lane(lane)
                if self._retired and not self._turns:
                    self._drop_now()


def _error_code(body: bytes | None) -> str | None:
    return codec.error_body(body or b"")[1]


def _retry_after(event: Event) -> float | None:
    """The wait an error event asked for: the envelope's ``error.headers`` (how the WebSocket
    ``error`` carries an HTTP error's headers), else its message."""
    if isinstance(event, WebSocketError):
        headers = event.error.get("headers")
        if isinstance(headers, Mapping):
            lowered = {str(name).lower(): str(value) for name, value in headers.items()}
            return retry_after(lowered, event.message)
    return retry_after(None, getattr(event, "message", None))


def _refuses_cancel(event: Event) -> bool:
    """Whether an ``error`` answers a ``response.cancel`` the server does not know.

    The transport sends only two frame types, and ``response.create`` is always known: an
    error about a frame's ``type`` (``unknown_event_type``, or ``param: "type"``) can only be
    about a cancel.
    """
    if getattr(event, "code", None) == "unknown_event_type":
        return True
    if isinstance(event, WebSocketError):
        return event.error.get("param") == "type"
    return getattr(event, "param", None) == "type"
