"""Approval before side effects: a support agent whose writes wait for a decision.

Run it (after `make setup`, which creates `.venv` and installs hotloop into it):

    .venv/bin/python examples/refund_approvals.py

The agent (`approval="writes"`) may look customers, orders and shipments up freely, but every
call that writes (a refund, a ticket update) waits until it is approved. Here the approver is a
policy: ticket updates are fine, refunds up to `REFUND_LIMIT` (default 300) are approved and
larger ones denied; a denial reaches the model as an error result with the reason, and the call
never runs. While a call waits, nothing else does: the knowledge-base search next to the
refund runs at once. `Runner.run_stream` yields the same requests as `ApprovalRequested`
events, for a person to answer in a UI.

The model is the embedded simulated model playing the bundled `support` scenario (a lost
parcel, refunded). It follows its script whatever the decision, so its closing message still
mentions the refund after `REFUND_LIMIT=100`; a real model reads the denial and answers
accordingly. To run it against a server instead, set `BASE_URL`. A `hotloop gateway` plays the
same scenario (`.venv/bin/hotloop gateway &`, then
`BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python examples/refund_approvals.py`); on any
other Responses server, set `HOTLOOP_MODEL` to a model that can call tools.

Environment variables (all optional):

    BASE_URL            a Responses server (`http://host:port/v1`) to run against; default:
                        none, the example starts a gateway of its own in-process
    HOTLOOP_MODEL       with BASE_URL, the model the agent uses; default: `hotloop-sim:support`
                        (the `support` scenario, served by every `hotloop gateway`)
    OPENAI_API_KEY      with BASE_URL, the bearer token `hotloop.connect` sends; default: none
    HOTLOOP_PROFILE     the in-process simulated model's latency profile (`fast`, `frontier`,
                        `zero`, ...); default: `fast`; with BASE_URL the server decides
    HOTLOOP_TOOL_SCALE  multiplies the simulated tools' latencies (0: none); default: 1
    REFUND_LIMIT        the largest refund the policy approves; default: 300
"""

from __future__ import annotations

import asyncio
import json
import os

import hotloop
from hotloop import Agent, Runner
from hotloop.backends import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import ApprovalRequested
from hotloop.sim import load_scenario
from hotloop.testing import scenario_tools

#: The model with BASE_URL and no HOTLOOP_MODEL, and the in-process gateway's: every hotloop
#: gateway serves it, playing the bundled `support` scenario.
DEFAULT_MODEL = "hotloop-sim:support"
SUPPORT = load_scenario("support")
LIMIT = float(os.environ.get("REFUND_LIMIT", "300"))


def clip(text: str, width: int = 60) -> str:
    """``text``, cut to ``width`` characters with an ellipsis when it is longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


def approve(request: ApprovalRequested) -> bool | None:
    """The policy: ticket updates yes; refunds up to the limit; anything else to a person."""
    arguments = json.loads(request.arguments)
    if request.name == "update_ticket":
        verdict = True
    elif request.name == "issue_refund":
        amount = float(arguments.get("amount", 0))
        if amount > LIMIT:
            request.deny(f"refunds over {LIMIT:g} need a supervisor")
            verdict = None
        else:
            verdict = True
    else:
        request.deny("no policy for this tool")
        verdict = None
    shown = "approved" if verdict else "denied"
    print(f"  approval: {request.name}({clip(request.arguments)}) -> {shown}")
    return verdict


async def support(base_url: str, model: str) -> None:
    tools = scenario_tools(SUPPORT, time_scale=float(os.environ.get("HOTLOOP_TOOL_SCALE", "1")))
    agent = Agent(model, SUPPORT.instructions, tools, approval="writes")
    async with hotloop.connect(base_url) as client:
        result = await Runner.run(agent, SUPPORT.task, client=client, approver=approve)
    for step in result.steps:
        for call in step.tools:
            if call.approval is None:
                continue
            if call.error is None:
                outcome = "ran"
            elif call.approval == "denied":
                outcome = call.error  # "not run: <the reason>"
            else:
                outcome = f"failed: {call.error}"
            print(f"  turn {step.turn}: {call.name} {call.approval}, {outcome}")
    print(result.final_output)


async def main() -> None:
    base_url = os.environ.get("BASE_URL")
    if base_url:
        await support(base_url, os.environ.get("HOTLOOP_MODEL", DEFAULT_MODEL))
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")
    async with GatewayServer(SimBackend(SUPPORT, profile)) as server:
        await support(server.base_url, DEFAULT_MODEL)


if __name__ == "__main__":
    asyncio.run(main())
