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

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["ConnectionStats", "WebSocketProxy"]

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
#: The close code of a drop: 1011 "internal error" (RFC 6455 §7.4.1), which a client must not
#: take for a clean close.
DROP_CODE = 1011


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
    turn_events: int = 0
    muted: bool = False


@dataclass
class WebSocketProxy:
    """``async with WebSocketProxy(gateway.websocket_url) as proxy:`` then use ``proxy.url``."""

    upstream_url: str
    connections: list[ConnectionStats] = field(default_factory=list)
    #: Event types forwarded to the client, per proxy-wide turn (index 0 is turn 1).
    turn_events: list[list[str]] = field(default_factory=list)
    _server: Server | None = None
    _drop: _Drop | None = None
    _swap_turns: set[int] = field(default_factory=set)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> WebSocketProxy:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, max_size=None, compression=None, ping_interval=None
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

    # -- forwarding ---------------------------------------------------------------------

    async def _open_upstream(self, link: _Link) -> None:
        link.upstream = await connect(
            self.upstream_url, max_size=None, compression=None, ping_interval=None
        )
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
                if _event_type(message) == "response.create":
                    turn = len(self.turn_events) + 1
                    if turn in self._swap_turns:
                        self._swap_turns.discard(turn)
                        await self._close_upstream(link)
                        await self._open_upstream(link)
                    self.turn_events.append([])
                    link.stats.creates += 1
                    link.turn, link.turn_events = turn, 0
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
                link.turn_events += 1
                kind = _event_type(message)
                if link.turn:
                    self.turn_events[link.turn - 1].append(kind)
                if kind in TERMINAL:
                    link.stats.terminals += 1
                if self._should_drop(link):
                    await self._drop_client(link)
                    return
        except ConnectionClosed:
            pass
        if not link.muted:
            # The gateway closed the connection (idle timeout, lifetime): pass it on.
            code = upstream.close_code if upstream.close_code is not None else 1011
            await link.client.close(code, upstream.close_reason or "")

    def _should_drop(self, link: _Link) -> bool:
        drop = self._drop
        return (
            drop is not None and link.turn == drop.on_turn and link.turn_events >= drop.n_events
        )

    async def _drop_client(self, link: _Link) -> None:
        self._drop = None
        link.muted = True
        link.stats.dropped = True
        await link.client.close(DROP_CODE, "proxy drop")
        if link.upstream is not None:
            await link.upstream.close()


def _event_type(message: str | bytes) -> str:
    try:
        data = json.loads(message)
    except ValueError:
        return ""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else ""
