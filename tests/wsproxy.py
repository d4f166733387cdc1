"""A WebSocket proxy between the runtime and a real gateway, for recovery tests.

The client connects to :attr:`WebSocketProxy.url`; each client connection gets its own upstream
connection to the gateway, and text frames are forwarded both ways unchanged. The proxy counts
what it forwards (``response.create`` frames, events, terminal events) and, when the test asks,
breaks the path in one of two ways a real deployment does:

* :meth:`WebSocketProxy.drop_client_after` closes the client's socket after ``n_events`` events
  of one response: the gateway dropping the socket mid-turn (or, with ``n_events=0``, right
  after the request went out);
* :meth:`WebSocketProxy.swap_upstream_before_turn` closes the upstream connection and opens a
  new one before forwarding one ``response.create``, while the client's socket stays open: a
  load balancer failing over to another gateway connection, whose connection-scoped cache does
  not hold the client's previous response.

:meth:`WebSocketProxy.refuse_next_upgrade` answers the next upgrade with an HTTP status (a
429 with ``Retry-After``, a 503), as a rate-limiting front end does.

Turns are numbered proxy-wide: turn ``t`` is the ``t``-th ``response.create`` the proxy
forwarded, whatever connection carried it. Every trigger fires once and depends on frame counts
only, never on time, so the tests are deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["ConnectionStats", "WebSocketProxy"]

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: The close code of a drop: 1011 "internal error" (RFC 6455 §7.4.1), which a client must not
#: take for a clean close.
DROP_CODE = 1011
#: No flow control on either side (``max_queue=None``): once the proxy stops reading a muted
#: connection, a bounded queue would pause the socket's reads, the peer's close frame would
#: never be read, and closing would wait for the 10 s close timeout.
_OPTIONS: dict[str, Any] = {
    "max_size": None,
    "max_queue": None,
    "compression": None,
    "ping_interval": None,
}


@dataclass
class ConnectionStats:
    """What the proxy forwarded on one client connection."""

    creates: int = 0
    events: int = 0
    terminals: int = 0
    upstreams_opened: int = 0
    dropped: bool = False


@dataclass
class _Drop:
    n_events: int
    on_turn: int


@dataclass
class _Link:
    """One client connection and its current upstream connection."""

    client: ServerConnection
    stats: ConnectionStats
    upstream: ClientConnection | None = None
    pump: asyncio.Task[None] | None = None
    #: The proxy-wide number of the last response.create forwarded on this connection.
    turn: int = 0
    #: Events of that turn forwarded so far.
    forwarded: int = 0
    muted: bool = False


@dataclass
class WebSocketProxy:
    """``async with WebSocketProxy(gateway.websocket_url) as proxy:`` then use ``proxy.url``."""

    upstream_url: str
    connections: list[ConnectionStats] = field(default_factory=list)
    #: The events forwarded to the client (decoded), per proxy-wide turn (index 0 is turn 1).
    turn_events: list[list[dict[str, Any]]] = field(default_factory=list)
    _server: Server | None = None
    _drop: _Drop | None = None
    _swap_turns: set[int] = field(default_factory=set)
    #: Upgrades to refuse before forwarding again: (status, headers) each.
    _refusals: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    #: When each upgrade request arrived (loop time), refused or not.
    upgrades: list[float] = field(default_factory=list)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> WebSocketProxy:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._upgrade, **_OPTIONS
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None, "use the proxy as an async context manager"
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/responses"

    @property
    def creates(self) -> int:
        """``response.create`` frames forwarded, over all connections."""
        return len(self.turn_events)

    # -- controls -----------------------------------------------------------------------

    def drop_client_after(self, *, n_events: int, on_turn: int) -> None:
        """Close the client's socket (code 1011) after ``n_events`` events of turn ``on_turn``.

        The upstream connection is closed too, so the gateway sees the client go away. With
        ``n_events=0`` the socket closes right after the turn's request was forwarded.
        """
        self._drop = _Drop(n_events, on_turn)

    def swap_upstream_before_turn(self, turn: int) -> None:
        """Before forwarding turn ``turn``, replace the upstream connection with a new one."""
        self._swap_turns.add(turn)

    def refuse_next_upgrade(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next WebSocket upgrade with HTTP ``status`` (and ``headers``) instead of
        accepting it, as a rate-limiting or overloaded front end does."""
        self._refusals.append((status, dict(headers or {})))

    def _upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        self.upgrades.append(asyncio.get_running_loop().time())
        if not self._refusals:
            return None
        status, headers = self._refusals.pop(0)
        response = connection.respond(status, "refused by the test proxy\n")
        for name, value in headers.items():
            response.headers[name] = value
        return response

    # -- forwarding ---------------------------------------------------------------------

    async def _open_upstream(self, link: _Link) -> None:
        link.upstream = await connect(self.upstream_url, **_OPTIONS)
        link.stats.upstreams_opened += 1
        link.pump = asyncio.create_task(self._pump_down(link, link.upstream))

    async def _close_upstream(self, link: _Link) -> None:
        # Stop the pump first: the old upstream's closing must not close the client.
        if link.pump is not None:
            link.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.pump
            link.pump = None
        if link.upstream is not None:
            await link.upstream.close()
            link.upstream = None

    async def _handle(self, client: ServerConnection) -> None:
        link = _Link(client, ConnectionStats())
        self.connections.append(link.stats)
        await self._open_upstream(link)
        try:
            async for message in client:
                if link.muted:
                    continue
                if _decode(message).get("type") == "response.create":
                    turn = len(self.turn_events) + 1
                    if turn in self._swap_turns:
                        self._swap_turns.discard(turn)
                        await self._close_upstream(link)
                        await self._open_upstream(link)
                    self.turn_events.append([])
                    link.stats.creates += 1
                    link.turn, link.forwarded = turn, 0
                    assert link.upstream is not None
                    await link.upstream.send(message)
                    if self._should_drop(link):
                        await self._drop_client(link)
                    continue
                assert link.upstream is not None
                await link.upstream.send(message)
        except ConnectionClosed:
            pass
        finally:
            await self._close_upstream(link)

    async def _pump_down(self, link: _Link, upstream: ClientConnection) -> None:
        try:
            async for message in upstream:
                if link.muted:
                    return
                await link.client.send(message)
                link.stats.events += 1
                link.forwarded += 1
                event = _decode(message)
                if link.turn:
                    self.turn_events[link.turn - 1].append(event)
                if event.get("type") in TERMINAL:
                    link.stats.terminals += 1
                if self._should_drop(link):
                    await self._drop_client(link)
                    return
        except ConnectionClosed:
            pass
        if not link.muted:
            # The gateway closed the connection (idle timeout, lifetime): pass it on.
            code = upstream.close_code
            if code is None or code in (1005, 1006, 1015):  # reserved: never sent in a frame
                code = DROP_CODE
            await link.client.close(code, upstream.close_reason or "")

    def _should_drop(self, link: _Link) -> bool:
        drop = self._drop
        return drop is not None and link.turn == drop.on_turn and link.forwarded >= drop.n_events

    async def _drop_client(self, link: _Link) -> None:
        self._drop = None
        link.muted = True
        link.stats.dropped = True
        await link.client.close(DROP_CODE, "proxy drop")
        if link.upstream is not None:
            await link.upstream.close()


def _decode(message: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(message)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
