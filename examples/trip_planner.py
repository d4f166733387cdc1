"""Sub-agents on one socket: a planner that hands work to two specialist agents at once.

Run it (after `make setup`, which creates `.venv` and installs hotloop into it):

    .venv/bin/python examples/trip_planner.py

The planner's tools are two other agents (`Agent.as_tool`): `flights` searches flights and
`hotels` searches hotels, each with a tool of its own. The planner asks both in one turn; the
runtime runs the two sub-agents concurrently, each as its own conversation on its own lane of
the planner's WebSocket (no second connection, nothing of the planner's history re-sent), with
the planner's `deps`; each answer becomes the result of the planner's call, and the run's trace
nests each sub-run under that call.

The models are the embedded simulated model playing three small scripts, served by a gateway
the example starts in-process. To run the same agents against a server instead, set
`BASE_URL`; every agent then uses the one model `HOTLOOP_MODEL` names. On a `hotloop gateway`
(`.venv/bin/hotloop gateway &`, then
`BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python examples/trip_planner.py`) the default,
`hotloop-sim:generic:1`, drives the agents with placeholder arguments and canned answers; on
any other Responses server, set `HOTLOOP_MODEL` to a model that can call tools. Such a model
decides for itself whether to ask both specialists in one turn and how often to search; the
output reports what happened.

Environment variables (all optional):

    BASE_URL         a Responses server (`http://host:port/v1`) to run against; default: none,
                     the example starts a gateway of its own in-process
    HOTLOOP_MODEL    with BASE_URL, the model every agent uses; default: `hotloop-sim:generic:1`
                     (one tool turn, then an answer; served by every `hotloop gateway`)
    OPENAI_API_KEY   with BASE_URL, the bearer token `hotloop.connect` sends; default: none
    HOTLOOP_PROFILE  the in-process simulated model's latency profile (`fast`, `frontier`,
                     `zero`, ...); default: `fast`; with BASE_URL the server decides
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
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


#: The model of every agent with BASE_URL and no HOTLOOP_MODEL: every hotloop gateway serves
#: it (the simulated model's generic mode: it calls the tools offered once, then answers).
DEFAULT_MODEL = "hotloop-sim:generic:1"


def make_planner(model: Callable[[str], str]) -> Agent:
    """The planner and its two specialists; ``model(name)`` is the model of the agent ``name``."""
    flights = Agent(model("flights"), "You find flights.", [search_flights], name="flights")
    hotels = Agent(model("hotels"), "You find hotels.", [search_hotels], name="hotels")
    return Agent(
        model("planner"),
        "You plan trips; give each specialist its part of the work.",
        [flights.as_tool(), hotels.as_tool()],
        name="planner",
    )


# -- the in-process simulated models' scripts, one per agent (a real model decides this itself) --

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


async def plan(base_url: str, planner: Agent) -> None:
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
        model = os.environ.get("HOTLOOP_MODEL", DEFAULT_MODEL)
        await plan(base_url, make_planner(lambda name: model))
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")
    backend = SimBackend(PLANNER, profile, extra_scenarios={"flights": FLIGHTS, "hotels": HOTELS})
    async with GatewayServer(backend) as server:
        # Each agent plays its own script: `hotloop-sim:<name>` (the backend's names above).
        await plan(server.base_url, make_planner(lambda name: f"hotloop-sim:{name}"))


if __name__ == "__main__":
    asyncio.run(main())
