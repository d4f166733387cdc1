"""Structured output: the agent's final answer as a typed value.

Run it (after `make setup`, which creates `.venv` and installs hotloop into it):

    .venv/bin/python examples/structured_output.py

`Agent(output_type=Triage)` asks the model for JSON that follows `Triage`'s schema (the
Responses `text.format`; over Chat Completions, `response_format`) and validates the final
answer into a `Triage`: `result.output` is the object, `result.final_output` the raw text. If
an answer does not validate (a field missing, a priority of 7, or anything a pydantic validator
of yours refuses), the errors go back to the model, which answers again (`output_retries`,
default 1); past that the run raises `OutputValidationError`.

The model is the embedded simulated model, served by a gateway the example starts in-process,
which answers a schema with a value it synthesizes from it (so the fields hold placeholder
values). To run it against a server instead, set `BASE_URL`: a `hotloop gateway` does the same
(`.venv/bin/hotloop gateway &`, then
`BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python examples/structured_output.py`); on any
other Responses server, set `HOTLOOP_MODEL` to see a real model fill the fields in.

Environment variables (all optional):

    BASE_URL         a Responses server (`http://host:port/v1`) to run against; default: none,
                     the example starts a gateway of its own in-process
    HOTLOOP_MODEL    with BASE_URL, the model the agent uses; default: `hotloop-sim:generic:1`
                     (one tool turn, then an answer; served by every `hotloop gateway`)
    OPENAI_API_KEY   with BASE_URL, the bearer token `hotloop.connect` sends; default: none
    HOTLOOP_PROFILE  the in-process simulated model's latency profile (`fast`, `frontier`,
                     `zero`, ...); default: `fast`; with BASE_URL the server decides
"""

from __future__ import annotations

import asyncio
import os
from typing import Literal

import pydantic

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn


class Triage(pydantic.BaseModel):
    """How to handle a support ticket."""

    category: Literal["billing", "shipping", "account", "other"]
    priority: int = pydantic.Field(ge=1, le=4)
    summary: str
    owner: str | None = None


@tool(reads=["ticket:{ticket_id}"])
async def get_ticket(ticket_id: str) -> str:
    """Read a support ticket.

    Args:
        ticket_id: The ticket's id, such as T-1042.
    """
    return "Customer charged twice for order A-77 (USD 49.00 each); asks for one to be refunded."


#: The model with BASE_URL and no HOTLOOP_MODEL: every hotloop gateway serves it (the simulated
#: model's generic mode: it calls the tools offered once, then answers, as SCRIPT does).
DEFAULT_MODEL = "hotloop-sim:generic:1"

#: What the in-process gateway's simulated model (`hotloop-sim`) plays.
SCRIPT = Scenario(
    name="triage",
    turns=(
        Turn(calls=(ScriptedCall("get_ticket", '{"ticket_id":"T-1042"}'),)),
        Turn(text="(the simulated model answers the schema with a synthesized value)"),
    ),
)


async def triage(base_url: str, model: str) -> None:
    agent = Agent(model, "You triage support tickets.", [get_ticket], output_type=Triage)
    async with hotloop.connect(base_url) as client:
        result = await Runner.run(agent, "Triage ticket T-1042.", client=client)
    ticket: Triage = result.output
    print(f"{type(ticket).__name__}: category={ticket.category} priority={ticket.priority}")
    print(f"summary={ticket.summary!r} owner={ticket.owner!r}")
    print(f"raw answer: {result.final_output}")
    print(f"{result.turns} turns")


async def main() -> None:
    base_url = os.environ.get("BASE_URL")
    if base_url:
        await triage(base_url, os.environ.get("HOTLOOP_MODEL", DEFAULT_MODEL))
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")
    async with GatewayServer(SimBackend(SCRIPT, profile)) as server:
        await triage(server.base_url, "hotloop-sim")


if __name__ == "__main__":
    asyncio.run(main())
