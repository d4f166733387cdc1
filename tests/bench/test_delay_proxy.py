"""The delay proxy over real loopback sockets: delay as a lower bound, bytes intact, closes.

Elapsed times are only ever checked as lower bounds: a proxy that delays each chunk by RTT/2
cannot deliver a round trip in less than one RTT, however slow the machine is.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from hotloop.bench import delay_proxy
from hotloop.bench.delay_proxy import DelayProxy
from support import echo

RTT_MS = 60.0
RTT_S = RTT_MS / 1000
#: asyncio timers may fire up to the clock resolution early; allow a millisecond.
SLACK_S = 0.001


async def test_a_round_trip_costs_at_least_one_rtt(echo_port: int) -> None:
    async with DelayProxy("127.0.0.1", echo_port, rtt_ms=RTT_MS) as proxy:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        # The first exchange also pays the emulated TCP handshake: one more RTT.
        assert time.monotonic() - started >= 2 * RTT_S - SLACK_S
        for _ in range(3):
            started = time.monotonic()
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
            assert time.monotonic() - started >= RTT_S - SLACK_S
        writer.close()
        await writer.wait_closed()
        assert proxy.connections == 1


async def test_bytes_arrive_intact_and_in_order_both_ways() -> None:
    upstream = os.urandom(300_000)
    downstream = os.urandom(500_000)
    received_upstream = bytearray()
    all_received = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Sends its whole payload in small writes while it reads the client's.
        async def send() -> None:
            for index in range(0, len(downstream), 7_000):
                writer.write(downstream[index : index + 7_000])
                await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        while data := await reader.read(10_000):
            received_upstream.extend(data)
        all_received.set()
        await sending
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with (
        server,
        DelayProxy("127.0.0.1", server.sockets[0].getsockname()[1], rtt_ms=10) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for index in range(0, len(upstream), 5_000):
            writer.write(upstream[index : index + 5_000])
            await writer.drain()
        writer.write_eof()
        received_downstream = await reader.read()  # to EOF
        await asyncio.wait_for(all_received.wait(), 10)
        writer.close()
        await writer.wait_closed()
    assert received_downstream == downstream
    assert bytes(received_upstream) == upstream


async def test_a_half_close_propagates_both_ways(echo_port: int) -> None:
    async with DelayProxy("127.0.0.1", echo_port, rtt_ms=RTT_MS) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"last words")
        writer.write_eof()
        started = time.monotonic()
        # The echo server answers, sees the EOF, closes; the client then sees EOF too.
        assert await reader.read() == b"last words"
        assert reader.at_eof()
        assert time.monotonic() - started >= RTT_S - SLACK_S
        writer.close()
        await writer.wait_closed()


async def test_a_server_close_reaches_the_client() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with (
        server,
        DelayProxy("127.0.0.1", server.sockets[0].getsockname()[1], rtt_ms=5) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await reader.read() == b"bye"
        writer.close()
        await writer.wait_closed()


async def test_a_client_reset_closes_the_upstream_side() -> None:
    closed = asyncio.Event()

    async def wait_for_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # EOF or reset: the proxy closed its side
        closed.set()
        writer.close()

    server = await asyncio.start_server(wait_for_close, "127.0.0.1", 0)
    async with (
        server,
        DelayProxy("127.0.0.1", server.sockets[0].getsockname()[1], rtt_ms=5) as proxy,
    ):
        _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        await asyncio.sleep(0.05)
        writer.transport.abort()  # RST, not a clean close
        await asyncio.wait_for(closed.wait(), 5)


async def test_an_unreachable_target_closes_the_client_connection() -> None:
    with_nothing = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = with_nothing.sockets[0].getsockname()[1]
    with_nothing.close()
    await with_nothing.wait_closed()
    async with DelayProxy("127.0.0.1", port, rtt_ms=5) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_stopping_the_proxy_ends_open_connections(echo_port: int) -> None:
    proxy = DelayProxy("127.0.0.1", echo_port, rtt_ms=5)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"hi")
    assert await reader.readexactly(2) == b"hi"
    await proxy.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


def test_a_negative_rtt_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        DelayProxy("127.0.0.1", 1, rtt_ms=-1)


async def test_the_proxy_process_entry_point_prints_its_port(
    echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    serving = asyncio.create_task(delay_proxy._serve(echo_port, 5))
    while not (printed := capsys.readouterr().out):
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(printed))
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    writer.close()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


def test_main_stops_quietly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(coroutine: Any) -> None:
        coroutine.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(asyncio, "run", interrupted)
    delay_proxy.main(["1", "40"])  # returns instead of raising
