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

from hotloop.testing.faults import FaultProxy

__all__ = ["DelayProxy", "main"]


class DelayProxy(FaultProxy):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with ``rtt_ms`` of delay.

    The forwarding is :class:`~hotloop.testing.faults.FaultProxy`'s, with no faults: a
    one-way delay of ``rtt/2`` per chunk, and the client's first bytes held one RTT after the
    accept.
    """

    def __init__(self, target_host: str, target_port: int, *, rtt_ms: float) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be non-negative, got {rtt_ms}")
        self.rtt_s = rtt_ms / 1000
        super().__init__(
            target_host, target_port, one_way_delay=self.rtt_s / 2, handshake_delay=self.rtt_s
        )


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
