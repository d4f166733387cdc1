"""WebSocket mode on ``/v1/responses`` (``protocol.md`` §3).

One :class:`Connection` per socket owns that socket's :class:`~hotloop.gateway.cache.ResponseCache`
and its lanes. Frames are read by one loop; each ``response.create`` is queued on its lane
(``stream_id``), and one worker task per lane runs them FIFO while different lanes run
concurrently, at most ``max_active_responses`` at a time. Request-scoped errors become ``error``
events carrying the lane's ``stream_id`` and the socket stays usable; connection-level errors
(invalid JSON, unknown event type) carry no ``stream_id``. When the client goes away every
lane worker is cancelled, which cancels its generation, and the cache is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from hotloop.errors import APIError, DecodeError
from hotloop.gateway.cache import CachedResponse, ResponseCache
from hotloop.gateway.core import Gateway
from hotloop.gateway.requests import STREAM_ID_PATTERN, parse_create
from hotloop.protocol.conversation import Conversation
from hotloop.wire import codec
from hotloop.wire.events import ResponseFailed, SteerFailed, WebSocketError
from hotloop.wire.responses import ResponseObject

__all__ = ["Connection", "serve_websocket"]

#: Close codes (RFC 6455 §7.4.1): 1001 "going away" lets the SDKs reconnect (P13).
CLOSE_GOING_AWAY = 1001

_CLIENT_GONE = (WebSocketDisconnect, RuntimeError, ConnectionError)


@dataclass(slots=True)
class _Lane:
    stream_id: str | None
    queue: asyncio.Queue[tuple[dict[str, Any], int]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class Connection:
    """The session of one WebSocket connection: its cache, lanes and limits."""

    def __init__(self, gateway: Gateway, websocket: WebSocket) -> None:
        config = gateway.config
        self.gateway = gateway
        self.websocket = websocket
        self.cache = ResponseCache(config.cache_max_entries, config.cache_max_bytes)
        self.lanes: dict[str | None, _Lane] = {}
        self.active = asyncio.Semaphore(config.max_active_responses)
        self.opened_at = time.monotonic()
        self.busy = 0
        #: When the socket last had something to do (a frame in, or its last response out).
        self.last_active = self.opened_at
        self.closing = False

    # -- sending --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        await self.websocket.send_text(data.decode())

    async def send_error(self, error: APIError, stream_id: str | None = None) -> None:
        """Send the WS ``error`` envelope (nested ``error`` object, §3.3 and P5)."""
        self.gateway.metrics.errors.labels("websocket", error.code or error.type).inc()
        event = WebSocketError(status=error.status, error=error.body(), stream_id=stream_id)
        await self.send(codec.encode_event(event))

    # -- the read loop --------------------------------------------------------------------

    async def serve(self) -> None:
        config = self.gateway.config
        try:
            while True:
                # Wake up at the idle deadline even while busy: a response that ends during
                # this wait makes the socket idle again without any frame arriving.
                timeout = config.idle_timeout
                if not self.busy:
                    timeout = max(0.0, self.last_active + timeout - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        message = await self.websocket.receive()
                except TimeoutError:
                    if self.busy or time.monotonic() - self.last_active < config.idle_timeout:
                        continue
                    await self.websocket.close(CLOSE_GOING_AWAY, "idle timeout")
                    return
                self.last_active = time.monotonic()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    return
                received_ns = time.perf_counter_ns()
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await self.handle_frame(data, received_ns)
                if self.closing:
                    await self.websocket.close(CLOSE_GOING_AWAY, "connection lifetime reached")
                    return
        except _CLIENT_GONE:
            return
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Cancel every lane (and so every generation) and drop the cache."""
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.lanes.clear()
        self.cache.clear()

    async def handle_frame(self, data: str | bytes, received_ns: int) -> None:
        size = len(data)
        if isinstance(data, str) and size * 4 > self.gateway.config.max_message_bytes:
            # The limit is in bytes: a text frame may hold up to 4 UTF-8 bytes per character.
            size = len(data.encode("utf-8", "surrogatepass"))
        if size > self.gateway.config.max_message_bytes:
            await self.send_error(
                APIError(
                    f"The message is {size} bytes; the limit is "
                    f"{self.gateway.config.max_message_bytes} bytes.",
                    status=413,
                    code="message_too_large",
                )
            )
            return
        try:
            frame = codec.decode_object(data)
        except DecodeError as exc:
            await self.send_error(APIError(f"Invalid JSON frame: {exc}", code="invalid_json"))
            return
        kind = frame.get("type")
        if kind == "response.create":
            await self._enqueue_create(frame, received_ns)
        elif kind == "response.steer":
            await self._refuse_steer(frame)
        elif kind is None:
            await self.send_error(
                APIError(
                    "Missing required parameter: 'type'.",
                    code="missing_required_parameter",
                    param="type",
                )
            )
        else:
            await self.send_error(
                APIError(
                    f"Unknown event type {kind!r}; expected 'response.create' or 'response.steer'.",
                    code="unknown_event_type",
                    param="type",
                )
            )

    async def _enqueue_create(self, frame: dict[str, Any], received_ns: int) -> None:
        config = self.gateway.config
        stream_id = frame.get("stream_id")
        if stream_id is not None and (
            not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id)
        ):
            await self.send_error(
                APIError(
                    "'stream_id' must be 1-256 characters of [A-Za-z0-9_.-]",
                    code="invalid_stream_id",
                    param="stream_id",
                )
            )
            return
        if time.monotonic() - self.opened_at >= config.connection_lifetime:
            await self.send_error(
                APIError(
                    f"This connection reached its {config.connection_lifetime:.0f} s lifetime; "
                    "open a new connection.",
                    code="websocket_connection_limit_reached",
                ),
                stream_id,
            )
            self.closing = True
            return
        lane = self.lanes.get(stream_id)
        if lane is None:
            named = len(self.lanes) - (None in self.lanes)
            if stream_id is not None and named >= config.max_lanes:
                await self.send_error(
                    APIError(
                        f"This connection already has {config.max_lanes} named streams.",
                        code="websocket_stream_limit_reached",
                        param="stream_id",
                    ),
                    stream_id,
                )
                return
            lane = _Lane(stream_id)
            lane.task = asyncio.create_task(self._lane_worker(lane))
            self.lanes[stream_id] = lane
        self.busy += 1
        lane.queue.put_nowait((frame, received_ns))

    async def _refuse_steer(self, frame: dict[str, Any]) -> None:
        # Steering (§3.8) is not implemented by this gateway; the protocol's own answer for
        # that is response.steer.failed with steering_not_supported, echoing the input.
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
        await self.send(codec.encode_event(event))

    # -- lanes ----------------------------------------------------------------------------

    async def _lane_worker(self, lane: _Lane) -> None:
        while True:
            frame, received_ns = await lane.queue.get()
            try:
                async with self.active:
                    await self._create(frame, received_ns, lane.stream_id)
            except _CLIENT_GONE:
                return
            finally:
                self.busy -= 1
                self.last_active = time.monotonic()

    async def _create(self, frame: dict[str, Any], received_ns: int, stream_id: str | None) -> None:
        gateway = self.gateway
        dequeued_ns = time.perf_counter_ns()
        parent_id: str | None = None
        parent_entry: CachedResponse | None = None
        try:
            request = parse_create(frame, websocket=True)
            parent_id = request.previous_response_id
            parent = Conversation.start()
            if parent_id is not None:
                parent_entry = self.cache.get(parent_id)
                if parent_entry is not None:
                    gateway.metrics.cache_lookups.labels("hit").inc()
                    parent = parent_entry.conversation
                else:
                    parent = await gateway.resolve_stored(parent_id)
            prepared = gateway.prepare(
                request,
                parent,
                received_ns=received_ns,
                transport="websocket",
                lane=stream_id,
                parent_stored=parent_entry.stored if parent_entry is not None else True,
                dequeued_ns=dequeued_ns,
            )
        except APIError as exc:
            self._evict_failed_parent(parent_entry, stream_id)
            await self.send_error(exc, stream_id)
            return

        store = request.store

        async def commit(response: ResponseObject, conversation: Conversation) -> None:
            self.cache.put(CachedResponse(response.id, conversation, stream_id, store))

        async for event in gateway.run(prepared, commit).events():
            if isinstance(event, ResponseFailed):
                self._evict_failed_parent(parent_entry, stream_id)
            await self.send(codec.encode_event(event, stream_id))

    def _evict_failed_parent(self, parent: CachedResponse | None, stream_id: str | None) -> None:
        # A failed same-lane continuation evicts its parent, so a blind retry fails again;
        # a failed fork on another lane leaves it for the source lane (protocol.md §3.5).
        if parent is not None and parent.lane == stream_id:
            self.cache.evict(parent.response_id)


async def serve_websocket(
    gateway: Gateway, websocket: WebSocket, *, denial: Response | None
) -> None:
    """Accept (or deny, with an HTTP response) one WebSocket and serve it until it closes."""
    if denial is not None:
        await websocket.send_denial_response(denial)
        return
    await websocket.accept()
    gateway.metrics.websocket_connections.inc()
    try:
        await Connection(gateway, websocket).serve()
    finally:
        gateway.metrics.websocket_connections.dec()
