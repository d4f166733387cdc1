"""Per-step model routing: digest turns on a small model, what it saves and what a switch costs.

A gateway serves two simulated models with the constant profiles (no tails, so every figure but
wall time is exact): ``small`` (profile ``fast``) and ``large`` (profile ``frontier``), model ids
``hotloop-sim@small:generic:N`` and ``hotloop-sim@large:generic:N``. A rollout is a
conversation of ``--rounds`` user messages on one WebSocket connection (``hotloop.connect``'s
default transport), each a run of the generic mode: ``--turns`` tool turns (each calls the
agent's one tool, which returns ``--output-bytes`` bytes), then an answer. So every turn but
the first of each round only digests tool results; later rounds continue the conversation
(``previous=``), so the history grows long.

Strategies, interleaved (each run index plays every strategy side by side, on its own
conversation, so no rollout finds another's prompt in a model's prefix cache):

* ``large``: every turn on the large model;
* ``routed``: ``RouteTurns.digest(small)`` (turns whose new input is only tool outputs go to the
  small model, the others to the large one, and so does the final answer: the small model's
  answer is cut at its first output item and the turn sent to the large model), each model
  keeping its own chain;
* ``routed-no-chains``: the same with ``keep_chains=False``: a switched turn sends the whole
  history;
* ``routed-small-answer``: ``RouteTurns.digest(small, answer="small")``: the small model's
  answer stands;
* ``small``: every turn on the small model, for reference.

It prints the median rollout wall time per strategy and the ratio routed/large, the escalations
(answers given up on the small model) per rollout and the time they wasted, then the cost of
a switch (a turn answered by another model than the turn before it, counted across rounds):
request bytes and uncached input tokens (``input_tokens - cached_tokens``) per switch, by
direction, with and without chains, next to an unswitched turn's; over WebSocket and over HTTP
with ``previous_response_id`` (``incremental=True``, ``store: true``; stateless HTTP sends the
whole history every turn, so a switch costs it nothing extra). It exits 1 when a rollout
failed; it never gates on wall time.

    python bench/routing.py                          # 5 runs, 16 tool turns, 2 rounds
    python bench/routing.py --quick                  # 2 runs, 4 tool turns
    python bench/routing.py --runs 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.sim import SimBackend, model_id
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import RouteTurns, StepRecord

STRATEGIES = ("large", "routed", "routed-no-chains", "routed-small-answer", "small")
#: Filler for the tool's result, cut to ``--output-bytes``.
_FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 64


def make_tool(output_bytes: int) -> Any:
    @tool(pure=True)
    async def lookup(query: str) -> str:
        """Look something up.

        Args:
            query: What to look up.
        """
        head = f"found {query}: "
        return head + _FILLER[: max(0, output_bytes - len(head))]

    return lookup


def agents(turns: int, tools: Sequence[Any]) -> dict[str, Agent]:
    """Each strategy's agent for a round that ends after ``turns`` tool turns in all (the
    generic mode counts the conversation's tool results, earlier rounds' too)."""
    small = model_id("small", f"generic:{turns}")
    large = model_id("large", f"generic:{turns}")
    limit = turns + 2

    def agent(model: str, *policies: Any) -> Agent:
        return Agent(model, tools=tools, max_turns=limit, policies=list(policies))

    return {
        "large": agent(large),
        "routed": agent(large, RouteTurns.digest(small)),
        "routed-no-chains": agent(large, RouteTurns.digest(small, keep_chains=False)),
        "routed-small-answer": agent(large, RouteTurns.digest(small, answer="small")),
        "small": agent(small),
    }


async def rollout(client: Any, rounds: Sequence[Agent], tag: str) -> tuple[float, list[StepRecord]]:
    """One conversation on ``client``, a run per round: its wall time and every step."""
    steps: list[StepRecord] = []
    result = None
    started = time.perf_counter()
    for number, agent in enumerate(rounds, 1):
        task = f"[{tag}] question {number}: look into it and report."
        result = await Runner.run(agent, task, client=client, previous=result)
        steps.extend(result.steps)
    return time.perf_counter() - started, steps


def model_name(step: StepRecord) -> str:
    model = step.response_model or ""
    return model.partition("@")[2].partition(":")[0] or model


def switch_costs(steps: Sequence[StepRecord]) -> dict[str, list[dict[str, Any]]]:
    """The steps of a rollout by kind: switches to each model, and unswitched turns."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for before, step in itertools.pairwise(steps):
        model = model_name(step)
        kind = f"to {model}" if model != model_name(before) else "unswitched"
        usage = step.usage
        kinds.setdefault(kind, []).append(
            {
                "bytes": step.request_bytes,
                "incremental": step.incremental,
                "uncached": (usage.input_tokens - usage.cached_tokens) if usage else 0,
            }
        )
    return kinds


def summarize(rollouts: Sequence[Sequence[StepRecord]]) -> dict[str, Any]:
    """Per kind of step: how many per rollout, mean bytes and uncached tokens, the share sent
    incrementally; and the escalated turns (an answer begun on one model, given to another)
    with the time each spent on the model given up."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for steps in rollouts:
        for kind, entries in switch_costs(steps).items():
            merged.setdefault(kind, []).extend(entries)
    turns: dict[str, int] = {}
    for steps in rollouts:
        for step in steps:
            turns[model_name(step)] = turns.get(model_name(step), 0) + 1
    count = max(1, len(rollouts))
    wasted = [
        (step.rerouted_ns - step.request_sent_ns) / 1e6
        for steps in rollouts
        for step in steps
        if step.rerouted_ns is not None
    ]
    return {
        "turns_per_rollout": {model: total / count for model, total in sorted(turns.items())},
        "escalations_per_rollout": len(wasted) / count,
        "escalated_ms": statistics.fmean(wasted) if wasted else None,
        "kinds": {
            kind: {
                "per_rollout": len(entries) / count,
                "bytes": statistics.fmean(entry["bytes"] for entry in entries),
                "uncached_tokens": statistics.fmean(entry["uncached"] for entry in entries),
                "incremental": sum(entry["incremental"] for entry in entries) / len(entries),
                # A switch's cost depends on where it falls: the first rollout's, in order.
                "first_rollout": [
                    (entry["bytes"], entry["uncached"])
                    for entry in switch_costs(rollouts[0]).get(kind, [])
                ]
                if kind != "unswitched"
                else [],
            }
            for kind, entries in sorted(merged.items())
        },
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    backend = SimBackend(models={"small": "fast", "large": "frontier"})
    tools = [make_tool(args.output_bytes)]
    by_round = [agents(args.turns * number, tools) for number in range(1, args.rounds + 1)]
    chosen = {name: [agent[name] for agent in by_round] for name in STRATEGIES}
    walls: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    steps: dict[str, list[list[StepRecord]]] = {name: [] for name in STRATEGIES}
    http_steps: dict[str, list[list[StepRecord]]] = {}
    failures: list[str] = []

    async def one(name: str, tag: str, **connect: Any) -> tuple[float, list[StepRecord]] | None:
        try:
            async with hotloop.connect(server.base_url, **connect) as client:
                return await rollout(client, chosen[name], tag)
        except Exception as exc:  # a failed rollout is reported, never dropped
            failures.append(f"{name} {tag}: {type(exc).__name__}: {exc}")
            return None

    policies = {
        name: [policy for agent in rounds for policy in agent.policies]
        for name, rounds in chosen.items()
    }
    async with GatewayServer(backend, GatewayConfig()) as server:
        for run in range(args.runs):
            # Interleaved: every strategy of this run index side by side.
            order = STRATEGIES[run % len(STRATEGIES) :] + STRATEGIES[: run % len(STRATEGIES)]
            done = await asyncio.gather(*(one(name, f"ws {run} {name}") for name in order))
            for name, outcome in zip(order, done, strict=True):
                if outcome is not None:
                    walls[name].append(outcome[0])
                    steps[name].append(outcome[1])
            print(f"  {run + 1}/{args.runs} runs per strategy", file=sys.stderr)
        if args.http:
            for name in ("routed", "routed-no-chains"):
                outcome = await one(name, f"http {name}", transport="http", incremental=True)
                if outcome is not None:
                    http_steps[name] = [outcome[1]]
    return {
        "runs": args.runs,
        "turns": args.turns,
        "rounds": args.rounds,
        "output_bytes": args.output_bytes,
        "failures": failures,
        "walls_s": walls,
        "median_s": {name: statistics.median(v) if v else None for name, v in walls.items()},
        "websocket": {name: summarize(steps[name]) for name in STRATEGIES},
        # The policies' own counters, over every rollout (HTTP's too).
        "escalations": {
            name: sum(getattr(policy, "escalations", 0) for policy in policies[name])
            for name in STRATEGIES
        },
        "http": {name: summarize(rollouts) for name, rollouts in http_steps.items()},
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['runs']} runs per strategy; {report['rounds']} rounds of {report['turns']} "
        f"tool turns + an answer each; tool results of {report['output_bytes']} bytes; "
        "small = fast, large = frontier"
    )
    medians = report["median_s"]
    for name in STRATEGIES:
        median = medians[name]
        shown = f"{median:8.3f} s" if median is not None else "     n/a"
        summary = report["websocket"][name]
        per_model = summary["turns_per_rollout"]
        turns = ", ".join(f"{count:g} on {model}" for model, count in per_model.items())
        print(f"  {name:19s} median {shown}   turns per rollout: {turns}")
    large, routed = medians["large"], medians["routed"]
    if large and routed:
        print(f"routed/large: {routed / large:.3f}x ({1 - routed / large:.0%} faster)")
    for name in STRATEGIES:
        summary = report["websocket"][name]
        if summary["escalated_ms"] is not None:
            print(
                f"escalations: {name} {summary['escalations_per_rollout']:g} per rollout, "
                f"{summary['escalated_ms']:.0f} ms each on the small model before it was given "
                f"up ({report['escalations'][name]} in all)"
            )
    for transport in ("websocket", "http"):
        summaries = report[transport]
        if not summaries:
            continue
        print(f"switching cost over {transport} (means per turn):")
        for name in ("routed", "routed-no-chains"):
            if name not in summaries:
                continue
            for kind, entry in summaries[name]["kinds"].items():
                print(
                    f"  {name:19s} {kind:10s} {entry['per_rollout']:5.1f} per rollout  "
                    f"{entry['bytes']:8.0f} bytes  {entry['uncached_tokens']:7.0f} uncached "
                    f"tokens  incremental {entry['incremental']:.0%}"
                )
                if entry["first_rollout"]:
                    each = ", ".join(f"{b} B/{u} tok" for b, u in entry["first_rollout"])
                    print(f"  {'':19s} {'':10s} each, in order: {each}")
    if report["failures"]:
        print(f"{len(report['failures'])} failed rollouts:")
        for failure in report["failures"]:
            print(f"  {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="rollouts per strategy")
    parser.add_argument("--turns", type=int, default=16, help="tool turns (+1 answer) per round")
    parser.add_argument("--rounds", type=int, default=2, help="user messages per rollout")
    parser.add_argument("--output-bytes", type=int, default=300, help="size of a tool result")
    parser.add_argument("--quick", action="store_true", help="2 runs of 4 tool turns")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip HTTP")
    parser.add_argument("--json", help="write the report (with every sample) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.turns = 2, 4
    if args.runs < 1 or args.turns < 1 or args.rounds < 1:
        parser.error("--runs, --turns and --rounds must be at least 1")
    report = asyncio.run(measure(args))
    print_report(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
