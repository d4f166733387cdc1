"""A fault-injection TCP proxy: break the network between an agent and its model server.

:class:`FaultProxy` listens on a loopback port and forwards every connection to a target
(a gateway, any model server). It works on bytes, so it serves WebSocket mode and HTTP/SSE
alike, and it can break a connection the ways networks and servers do (:class:`Fault`):

* ``DROP`` — close both sides cleanly (FIN), as a server or load balancer hanging up;
* ``RESET`` — close both sides with an RST (``SO_LINGER`` 0), as a crashed host or a
  middlebox forgetting the flow;
* ``TRUNCATE`` — forward only the next ``nbytes`` bytes the server sends, then drop: a stream
  cut in the middle of an event;
* ``STALL`` — forward nothing either way for ``seconds``, then carry on with every byte
  intact: congestion, a paused VM, a GC pause;
* ``HALF_OPEN`` — forward nothing, ever, and close nothing: the peer only notices through its
  own timeouts (the proxy closes the server side once the client gives up and closes);
* ``DELAY`` — add ``seconds`` of latency to every chunk for ``duration`` seconds.

Faults come two ways. :meth:`FaultProxy.inject` applies one now, to every live connection
(or one of them). A :class:`FaultPlan` fires them by itself, at random byte offsets of the
traffic: each connection draws, from a generator seeded by the plan's seed and the
connection's number, how many forwarded bytes pass before its next fault, which kind it is
and its parameters. The bytes before the offset are delivered, then the fault applies, so a
plan cuts streams mid-event, mid-frame and mid-request, not only between messages.

The same forwarding core adds constant network delay (``one_way_delay``, and
``handshake_delay`` for the connection set-up a loopback ``connect()`` skips);
:class:`hotloop.bench.delay_proxy.DelayProxy` is this proxy with those two set and no faults.
Chunks keep their order in every mode, and end of stream propagates: a half-close on one side
half-closes the other after the same delay; when both directions are done both sockets close.

Testing an agent against faults (see ``docs/testing.md``)::

    async with FaultProxy("127.0.0.1", 8000, plan=FaultPlan(seed=7)) as proxy:
        client = hotloop.connect(f"{proxy.url}/v1")
        result = await run_resuming(agent, "task", client=client)
        print(proxy.faults)          # Counter({Fault.DROP: 2, Fault.STALL: 1, ...})
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hotloop.errors import HotloopError
from hotloop.runtime import Agent, PartialRun, Runner, RunResult
from hotloop.transport import Backoff, Transport
from hotloop.wire.items import Item

__all__ = ["Fault", "FaultPlan", "FaultProxy", "run_resuming"]

_CHUNK_BYTES = 65_536
#: ``struct linger`` with l_onoff=1, l_linger=0: ``close()`` then sends an RST.
_LINGER_RESET = struct.pack("ii", 1, 0)


class Fault(enum.Enum):
    """What a fault does to a connection; see the module docstring."""

    DROP = "drop"
    DELAY = "delay"
    STALL = "stall"
    HALF_OPEN = "half_open"
    RESET = "reset"
    TRUNCATE = "truncate"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults at random byte offsets, reproducible from ``seed``.

    Each connection has its own generator (seeded by ``seed`` and the connection's number, so
    a connection's faults do not depend on how other connections' traffic interleaves). The
    gap before its next fault, in bytes forwarded either way, is drawn uniformly from
    ``[every_bytes / 2, 3 * every_bytes / 2]``: never much shorter than ``every_bytes``, so
    that a client which retries makes progress whenever its exchanges are shorter than half
    of it (an unbounded draw would sometimes fault every attempt). The kind is drawn from
    ``kinds`` and the parameters from the ranges, all uniformly: ``stall_seconds`` (``STALL``),
    ``delay_seconds`` and ``delay_duration`` (``DELAY``), ``truncate_bytes`` (``TRUNCATE``).
    ``max_faults`` bounds the plan's faults over the proxy's life (``None``: no bound).
    """

    seed: int = 0
    every_bytes: float = 16_384.0
    kinds: tuple[Fault, ...] = tuple(Fault)
    stall_seconds: tuple[float, float] = (0.1, 1.0)
    delay_seconds: tuple[float, float] = (0.01, 0.2)
    delay_duration: tuple[float, float] = (0.1, 1.0)
    truncate_bytes: tuple[int, int] = (0, 2_048)
    max_faults: int | None = None

    def __post_init__(self) -> None:
        if not self.every_bytes > 0 or not math.isfinite(self.every_bytes):
            raise ValueError("every_bytes must be a positive number")
        if not self.kinds:
            raise ValueError("a plan needs at least one kind of fault")
        for name in ("stall_seconds", "delay_seconds", "delay_duration", "truncate_bytes"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high")


@dataclass(frozen=True, slots=True)
class _Strike:
    """One fault with its parameters, queued in a stream at the byte offset it fires at."""

    kind: Fault
    seconds: float = 0.0
    duration: float | None = None
    nbytes: int = 0


class _Schedule:
    """One connection's draws from a :class:`FaultPlan`."""

    __slots__ = ("left", "plan", "rng")

    def __init__(self, plan: FaultPlan, connection: int) -> None:
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:{connection}")
        self.left = self._gap()

    def _gap(self) -> int:
        return max(1, round(self.rng.uniform(0.5, 1.5) * self.plan.every_bytes))

    def strike(self) -> _Strike:
        plan, rng = self.plan, self.rng
        self.left = self._gap()
        kind = rng.choice(plan.kinds)
        if kind is Fault.STALL:
            return _Strike(kind, seconds=rng.uniform(*plan.stall_seconds))
        if kind is Fault.DELAY:
            return _Strike(
                kind,
                seconds=rng.uniform(*plan.delay_seconds),
                duration=rng.uniform(*plan.delay_duration),
            )
        if kind is Fault.TRUNCATE:
            return _Strike(kind, nbytes=rng.randint(*plan.truncate_bytes))
        return _Strike(kind)


class _Link:
    """One proxied connection: two sockets, the fault state both directions obey."""

    def __init__(
        self,
        proxy: FaultProxy,
        number: int,
        client: asyncio.StreamWriter,
        schedule: _Schedule | None,
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.schedule = schedule
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.black_hole = False
        self.paused_until = 0.0
        self.delay = 0.0
        self.delay_until = 0.0
        #: Server → client bytes still to forward before a ``TRUNCATE`` cuts (``None``: none).
        self.truncate_after: int | None = None

    def apply(self, strike: _Strike) -> None:
        """Apply a fault now."""
        if self.closed:
            return
        kind = strike.kind
        if kind is Fault.TRUNCATE and self.truncate_after is not None:
            # One cut is armed already: the earlier cut wins, and it is one fault.
            self.truncate_after = min(self.truncate_after, strike.nbytes)
            return
        self.proxy.faults[kind] += 1
        now = time.monotonic()
        if kind is Fault.DROP:
            self.close(reset=False)
        elif kind is Fault.RESET:
            self.close(reset=True)
        elif kind is Fault.STALL:
            self.paused_until = max(self.paused_until, now + strike.seconds)
        elif kind is Fault.HALF_OPEN:
            self.black_hole = True
        elif kind is Fault.DELAY:
            self.delay = strike.seconds
            self.delay_until = math.inf if strike.duration is None else now + strike.duration
        else:
            self.truncate_after = strike.nbytes

    def close(self, *, reset: bool) -> None:
        """Close both sockets at once (with an RST when ``reset``); stop forwarding."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            if writer is None:
                continue
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                writer.transport.abort()
            else:
                writer.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def extra_delay(self, now: float) -> float:
        return self.delay if now < self.delay_until else 0.0

    async def wait_forwarding(self) -> bool:
        """Wait out a stall; ``False`` when the link is a black hole (forward nothing)."""
        while True:
            if self.black_hole:
                return False
            left = self.paused_until - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(left)


class FaultProxy:
    """Forward ``host:port`` (``127.0.0.1``, a free port by default) to the target, with faults.

    ``plan`` fires faults by itself (see :class:`FaultPlan`); :meth:`inject` fires one now.
    ``one_way_delay`` (seconds) delays every chunk each way; ``handshake_delay`` holds the
    client's first bytes until that long after the accept (the TCP handshake a loopback
    ``connect()`` does not pay). Counters: :attr:`connections` accepted, :attr:`faults`
    applied by kind (one per connection a fault hit), :attr:`active` live connections.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        plan: FaultPlan | None = None,
        one_way_delay: float = 0.0,
        handshake_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if one_way_delay < 0 or handshake_delay < 0:
            raise ValueError("delays must be non-negative")
        self.target_host = target_host
        self.target_port = target_port
        self.plan = plan
        self.one_way_delay = one_way_delay
        self.handshake_delay = handshake_delay
        self.host = host
        self.port = port
        #: Connections accepted so far.
        self.connections = 0
        #: Faults applied so far, by kind: one count per connection a fault hit.
        self.faults: Counter[Fault] = Counter()
        #: Bytes read from either side so far (what a plan's ``every_bytes`` counts).
        self.forwarded = 0
        self._links: dict[int, _Link] = {}
        self._planned = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy (append the target's path, e.g. ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def active(self) -> int:
        """Connections open now."""
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every open connection (cleanly: FIN, not RST)."""
        if self._server is not None:
            self._server.close()
        links = list(self._links.values())
        for link in links:
            link.close(reset=False)
        for link in links:
            if link.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def inject(
        self,
        kind: Fault,
        *,
        seconds: float = 1.0,
        duration: float | None = None,
        nbytes: int = 0,
        connection: int | None = None,
    ) -> int:
        """Apply ``kind`` now to every open connection (or to number ``connection`` only).

        ``seconds``: how long a ``STALL`` lasts, or the latency a ``DELAY`` adds (for
        ``duration`` seconds; ``None``: for the rest of the connection). ``nbytes``: how many
        more server → client bytes a ``TRUNCATE`` lets through. Returns how many connections
        the fault hit (0 when none was open).
        """
        if seconds < 0 or nbytes < 0 or (duration is not None and duration < 0):
            raise ValueError("seconds, duration and nbytes must be non-negative")
        strike = _Strike(kind, seconds=seconds, duration=duration, nbytes=nbytes)
        links = [
            link
            for number, link in list(self._links.items())
            if connection is None or number == connection
        ]
        for link in links:
            link.apply(strike)
        return len(links)

    # -- forwarding ------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        schedule = None if self.plan is None else _Schedule(self.plan, number)
        link = _Link(self, number, writer, schedule)
        self._links[number] = link
        link.task = asyncio.create_task(self._connection(link, reader, time.monotonic()))

    async def _connection(
        self, link: _Link, client_r: asyncio.StreamReader, accepted: float
    ) -> None:
        client_w = link.client
        upstream_w: asyncio.StreamWriter | None = None
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            link.server = upstream_w
            if link.closed:
                return  # a fault hit while connecting: both sockets are closed below
            async with asyncio.TaskGroup() as group:
                # Client → server: held until the emulated TCP handshake is over.
                up = _Pipe(self, link, client_r, upstream_w, downstream=False)
                down = _Pipe(self, link, upstream_r, client_w, downstream=True)
                group.create_task(up.run(accepted + self.handshake_delay))
                group.create_task(down.run(0.0))
        except* (OSError, EOFError):
            pass  # a reset on one side ends the connection; both sockets are closed below
        finally:
            del self._links[link.number]
            for writer in (client_w, upstream_w):
                if writer is None:
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def _planned_strike(self, link: _Link) -> _Strike | None:
        """The link's next planned fault, unless the plan's ``max_faults`` is used up."""
        assert link.schedule is not None
        strike = link.schedule.strike()
        limit = link.schedule.plan.max_faults
        if limit is not None and self._planned >= limit:
            return None
        self._planned += 1
        return strike


class _Pipe:
    """One direction of a link: read chunks, deliver them in order, fire faults at offsets."""

    def __init__(
        self,
        proxy: FaultProxy,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
    ) -> None:
        self.proxy = proxy
        self.link = link
        self.reader = reader
        self.writer = writer
        self.downstream = downstream
        self.queue: asyncio.Queue[tuple[float, bytes] | _Strike] = asyncio.Queue()

    async def run(self, not_before: float) -> None:
        """Copy the reader to the writer until end of stream (or the link closes)."""
        delivering = asyncio.create_task(self._deliver())
        one_way = self.proxy.one_way_delay
        last_due = 0.0
        try:
            while True:
                data = await self.reader.read(_CHUNK_BYTES)
                self.proxy.forwarded += len(data)
                # max() keeps the due times monotonic, so chunks never overtake each other.
                last_due = max(time.monotonic(), not_before, last_due) + one_way
                if data:
                    self._enqueue(last_due, data)
                else:
                    self.queue.put_nowait((last_due, data))
                    break
                if delivering.done():
                    break
            await delivering
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering

    def _enqueue(self, due: float, data: bytes) -> None:
        """Queue a chunk, split at the offsets where the plan fires its faults."""
        schedule = self.link.schedule
        while schedule is not None and len(data) >= schedule.left:
            head, data = data[: schedule.left], data[schedule.left :]
            self.queue.put_nowait((due, head))
            strike = self.proxy._planned_strike(self.link)
            if strike is None:
                self.link.schedule = schedule = None
                break
            self.queue.put_nowait(strike)
        if schedule is not None:
            schedule.left -= len(data)
        if data:
            self.queue.put_nowait((due, data))

    async def _deliver(self) -> None:
        link = self.link
        writer = self.writer
        while True:
            item = await self.queue.get()
            if isinstance(item, _Strike):
                link.apply(item)
                continue
            due, data = item
            wait = due + link.extra_delay(due) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not await link.wait_forwarding():
                if not data:  # the peer closed its side of a black hole
                    if self.downstream:
                        continue  # the server's close never reaches the client
                    link.close(reset=False)
                    return
                continue
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if self.downstream and link.truncate_after is not None:
                if len(data) >= link.truncate_after:
                    writer.write(data[: link.truncate_after])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    link.close(reset=False)
                    return
                link.truncate_after -= len(data)
            writer.write(data)
            await writer.drain()


async def run_resuming(
    agent: Agent,
    input: str | Sequence[Item],
    *,
    client: Transport,
    max_resumes: int = 5,
    on_error: Callable[[HotloopError], None] | None = None,
    **options: Any,
) -> RunResult:
    """:meth:`Runner.run`, continued from where it failed, up to ``max_resumes`` times.

    A :class:`~hotloop.errors.HotloopError` raised by a run carries ``partial``, the run's
    state when it failed; running again with ``previous=partial`` continues the run without
    executing any finished tool call again. This is the loop an application wraps around a
    run that must survive a flaky network. Between resumes it waits with exponential backoff
    and jitter (25 ms doubling up to 2 s, back to the start whenever a resume got further),
    so that a run failing fast (every turn cut mid-stream) does not spin. The last error is
    raised when resuming did not help, or at once when it carries no partial state.
    ``on_error`` sees every error that ended an attempt
    (to count or log them). ``options`` go to :meth:`Runner.run` (timeouts, ``max_turns``).
    """
    previous: PartialRun | None = None
    backoff = Backoff(math.inf)
    for attempt in range(max_resumes + 1):
        try:
            return await Runner.run(agent, input, client=client, previous=previous, **options)
        except HotloopError as exc:
            if on_error is not None:
                on_error(exc)
            if attempt >= max_resumes:
                raise
            partial = exc.partial
            if partial is None:
                raise  # not from inside the run: nothing to continue from
            if previous is None or len(partial.items) > len(previous.items):
                backoff = Backoff(math.inf)  # progress: start the backoff over
            previous = partial
            await backoff.wait()
    raise AssertionError("unreachable")  # pragma: no cover
