"""Avoiding work: a support agent with a tool-result cache and speculative prefetch.

Run it (after `make setup`, which creates `.venv` and installs hotloop into it):

    .venv/bin/python examples/support_agent.py

It starts a hotloop gateway in-process on the embedded simulated model (the bundled
`support-research` scenario: an escalated ticket about webhooks that stopped arriving, 23 tool
calls over 15 turns, slow lookups of 0.35-1.5 s, 5 writes) and runs the same agent twice, each
time on a fresh copy of a toy back office (tickets, CRM, delivery log, a small web):

* **plain**: every call runs;
* **avoiding work**: the lookups declare `cache=True`, so a repeat is answered from the cache
  until a write to what it read drops it; the searches declare `follows=` (their results name
  the pages fetched next) and so does a ticket reply (the ticket is read again after it), and
  the agent runs with `policies=[Speculate()]`, so those reads start while the model is still
  writing its next turn.

It prints how each call of the second run was served, the speculations and whether the model
used them, both wall times, and checks that the model got the same tool results both times.

What to notice: the ticket and the delivery log are not cached (the customer and live deliveries
change them); the search repeated in turn 10 and the page fetched again there are answered from
the cache; a prediction the model did not take is waste, and the budget
(`Speculate(max_waste=0.25)`) stops speculating while unused ones would exceed a quarter of the
calls made. The tool results are the same both times: a cached or prefetched result is only
used where running the call would have given the same one.

To run it against a server instead, set `BASE_URL`. A `hotloop gateway` plays the same
scenario (`.venv/bin/hotloop gateway &`, then
`BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python examples/support_agent.py`); on any other
Responses server, set `HOTLOOP_MODEL` to a model that can call tools. A real model makes its own
calls, different in each run, so the two runs are no longer a comparison (the example says so).

Environment variables (all optional):

    BASE_URL            a Responses server (`http://host:port/v1`) to run against; default:
                        none, the example starts a gateway of its own in-process
    HOTLOOP_MODEL       with BASE_URL, the model the agent uses; default:
                        `hotloop-sim:support-research` (served by every `hotloop gateway`)
    OPENAI_API_KEY      with BASE_URL, the bearer token `hotloop.connect` sends; default: none
    HOTLOOP_PROFILE     the in-process simulated model's latency profile (`fast`, `frontier`,
                        `zero`, ...); default: `fast`; with BASE_URL the server decides
    HOTLOOP_TOOL_SCALE  multiplies the toy tools' latencies (0: none); default: 1
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from typing import Any

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import RunResult, Speculate, Tool
from hotloop.sim import load_scenario
from hotloop.wire.items import FunctionCallOutput

#: The model with BASE_URL and no HOTLOOP_MODEL, and the in-process gateway's: every hotloop
#: gateway serves it, playing the bundled `support-research` scenario.
DEFAULT_MODEL = "hotloop-sim:support-research"
SCENARIO = load_scenario("support-research")
SCALE = float(os.environ.get("HOTLOOP_TOOL_SCALE", "1"))

# -- a toy web: page URL → title -----------------------------------------------------------------

PAGES: dict[str, str] = {
    "https://docs.example.com/changelog/2025-06-11-webhook-tls": (
        "Changelog 11 June 2025: webhook deliveries require TLS 1.2 minimum version"
    ),
    "https://docs.example.com/webhooks/troubleshooting": (
        "Troubleshooting webhook deliveries: failing TLS handshake, protocol_version errors"
    ),
    "https://docs.example.com/webhooks/retries": "Webhook retries and failing deliveries",
    "https://docs.example.com/security/tls": "TLS versions we support",
    "https://docs.example.com/webhooks/legacy-tls-grace": (
        "Legacy TLS grace period for a webhook endpoint (enterprise plans)"
    ),
    "https://docs.example.com/plans/enterprise": "Enterprise plan",
    "https://support.edgelb.example.net/kb/enable-tls-1-2-on-listeners": (
        "EdgeLB: enable TLS 1.2 on an HTTPS listener"
    ),
    "https://support.edgelb.example.net/docs/4.2/listeners": "EdgeLB 4.2 listeners",
    "https://support.edgelb.example.net/release-notes/4.3": "EdgeLB 4.3 release notes: TLS 1.2",
}
#: Our own knowledge base: the pages under these prefixes.
KNOWLEDGE_BASE = ("https://docs.example.com/webhooks/", "https://docs.example.com/security/")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_.]+", text.lower()))


def search(query: str, prefixes: tuple[str, ...] = ("https://",)) -> str:
    """The four pages under ``prefixes`` whose titles share the most words with ``query``
    (two at least), best first: one URL per line."""
    scored = sorted(
        (-len(words(query) & words(title)), url)
        for url, title in PAGES.items()
        if url.startswith(prefixes)
    )
    return "\n".join(url for score, url in scored[:4] if score <= -2)


def listed_pages(args: Mapping[str, Any], output: str) -> list[tuple[str, dict[str, Any]]]:
    """A search's follow-ups: fetching the pages it found, best first."""
    return [("fetch_page", {"url": url}) for url in output.splitlines()]


def ticket_again(args: Mapping[str, Any], output: str) -> list[tuple[str, dict[str, Any]]]:
    """After a reply, agents read the ticket again to check it went through."""
    return [("get_ticket", {"ticket_id": args["ticket_id"]})]


# -- the back office: the same functions, declared with or without work avoidance ---------------


def back_office(avoid_work: bool) -> list[Tool]:
    """The agent's tools over a fresh toy back office; ``avoid_work``: declare caching and
    follow-ups (effects are declared either way: they order conflicting calls)."""
    ticket: dict[str, Any] = {"status": "new", "priority": "normal", "tags": [], "thread": 1}
    endpoint: dict[str, Any] = {"grace_days": 0, "delivered": 0, "failed": 212}
    cache = avoid_work

    async def work(seconds: float) -> None:
        await asyncio.sleep(seconds * SCALE)

    @tool(reads=["ticket/{ticket_id}"])
    async def get_ticket(ticket_id: str) -> str:
        """Get a support ticket: status, priority, tags and the number of comments."""
        await work(0.35)
        return (
            f"{ticket_id}: {ticket['status']}, {ticket['priority']}, tags {ticket['tags']}, "
            f"{ticket['thread']} comment(s)"
        )

    @tool(writes=["ticket/{ticket_id}"])
    async def update_ticket(
        ticket_id: str,
        status: str | None = None,
        priority: str | None = None,
        tags: list[str] | None = None,
    ) -> str:
        """Set fields of a ticket; fields left out are unchanged."""
        await work(0.4)
        changes = {"status": status, "priority": priority, "tags": tags}
        ticket.update({key: value for key, value in changes.items() if value is not None})
        return f"{ticket_id} updated"

    @tool(writes=["ticket/{ticket_id}"], follows=ticket_again if avoid_work else None)
    async def reply_to_ticket(
        ticket_id: str, body: str, public: bool, status: str | None = None
    ) -> str:
        """Add a public reply or an internal note to a ticket."""
        await work(0.5)
        ticket["thread"] += 1
        ticket["status"] = status or ticket["status"]
        return f"{'reply' if public else 'note'} added to {ticket_id}"

    @tool(reads=["crm/{account_id}"], cache=cache)
    async def crm_lookup(account_id: str) -> str:
        """Look up a customer account: company, plan, entitlements."""
        await work(0.7)
        return f"{account_id}: Northwind Logistics, Enterprise, legacy TLS grace allowed"

    @tool(reads=["webhooks/{account_id}/{endpoint_id}"])
    async def webhook_logs(account_id: str, endpoint_id: str, since: str) -> str:
        """Query the delivery log of a webhook endpoint since a time."""
        await work(1.1)
        return (
            f"{endpoint_id} since {since}: {endpoint['failed']} failed (protocol_version), "
            f"{endpoint['delivered']} delivered"
        )

    @tool(writes=["webhooks/{account_id}/{endpoint_id}"])
    async def update_webhook_endpoint(
        account_id: str, endpoint_id: str, legacy_tls_grace_days: int
    ) -> str:
        """Change a webhook endpoint's settings (a legacy TLS grace period in days)."""
        await work(0.6)
        endpoint["grace_days"] = legacy_tls_grace_days
        return f"{endpoint_id}: legacy TLS allowed for {legacy_tls_grace_days} days"

    @tool(writes=["webhooks/{account_id}/{endpoint_id}"])
    async def replay_deliveries(account_id: str, endpoint_id: str, since: str) -> str:
        """Replay the failed deliveries of an endpoint since a time."""
        await work(1.5)
        if endpoint["grace_days"]:
            endpoint["delivered"], endpoint["failed"] = endpoint["failed"], 0
        return f"{endpoint['delivered']} deliveries replayed"

    @tool(reads=["web"], cache=cache, follows=listed_pages if avoid_work else None)
    async def web_search(query: str) -> str:
        """Search the web; one result URL per line."""
        await work(1.3)
        return search(query)

    @tool(reads=["web/{url}"], cache=cache)
    async def fetch_page(url: str) -> str:
        """Fetch a web page as text."""
        await work(0.9)
        return f"# {PAGES[url]}\n\n(the page's text)" if url in PAGES else "404 not found"

    @tool(reads=["kb"], cache=cache, follows=listed_pages if avoid_work else None)
    async def search_kb(query: str) -> str:
        """Search our knowledge base; one article URL per line."""
        await work(0.45)
        return search(query, KNOWLEDGE_BASE)

    return [
        get_ticket,
        update_ticket,
        reply_to_ticket,
        crm_lookup,
        webhook_logs,
        update_webhook_endpoint,
        replay_deliveries,
        web_search,
        fetch_page,
        search_kb,
    ]


# -- the two runs ------------------------------------------------------------------------------


def calls_and_results(result: RunResult) -> tuple[list[tuple[str, str]], list[object]]:
    """The calls the model made (tool, arguments) and the results it got, in order."""
    calls = [(call.name, call.arguments) for step in result.steps for call in step.tools]
    results = [item.output for item in result.items if isinstance(item, FunctionCallOutput)]
    return calls, results


async def run(base_url: str, model: str, avoid_work: bool) -> RunResult:
    agent = Agent(
        model,
        SCENARIO.instructions,
        back_office(avoid_work),
        policies=[Speculate()] if avoid_work else [],
    )
    async with hotloop.connect(base_url) as client:
        return await Runner.run(agent, SCENARIO.task, client=client)


def served(result: RunResult) -> None:
    """Print how each call of ``result`` was served, and its speculations."""
    for turn, step in enumerate(result.steps):
        for call in step.tools:
            how = {
                "hit": "from the cache",
                "coalesced": "joined a twin",
                "speculated": "prefetched",
            }.get(call.cache or "", "ran")
            print(f"  turn {turn:2}  {call.name:<24} {how}")
    for speculation in result.speculations:
        used = "used" if speculation.used_ns is not None else "not used (waste)"
        print(f"  speculated {speculation.name}({speculation.arguments[:58]}): {used}")


async def compare(base_url: str, model: str) -> None:
    plain = await run(base_url, model, avoid_work=False)
    avoiding = await run(base_url, model, avoid_work=True)
    print("Avoiding work, call by call:")
    served(avoiding)
    (plain_calls, plain_results), (calls, results) = map(calls_and_results, (plain, avoiding))
    if plain_calls != calls:
        verdict = "the two runs made different calls: a real model, not comparable"
    elif plain_results != results:
        verdict = f"DIFFERENT tool results in {len(calls)} calls"
    else:
        verdict = f"the same {len(calls)} tool results both times"
    print(
        f"\nplain: {plain.wall_ns / 1e9:.2f} s; avoiding work: {avoiding.wall_ns / 1e9:.2f} s "
        f"({plain.wall_ns / avoiding.wall_ns:.2f}x); {verdict}"
    )


async def main() -> None:
    base_url = os.environ.get("BASE_URL")
    if base_url:
        await compare(base_url, os.environ.get("HOTLOOP_MODEL", DEFAULT_MODEL))
        return
    profile = os.environ.get("HOTLOOP_PROFILE", "fast")  # fast | frontier | zero | ...
    async with GatewayServer(SimBackend(SCENARIO, profile)) as server:
        await compare(server.base_url, DEFAULT_MODEL)


if __name__ == "__main__":
    asyncio.run(main())
