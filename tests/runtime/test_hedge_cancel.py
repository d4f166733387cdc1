"""A hedge that wins over a WebSocket stops the loser's generation at the gateway.

A real gateway, the sim with two replicas behind :class:`gated.GatedBackend`: the first
attempt starts on one replica and never produces output, so the hedge goes out and wins; the
winner is then held mid-response, so the test can see the loser's generation closed (and the
gateway's ``hotloop_active_responses`` gauge drop) while the winner is still streaming.
"""

from __future__ import annotations

import asyncio

from gated import GatedBackend
from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Hedge, Runner
from hotloop.sim.scenario import Scenario, Turn
from hotloop.transport import WebSocketTransport

MODEL = "hotloop-sim"
TEXT = " ".join(f"w{i}" for i in range(30))
#: A guard against hangs only; no assertion depends on how long anything takes.
TIMEOUT = 20.0


async def test_the_losing_attempt_stops_generating_while_the_winner_streams() -> None:
    sim = SimBackend(Scenario(name="words", turns=(Turn(text=TEXT),)), "zero", replicas=2)
    backend = GatedBackend(sim, plan=["never", "hold"])  # the original, then the hedge
    hedge = Hedge(delay=0.01, budget=1.0)
    async with GatewayServer(backend) as server:  # type: ignore[arg-type]
        active = server.gateway.metrics.active_responses
        client = WebSocketTransport(server.websocket_url)
        try:
            run = asyncio.create_task(
                Runner.run(Agent(MODEL, policies=[hedge]), "hi", client=client)
            )
            # The hedge produced output and won; the loser was cancelled, and the gateway
            # closed its generation while the winner is still mid-response.
            await asyncio.wait_for(backend.stopped[0].wait(), TIMEOUT)
            assert backend.output[1].is_set() and not run.done()
            assert active._value.get() == 1
            assert client.stats.cancels == 1
            backend.release.set()
            result = await asyncio.wait_for(run, TIMEOUT)
        finally:
            await client.close()
    assert result.final_output == TEXT
    assert (hedge.requests, hedge.hedges, hedge.wins) == (1, 1, 1)
    assert not backend.stopped[1].is_set()  # the winner ran to its end
    assert client.stats.connections_opened == 1  # both attempts shared one socket
    assert active._value.get() == 0
