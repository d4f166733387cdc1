"""The fault proxy over real loopback sockets: each kind of fault, the plan, the counters.

Every check is about bytes, closes and counters; a stall is checked by what arrives before
and after it is over, never by how long it took.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from hotloop.testing.faults import Fault, FaultPlan, FaultProxy
from support import echo


async def _open(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"  # the link is up
    return reader, writer


async def test_forwards_bytes_and_counts_connections(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        reader, writer = await _open(proxy)
        payload = os.urandom(200_000)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        assert proxy.active == 1
        writer.close()
        await writer.wait_closed()
    assert proxy.connections == 1
    assert proxy.forwarded == 2 * (5 + len(payload))
    assert not proxy.faults


@pytest.mark.parametrize("kind", [Fault.DROP, Fault.RESET])
async def test_drop_and_reset_close_the_client(echo_port: int, kind: Fault) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await _open(proxy)
        assert proxy.inject(kind) == 1
        if kind is Fault.DROP:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # a clean end of stream
        else:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert proxy.faults == {kind: 1}


async def test_truncate_forwards_the_next_n_server_bytes_then_closes(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await _open(proxy)
        proxy.inject(Fault.TRUNCATE, nbytes=7)
        writer.write(b"0123456789abcdef")
        assert await asyncio.wait_for(reader.read(), 5) == b"0123456"
        writer.close()
    assert proxy.faults == {Fault.TRUNCATE: 1}


async def test_a_stall_holds_bytes_then_delivers_them_intact(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await _open(proxy)
        proxy.inject(Fault.STALL, seconds=1.0)
        writer.write(b"held")
        # Nothing arrives while the stall lasts ...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.1)
        # ... and everything arrives after it (read() after a timeout would lose nothing:
        # readexactly left the partial data buffered).
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        writer.close()


async def test_a_delay_still_delivers_in_order(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await _open(proxy)
        proxy.inject(Fault.DELAY, seconds=0.02, duration=0.1)
        for index in range(20):
            writer.write(b"%02d" % index)
            await asyncio.sleep(0.01)
        expected = b"".join(b"%02d" % index for index in range(20))
        assert await asyncio.wait_for(reader.readexactly(40), 5) == expected
        writer.close()
    assert proxy.faults == {Fault.DELAY: 1}


async def test_half_open_forwards_nothing_and_closes_nothing() -> None:
    upstream_closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await echo(reader, writer)
        upstream_closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        reader, writer = await _open(proxy)
        proxy.inject(Fault.HALF_OPEN)
        writer.write(b"anyone?")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
        assert not reader.at_eof() and not upstream_closed.is_set()
        # The client gives up: only then does the server side close.
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)


async def test_injecting_into_one_connection_only(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        first_r, first_w = await _open(proxy)
        second_r, second_w = await _open(proxy)
        assert proxy.inject(Fault.DROP, connection=2) == 1
        assert await asyncio.wait_for(second_r.read(), 5) == b""
        first_w.write(b"still")
        assert await first_r.readexactly(5) == b"still"
        for writer in (first_w, second_w):
            writer.close()
        assert proxy.inject(Fault.DROP, connection=99) == 0


async def test_a_plan_fires_at_byte_offsets_reproducibly(echo_port: int) -> None:
    async def received(seed: int) -> tuple[int, dict[Fault, int]]:
        plan = FaultPlan(seed=seed, every_bytes=1_000, kinds=(Fault.TRUNCATE,))
        async with FaultProxy("127.0.0.1", echo_port, plan=plan) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(os.urandom(10_000))
            data = await asyncio.wait_for(reader.read(), 5)  # cut: the proxy closed
            writer.close()
            return len(data), dict(proxy.faults)

    first = await received(3)
    assert first == await received(3)
    length, faults = first
    assert faults == {Fault.TRUNCATE: 1}
    # The gap is 500..1500 bytes of client data, then at most 2,048 more server bytes.
    assert length < 1_500 + 2_048


async def test_max_faults_bounds_a_plan(echo_port: int) -> None:
    plan = FaultPlan(
        seed=1,
        every_bytes=100,
        kinds=(Fault.DELAY,),
        max_faults=3,
        delay_seconds=(0, 0.001),
        delay_duration=(0, 0.01),
    )
    async with FaultProxy("127.0.0.1", echo_port, plan=plan) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = os.urandom(5_000)
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        writer.close()
    assert proxy.faults == {Fault.DELAY: 3}


async def test_stop_closes_open_connections(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port)
    await proxy.start()
    reader, writer = await _open(proxy)
    await proxy.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert proxy.active == 0
    writer.close()


@pytest.mark.parametrize(
    "field",
    [
        {"every_bytes": 0},
        {"kinds": ()},
        {"stall_seconds": (2.0, 1.0)},
        {"truncate_bytes": (-1, 10)},
    ],
)
def test_invalid_plans_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**field)  # type: ignore[arg-type]


async def test_invalid_arguments_are_refused(echo_port: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        FaultProxy("127.0.0.1", echo_port, one_way_delay=-1)
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        with pytest.raises(ValueError, match="non-negative"):
            proxy.inject(Fault.STALL, seconds=-1)
