"""WebSocket mode on ``/v1/responses``: the driver of a :class:`ServerSession`.

The rules of WebSocket mode (lanes and their limit, the connection's lifetime and idle
timeout, the frame size limit, frame types, the connection-scoped cache and what a failed
continuation evicts) live in the pure :class:`~hotloop.protocol.server_session.ServerSession`.
This module only moves things between it and the socket: each frame read goes to
:meth:`~ServerSession.receive`, and the actions that come back are carried out in order
(send a frame, start a create as a task, close the socket). A started create resolves its
parent (the session's cache, else the store), runs through the gateway's execution core,
sends its events with the lane's ``stream_id``, and tells the session when it ends, which
may start the next create of its lane or of a lane waiting for a slot. A ``Cancel`` (the
client's ``response.cancel`` for a lane) cancels that create's task, which closes its
generation; its lane then gets ``response.failed`` / ``response_cancelled`` (an ``error`` with
that code when no event of the response had gone out yet), nothing is committed, and the
lane's next create starts as usual. A create whose response already ended (being committed,
or its terminal event being sent) is not cancelled: its terminal event stands. When the client
goes away every running create is cancelled, which cancels its generation, and the cache is
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected
from uvicorn.protocols.utils import ClientDisconnected

from hotloop.errors import APIError
from hotloop.gateway.core import Gateway, ResponseRun
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import parse_create
from hotloop.protocol.server_session import (
    NO_PARENT,
    Action,
    Cancel,
    Close,
    Job,
    ParentLookup,
    Send,
    ServerSession,
    SessionState,
    Start,
)
from hotloop.wire import codec
from hotloop.wire.events import ResponseFailed, WebSocketError
from hotloop.wire.responses import ResponseObject

__all__ = ["Connection", "serve_websocket"]

#: What sending to or reading from a closed socket raises (starlette, uvicorn, the OS); any
#: other exception is a failure of the gateway, reported to the client.
_CLIENT_GONE = (WebSocketDisconnect, WebSocketDisconnected, ClientDisconnected, ConnectionError)

logger = logging.getLogger("hotloop.gateway")

#: What a cancelled response's ``response.failed`` (or ``error``) says.
CANCELLED_MESSAGE = "The response was cancelled by the client."


@dataclass(slots=True)
class _Running:
    """One started create: its task and how far it got."""

    task: asyncio.Task[None]
    #: Its task began to run (a task cancelled before that would never run a line).
    begun: bool = False
    #: Its response, once prepared.
    run: ResponseRun | None = None
    #: An event of its response reached the client (``response.created`` first).
    announced: bool = False
    #: Its ``error`` frame is going out (refused, or failed): too late to cancel.
    final: bool = False
    #: It was cancelled for the client's ``response.cancel``.
    cancelled: bool = False


class Connection:
    """One accepted WebSocket and the session that decides what happens on it.

    ``clock`` gives the session its time (seconds, monotonic).
    """

    def __init__(
        self,
        gateway: Gateway,
        websocket: WebSocket,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.clock = clock
        self.session = ServerSession(gateway.config.session_config(), clock())
        #: Whose connection this is: its store fallback sees only this tenant's responses.
        self.tenant = gateway.tenant(websocket.headers.get("authorization", ""))
        #: The connection's use of the backend, shared by its creates on every lane.
        self.backend = gateway.backend.open_session()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Started creates by job number, until they end.
        self._running: dict[int, _Running] = {}

    # -- sending --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        try:
            await self.websocket.send_text(data.decode())
        except RuntimeError as exc:
            # Once uvicorn has closed an accepted socket itself (a frame beyond its size limit:
            # 1009), it refuses every send with a RuntimeError: the client is as gone as after
            # a disconnect, and the lanes still running end quietly.
            raise WebSocketDisconnect(1006) from exc

    async def perform(self, actions: Iterable[Action]) -> bool:
        """Carry out the session's actions in order; True once the socket is closed.

        A ``Queued`` create needs nothing: the session starts it when its turn comes.
        """
        for action in actions:
            if isinstance(action, Start):
                self._start(action.job)
            elif isinstance(action, Cancel):
                self._cancel(action.job)
            elif isinstance(action, Send):
                if action.error is not None:
                    error = action.error
                    self.gateway.metrics.errors.labels("websocket", error.code or error.type).inc()
                await self.send(action.data)
            elif isinstance(action, Close):
                await self.websocket.close(action.code, action.reason)
                return True
        return False

    # -- the read loop --------------------------------------------------------------------

    async def serve(self) -> None:
        session = self.session
        clock = self.clock
        try:
            while True:
                try:
                    async with asyncio.timeout(session.timeout(clock())):
                        message = await self.websocket.receive()
                except TimeoutError:
                    if await self.perform(session.timer(clock())):
                        return
                    continue
                if message["type"] == "websocket.disconnect":
                    return
                received_ns = time.perf_counter_ns()
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if await self.perform(session.receive(data, clock(), received_ns)):
                    return
        except _CLIENT_GONE:
            return
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Cancel every running create (and so its generation), drop the cache and close
        the connection's backend session."""
        self.session.connection_lost()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.backend.aclose()

    # -- creates --------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._create(job))
        self._running[job.number] = _Running(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, job: Job) -> None:
        """The client cancelled ``job``: cancel its task unless its response already ended."""
        running = self._running.get(job.number)
        if running is None or running.cancelled or running.final:
            return
        run = running.run
        if run is not None and run.builder.ended:
            return  # being committed, or its terminal event being sent: too late to cancel
        running.cancelled = True
        if running.begun:
            running.task.cancel()
        # Otherwise the task sees the flag as it begins.

    async def _create(self, job: Job) -> None:
        """Run one started create to its end, then tell the session (which may start more)."""
        gateway = self.gateway
        session = self.session
        stream_id = job.stream_id
        dequeued_ns = time.perf_counter_ns()
        lookup: ParentLookup = NO_PARENT
        run: ResponseRun | None = None
        running = self._running[job.number]
        running.begun = True
        try:
            if running.cancelled:
                raise asyncio.CancelledError  # cancelled before its task began to run
            try:
                request = parse_create(job.frame, websocket=True)
                lookup = session.lookup_parent(request.previous_response_id)
                parent, parent_stored = await gateway.resolve_parent(lookup, self.tenant)
                prepared = gateway.prepare(
                    request,
                    parent,
                    received_ns=job.received_ns,
                    transport="websocket",
                    lane=stream_id,
                    parent_stored=parent_stored,
                    dequeued_ns=dequeued_ns,
                    tenant=self.tenant,
                )
            except APIError as exc:
                running.final = True
                await self.perform(session.fail(job, lookup, exc))
                return

            stored = request.store

            async def commit(response: ResponseObject, conversation: Conversation) -> None:
                session.commit(job, response.id, conversation, stored)

            send = self.send
            run = running.run = gateway.run(prepared, commit, self.backend)
            # Closed as soon as the loop ends, however it ends: a cancelled response stops
            # generating before its lane hears of it.
            async with contextlib.aclosing(run.events()) as events:
                async for event in events:
                    if isinstance(event, ResponseFailed):
                        session.fail(job, lookup)
                    await send(codec.encode_event(event, stream_id))
                    running.announced = True
        except _CLIENT_GONE:
            return
        except asyncio.CancelledError:
            if not running.cancelled or session.state is SessionState.CLOSED:
                raise  # the connection is going: nothing to tell anyone
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            with contextlib.suppress(*_CLIENT_GONE):
                await self._cancelled(job, run if running.announced else None)
        except Exception as exc:
            running.final = True
            await self._report(job, lookup, run, exc)
        finally:
            del self._running[job.number]
            for start in session.finish(job, self.clock()):
                self._start(start.job)

    async def _cancelled(self, job: Job, run: ResponseRun | None) -> None:
        """Tell ``job``'s lane its response was cancelled: ``response.failed`` when the
        client saw it start, else an ``error``. Nothing was committed, and a cancel is not a
        failure of the request: its parent stays cached."""
        if run is not None:
            for event in run.cancel(CANCELLED_MESSAGE):
                await self.send(codec.encode_event(event, job.stream_id))
            return
        self.gateway.metrics.responses.labels("websocket", "cancelled").inc()
        error = APIError(CANCELLED_MESSAGE, code="response_cancelled")
        event = WebSocketError(status=error.status, error=error.body(), stream_id=job.stream_id)
        await self.send(codec.encode_event(event))

    async def _report(
        self, job: Job, lookup: ParentLookup, run: ResponseRun | None, exc: Exception
    ) -> None:
        """An unexpected failure of ``job``: log it once, answer its lane with ``error``."""
        response_id = run.response_id if run is not None else "(not created)"
        logger.error("response %s on lane %r failed", response_id, job.stream_id, exc_info=exc)
        # Never the exception's text: it is ours, not the client's to read.
        error = APIError(
            "The server failed to process the request.",
            status=500,
            type="server_error",
            code="server_error",
        )
        with contextlib.suppress(*_CLIENT_GONE):
            await self.perform(self.session.fail(job, lookup, error))


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
