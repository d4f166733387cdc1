"""Sub-agents on one socket: a planner that hands work to two specialist agents at once.

Run it (after `make setup`):

    .venv/bin/python examples/trip_planner.py

The planner's tools are two other agents (`Agent.as_tool`): `flights` searches flights and
`hotels` searches hotels, each with a tool of its own. The planner asks both in one turn; the
runtime runs the two sub-agents concurrently, each as its own conversation on its own lane of
the planner's WebSocket (no second connection, nothing of the planner's history re-sent), with
the planner's `deps`; each answer becomes the result of the planner's call, and the run's trace
nests each sub-run under that call.

The models are the embedded simulated model playing three small scripts; point `BASE_URL` at a
server that speaks the Responses API to run the same agents on a real model.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import hotloop
from hotloop import Agent, RunContext, Runner, tool
from hotloop.backends import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn


@dataclass
class Trip:
    """What every agent's tools share: the traveller, and a log of the searches made."""

    traveller: str
    searches: list[tuple[str, float]] = field(default_factory=list)


@tool(reads=["flights:{origin}:{destination}"])
async def search_flights(context: RunContext[Trip], origin: str, destination: str) -> str:
    """Search flights between two cities.

    Args:
        origin: City of departure.
        destination: City of arrival.
    """
    context.deps.searches.append(("flights", time.perf_counter()))
    await asyncio.sleep(0.3)  # a slow external API
    return f"AZ 331 {origin} 09:10 -> {destination} 11:15, 142 EUR for {context.deps.traveller}"


@tool(reads=["hotels:{city}"])
async def search_hotels(context: RunContext[Trip], city: str, nights: int) -> str:
    """Search hotels in a city.

    Args:
        city: Where to stay.
        nights: How many nights.
    """
    context.deps.searches.append(("hotels", time.perf_counter()))
    await asyncio.sleep(0.3)
    return f"Hotel Artemide, {city}, {nights} nights, 390 EUR"


MODEL = os.environ.get("HOTLOOP_MODEL", "hotloop-sim")
flights = Agent(f"{MODEL}:flights", "You find flights.", [search_flights], name="flights")
hotels = Agent(f"{MODEL}:hotels", "You find hotels.", [search_hotels], name="hotels")
planner = Agent(
    f"{MODEL}:planner",
    "You plan trips; give each specialist its part of the work.",
    [flights.as_tool(), hotels.as_tool()],
    name="planner",
)

# -- the simulated models' scripts (a real model decides this itself) ---------------------------

PLANNER = Scenario(
    name="planner",
    turns=(
        Turn(
            text="I'll ask the flight and hotel specialists.",
            calls=(
                ScriptedCall("flights", '{"task":"A flight from Paris to Rome on 3 May."}'),
                ScriptedCall("hotels", '{"task":"A hotel in Rome from 3 to 5 May."}'),
            ),
        ),
        Turn(
            text="Your trip: AZ 331 on 3 May (142 EUR) and Hotel Artemide for 2 nights (390 EUR)."
        ),
    ),
)
FLIGHTS = Scenario(
    name="flights",
    turns=(
        Turn(calls=(ScriptedCall("search_flights", '{"origin":"Paris","destination":"Rome"}'),)),
        Turn(text="AZ 331, 3 May, 09:10, 142 EUR."),
    ),
)
HOTELS = Scenario(
    name="hotels",
    turns=(
        Turn(calls=(ScriptedCall("search_hotels", '{"city":"Rome","nights":2}'),)),
        Turn(text="Hotel Artemide, 2 nights, 390 EUR."),
    ),
)


async def plan(base_url: str) -> None:
    trip = Trip(traveller="Ada")
    async with hotloop.connect(base_url) as client:
        started = time.perf_counter()
        result = await Runner.run(
            planner, "Plan my trip to Rome, 3 to 5 May.", client=client, deps=trip
        )
        wall = time.perf_counter() - started
        connections = client.stats.connections_opened
    print(result.final_output)
    for step in result.steps:
        for call in step.tools:
            for sub in call.subruns:
                calls = f"{sub.turns} turns, {sub.tool_calls} tool call(s)"
                print(f"  {call.name}: {calls} -> {sub.final_output}")
    if len(trip.searches) == 2:
        apart = abs(trip.searches[0][1] - trip.searches[1][1])
        print(f"the two searches started {apart * 1000:.1f} ms apart")
    print(f"{wall:.2f} s over {connections} connection(s)")


async def main() -> None:
    base_url = os.environ.get("BASE_URL")
    if base_url:
        await plan(base_url)
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")
    backend = SimBackend(PLANNER, profile, extra_scenarios={"flights": FLIGHTS, "hotels": HOTELS})
    async with GatewayServer(backend) as server:
        await plan(server.base_url)


if __name__ == "__main__":
    asyncio.run(main())
