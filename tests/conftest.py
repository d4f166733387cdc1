"""Shared fixtures: a real gateway on a loopback port, driven by the real sim engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario
from support import echo, ten_turn_scenario

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]


@pytest.fixture
def gateway_factory() -> GatewayFactory:
    """``async with gateway_factory(scenario=..., profile=..., config=...) as server:``.

    Defaults: the ten-turn scenario above and the ``zero`` latency profile.
    """

    @asynccontextmanager
    async def start(
        scenario: Scenario | str | None = None,
        profile: LatencyProfile | str = "zero",
        config: GatewayConfig | None = None,
        **config_fields: Any,
    ) -> AsyncIterator[GatewayServer]:
        if config is None:
            config = GatewayConfig(**config_fields)
        backend = SimBackend(scenario if scenario is not None else ten_turn_scenario(), profile)
        async with GatewayServer(backend, config) as server:
            yield server

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[GatewayServer]:
    """A gateway on the ten-turn scenario, ``zero`` profile, default config."""
    async with gateway_factory() as server:
        yield server


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A loopback TCP server that sends back every byte it gets (for proxy tests)."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])
