"""The Responses API in WebSocket mode: one persistent socket, only new items per turn.

:class:`WebSocketTransport` opens its socket once and keeps it. A turn that continues a
response made on the *current* socket sends only the new items plus ``previous_response_id``;
every other turn (the first, or any after a reconnect) sends the whole history, because the
server's connection-scoped cache died with the old socket (``protocol.md`` §3.5, §3.9).

Recovery is transparent when it is safe:

* ``previous_response_not_found`` before any event of the turn → the same request again with
  the full history, on the same socket;
* ``websocket_connection_limit_reached`` (the 60-minute lifetime) → a new socket, full history;
* the socket drops before any event of the turn arrived → reconnect, full history.

A drop after events were delivered raises :class:`TransportError` with ``replay_safe=True``:
the runner decides (it may have started tools from that partial turn already).

Concurrent turns (several runs over one transport) use lanes: the default lane first, then
named lanes ``stream_id`` = ``hl-1`` … ``hl-N``; one reader task routes events by
``stream_id``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
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
from hotloop.transport.base import ModelRequest, TransportError, TransportStats
from hotloop.wire import codec
from hotloop.wire.events import (
    ErrorEvent,
    Event,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
    WebSocketError,
)

__all__ = ["WebSocketTransport", "request_body"]

_CLOSED = object()
_MAX_LIVE_IDS = 4096
_CONNECT_ATTEMPTS = 3
#: Incoming messages have no practical size limit (the SDKs use ``max_size=None``, §7).
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


class _Waiter:
    """The inbox of one in-flight turn: the reader appends, the turn's stream takes.

    A deque and one wake-up future per empty wait: measurably cheaper per event than an
    ``asyncio.Queue``, which matters at one event per streamed token.
    """

    __slots__ = ("_items", "_wakeup", "generation")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self._items: deque[Any] = deque()
        self._wakeup: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        self._items.append(item)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._items.popleft()


class _Listener(WSListener):
    """picows callbacks of one socket: reassemble messages, hand them to the transport.

    Frames are handled in the protocol callback itself, with no reader task in between: one
    task switch less per streamed token.
    """

    def __init__(self, owner: WebSocketTransport, generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.fragments: list[bytes] | None = None

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
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner._disconnected(transport, self.generation)


class WebSocketTransport:
    """A persistent, reconnecting WebSocket-mode connection; see the module docstring.

    ``url`` is the WebSocket URL of ``/v1/responses`` (``ws://host:port/v1/responses``).
    ``store`` is sent with every request (``False`` by default: state stays in the
    connection cache and never touches the server's storage).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        store: bool | None = False,
        max_lanes: int = 8,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.store = store
        self.stats = TransportStats()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._open_timeout = open_timeout
        self._socket: WSTransport | None = None
        self._generation = 0
        self._connect_lock = asyncio.Lock()
        self._live: OrderedDict[str, int] = OrderedDict()
        self._waiters: dict[str | None, _Waiter] = {}
        self._free_lanes: list[str | None] = [None, *(f"hl-{i}" for i in range(max_lanes, 0, -1))]
        self._lane_available = asyncio.Condition()
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
            generation = self._generation + 1
            last: BaseException | None = None
            for attempt in range(_CONNECT_ATTEMPTS):
                try:
                    socket, _ = await ws_connect(
                        lambda: _Listener(self, generation),
                        self.url,
                        extra_headers=self._headers,
                        websocket_handshake_timeout=self._open_timeout,
                        max_frame_size=_MAX_FRAME_BYTES,
                        # Keepalive as the SDKs do it: a ping after 20 s of silence, 20 s to
                        # answer (protocol.md §7).
                        enable_auto_ping=True,
                        auto_ping_idle_timeout=20,
                        auto_ping_reply_timeout=20,
                    )
                    break
                except WSInvalidStatusError as exc:
                    status = int(exc.response.status) if exc.response is not None else None
                    body = exc.raw_body or b""
                    raise TransportError(
                        f"the server refused the WebSocket upgrade with HTTP {status}: {body!r}",
                        code=_error_code(body),
                        status=status,
                    ) from exc
                except (OSError, WSError, TimeoutError) as exc:
                    last = exc
                    await asyncio.sleep(0.05 * 2**attempt)
            else:
                raise TransportError(
                    f"cannot connect to {self.url}: {last!r}", code="connect_failed"
                ) from last
            self._generation = generation
            if self.stats.connections_opened:
                self.stats.reconnects += 1
            self.stats.connections_opened += 1
            self._socket = socket
            return socket

    def _deliver(self, payload: bytes, generation: int) -> None:
        """A whole message arrived: route its event to the turn waiting on its lane."""
        try:
            event = codec.decode_event(payload)
        except HotloopError:
            return  # a frame we cannot read cannot belong to a waiting turn
        waiter = self._waiters.get(event.stream_id)
        if waiter is not None and waiter.generation == generation:
            waiter.put(event)

    def _disconnected(self, socket: WSTransport, generation: int) -> None:
        if self._socket is socket:
            self._socket = None
        for waiter in list(self._waiters.values()):
            if waiter.generation == generation:
                waiter.put(_CLOSED)

    async def drop(self) -> None:
        """Close the current socket; the next turn reconnects and re-sends the history."""
        socket = self._socket
        self._socket = None
        if socket is not None:
            socket.send_close(WSCloseCode.OK)
            socket.disconnect()
            await socket.wait_disconnected()

    async def aclose(self) -> None:
        self._closed = True
        await self.drop()

    # -- lanes -----------------------------------------------------------------------------

    async def _acquire_lane(self) -> str | None:
        async with self._lane_available:
            while not self._free_lanes:
                await self._lane_available.wait()
            return self._free_lanes.pop()

    async def _release_lane(self, lane: str | None) -> None:
        async with self._lane_available:
            self._free_lanes.append(lane)
            self._lane_available.notify()

    # -- one turn --------------------------------------------------------------------------

    def _remember(self, response_id: str) -> None:
        self._live[response_id] = self._generation
        if len(self._live) > _MAX_LIVE_IDS:
            self._live.popitem(last=False)

    async def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        # One generator from socket to runner: every streamed token passes through it.
        lane = await self._acquire_lane()
        try:
            previous = request.previous_response_id
            incremental = previous is not None and self._live.get(previous) == self._generation
            timings = request.timings
            attempts = 0
            while True:
                attempts += 1
                if timings is not None and self._socket is None:
                    timings.connect_start_ns = time.perf_counter_ns()
                    socket = await self._ensure_socket()
                    timings.connect_end_ns = time.perf_counter_ns()
                else:
                    socket = await self._ensure_socket()
                if incremental and self._live.get(previous or "") != self._generation:
                    incremental = False  # the socket changed under us
                body = request_body(request, incremental=incremental, store=self.store)
                body["type"] = "response.create"
                if lane is not None:
                    body["stream_id"] = lane
                frame = codec.dumps(body)
                if timings is not None:
                    timings.encoded_ns = time.perf_counter_ns()
                waiter = _Waiter(self._generation)
                self._waiters[lane] = waiter
                try:
                    if socket.is_disconnected:
                        waiter.put(_CLOSED)
                    else:
                        socket.send(WSMsgType.TEXT, frame)
                    if timings is not None:
                        timings.sent_ns = time.perf_counter_ns()
                        timings.body_bytes = len(frame)
                        timings.incremental = incremental
                    self.stats.requests += 1
                    self.stats.bytes_sent += len(frame)
                    if incremental:
                        self.stats.incremental_requests += 1
                    else:
                        self.stats.full_resends += 1
                    delivered = False
                    retry = False
                    while True:
                        event = await waiter.get()
                        if event is _CLOSED:
                            if delivered or attempts >= _CONNECT_ATTEMPTS:
                                raise TransportError(
                                    "the WebSocket closed during the turn",
                                    code="connection_lost",
                                    replay_safe=True,
                                )
                            retry, incremental = True, False
                            break
                        if isinstance(event, (WebSocketError, ErrorEvent)):
                            code = event.code
                            if (
                                not delivered
                                and code == "previous_response_not_found"
                                and incremental
                            ):
                                self.stats.cache_misses += 1
                                retry, incremental = True, False
                                break
                            if not delivered and code == "websocket_connection_limit_reached":
                                await self.drop()
                                retry, incremental = True, False
                                break
                            status = getattr(event, "status", None)
                            # As over HTTP: only a transient refusal is worth sending again;
                            # a request error (model_not_found, bad input) would fail the same way.
                            transient = status is not None and (
                                status in (408, 409, 429) or status >= 500
                            )
                            raise TransportError(
                                f"the server answered an error: {event.message}",
                                code=code,
                                status=status,
                                replay_safe=not delivered and transient,
                            )
                        delivered = True
                        yield event
                        if isinstance(
                            event, ResponseCompleted | ResponseIncomplete | ResponseFailed
                        ):
                            if isinstance(event, ResponseCompleted | ResponseIncomplete):
                                self._remember(event.response.id)
                            return
                finally:
                    if self._waiters.get(lane) is waiter:
                        del self._waiters[lane]
                if not retry:
                    return
        finally:
            await self._release_lane(lane)


def _error_code(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        data = codec.loads(body)
    except HotloopError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
