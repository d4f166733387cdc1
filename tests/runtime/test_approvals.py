"""Approval before side effects.

A call that needs approval waits for it without holding anything else up, runs when approved,
and is answered with an error when denied; both outcomes are on the call's record and in the
trace. The support scenario issues a refund (a write) next to a knowledge-base search (pure).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import (
    Agent,
    ApprovalRequested,
    Runner,
    ToolCallFinished,
    ToolCallStarted,
)
from hotloop.sim.scenario import load_scenario
from hotloop.testing import ExecutionLog, scenario_tools
from hotloop.trace.spans import spans_from_result
from hotloop.transport import connect
from hotloop.wire.items import FunctionCall, FunctionCallOutput

SUPPORT = load_scenario("support")
MODEL = "hotloop-sim:support"


@pytest.fixture
async def support_gateway(gateway_factory: Any) -> Any:
    async with gateway_factory(scenario=SUPPORT) as server:
        yield server


def outputs_by_name(items: Any) -> dict[str, list[str]]:
    names = {item.call_id: item.name for item in items if isinstance(item, FunctionCall)}
    found: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, FunctionCallOutput):
            found.setdefault(names[item.call_id], []).append(item.text)
    return found


async def test_writes_wait_for_the_approver_and_a_denial_reaches_the_model(
    support_gateway: GatewayServer,
) -> None:
    log = ExecutionLog()
    agent = Agent(MODEL, tools=scenario_tools(SUPPORT, time_scale=0, log=log), approval="writes")
    asked: list[str] = []

    async def approver(request: ApprovalRequested) -> bool:
        asked.append(request.name)
        return request.name != "issue_refund"  # refunds need a person: denied here

    async with connect(support_gateway.base_url) as client:
        result = await Runner.run(agent, SUPPORT.task, client=client, approver=approver)

    # Only the writes were asked about; reads, pure and read-only calls never wait.
    assert sorted(asked) == ["issue_refund", "update_ticket"]
    assert log.count("issue_refund") == 0 and log.count("update_ticket") == 1
    refund = outputs_by_name(result.items)["issue_refund"][0]
    assert '"type":"denied"' in refund and "the user denied it" in refund
    records = {tool.name: tool for step in result.steps for tool in step.tools}
    assert records["issue_refund"].approval == "denied"
    assert records["update_ticket"].approval == "approved"
    assert records["get_order"].approval is None
    spans = spans_from_result(result)
    approvals = [span for span in spans if span.name == "tool.approval"]
    assert len(approvals) == 2
    decided = sorted(
        str(span.attributes["hotloop.tool.approval"])
        for span in spans
        if "hotloop.tool.approval" in span.attributes
    )
    assert decided == ["approved", "denied"]


async def test_a_call_waiting_for_approval_holds_up_nothing_else(
    support_gateway: GatewayServer,
) -> None:
    log = ExecutionLog()
    tools = scenario_tools(SUPPORT, time_scale=0, log=log)
    # Lazy: the refund and the search are submitted together once the turn has ended.
    agent = Agent(MODEL, tools=tools, eager=False, approval="writes")
    pending: list[ApprovalRequested] = []
    order: list[str] = []
    async with connect(support_gateway.base_url) as client:
        async with asyncio.timeout(30):
            async for event in Runner.run_stream(agent, SUPPORT.task, client=client):
                if isinstance(event, ApprovalRequested):
                    order.append(f"ask {event.name}")
                    if event.name == "update_ticket":
                        event.approve()
                    else:
                        pending.append(event)  # decided below, once the search is done
                elif isinstance(event, ToolCallStarted) and event.name == "search_kb":
                    order.append(f"start {event.name} {event.turn}")
                elif isinstance(event, ToolCallFinished) and event.turn == 3:
                    order.append(f"finish {event.name}")
                    if event.name == "search_kb":
                        assert pending and not pending[0].decided
                        pending[0].approve()
    assert order.index("ask issue_refund") < order.index("finish search_kb")
    assert order.index("finish search_kb") < order.index("finish issue_refund")
    assert log.count("issue_refund") == 1


async def test_run_without_an_approver_refuses_to_start(support_gateway: GatewayServer) -> None:
    agent = Agent(MODEL, tools=scenario_tools(SUPPORT, time_scale=0), approval="writes")
    async with connect(support_gateway.base_url) as client:
        with pytest.raises(ValueError, match=r"issue_refund, update_ticket must be approved"):
            await Runner.run(agent, SUPPORT.task, client=client)


async def test_run_sync_takes_an_approver(support_gateway: GatewayServer) -> None:
    """Synchronous code passes an approver as to ``Runner.run``; without one it is refused
    before anything is sent, with a message that names ``run_sync``."""
    log = ExecutionLog()
    agent = Agent(MODEL, tools=scenario_tools(SUPPORT, time_scale=0, log=log), approval="writes")
    asked: list[str] = []

    def approver(request: ApprovalRequested) -> bool:  # a plain function, from sync code
        asked.append(request.name)
        return request.name != "issue_refund"

    result = await asyncio.to_thread(
        Runner.run_sync, agent, SUPPORT.task, base_url=support_gateway.base_url, approver=approver
    )
    assert sorted(asked) == ["issue_refund", "update_ticket"]
    assert log.count("issue_refund") == 0 and log.count("update_ticket") == 1
    assert "the user denied it" in outputs_by_name(result.items)["issue_refund"][0]

    with pytest.raises(ValueError, match=r"must be approved .*Runner\.run_sync"):
        await asyncio.to_thread(
            Runner.run_sync, agent, SUPPORT.task, base_url=support_gateway.base_url
        )
    assert log.count("update_ticket") == 1
