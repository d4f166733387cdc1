"""A TCP forwarder that adds network delay: ``hotloop bench --rtt-ms N`` without kernel netem.

Every chunk read from either side is written to the other side ``rtt/2`` later, in the order it
was read, so a request/response round trip costs one RTT on top of the loopback time. The
connection set-up costs what it would across a network too: a client's ``connect()`` to the
proxy returns at once (loopback), so the first bytes it sends are held until one RTT after the
accept (the SYN / SYN-ACK exchange it skipped) before their one-way delay starts. The
WebSocket upgrade or the first HTTP request then pays its own round trip on top, as it does on
a real network. TLS is not modelled (the gateway speaks plain HTTP).

End of stream propagates: when one side half-closes, the other side's write end is closed
after the same delay; when both directions are done, both sockets are closed.

    async with DelayProxy("127.0.0.1", 8000, rtt_ms=40) as proxy:
        ...  # connect to proxy.port instead of 8000
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

__all__ = ["DelayProxy", "main"]

_CHUNK_BYTES = 65_536


class DelayProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with ``rtt_ms`` of delay."""

    def __init__(self, target_host: str, target_port: int, *, rtt_ms: float) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be non-negative, got {rtt_ms}")
        self.target_host = target_host
        self.target_port = target_port
        self.rtt_s = rtt_ms / 1000
        self.port = 0
        #: Connections accepted so far (a deterministic counter for tests and reports).
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.create_task(self._connection(reader, writer, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, accepted: float
    ) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_w.close()
            return
        try:
            async with asyncio.TaskGroup() as group:
                # Client → server: held until the emulated TCP handshake (one RTT) is over.
                group.create_task(self._pump(client_r, upstream_w, accepted + self.rtt_s))
                group.create_task(self._pump(upstream_r, client_w, 0.0))
        except* (OSError, EOFError):
            pass  # a reset on one side ends the connection; both sockets are closed below
        finally:
            for writer in (client_w, upstream_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, not_before: float
    ) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``rtt/2`` after it was read, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        one_way = self.rtt_s / 2

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK_BYTES)
                # max() keeps the due times monotonic, so chunks never overtake each other.
                queue.put_nowait((max(time.monotonic(), not_before) + one_way, data))
                if not data:
                    break
                if delivering.done():
                    break
            await delivering
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering


async def _serve(target_port: int, rtt_ms: float) -> None:
    async with DelayProxy("127.0.0.1", target_port, rtt_ms=rtt_ms) as proxy:
        # The parent reads the port from this first line, then terminates us when done.
        print(proxy.port, flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m hotloop.bench.delay_proxy TARGET_PORT RTT_MS``: print the port, serve.

    ``hotloop bench`` runs the proxy this way, in its own process, so that the client CPU it
    reports is the client's alone.
    """
    args = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(args[0]), float(args[1])))


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    main()
