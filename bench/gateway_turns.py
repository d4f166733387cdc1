"""Gateway work per turn as a conversation grows: WebSocket continuation vs stateless HTTP.

Runs a long tool-calling conversation (``--turns`` model turns, one call per turn, tool results
of ``--output-bytes`` each) against an in-process gateway on the ``zero`` profile, so nothing
but software runs, in two modes, interleaved run by run:

* **websocket** — one socket; each turn sends only the new ``function_call_output`` plus
  ``previous_response_id`` (``store: false``: the state lives in the connection cache);
* **http-resend** — a stateless ``POST /v1/responses`` per turn re-sending the whole history.

The figure per turn is the gateway's *own* processing time, reported by the gateway in each
terminal response (``response.hotloop.gateway_pre_ns + gateway_post_ns``): receiving and
decoding the request, validating the new input, resolving the parent, extending the snapshot,
and committing. Medians over ``--runs`` runs are printed for turns 2, 50 and 200, with the
ratio to turn 2. This is a benchmark, not a test: it never fails on time.

    make bench-gateway            # or: python bench/gateway_turns.py --turns 200 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

import httpx
from websockets.asyncio.client import connect

from hotloop.backends.sim import DEFAULT_MODEL, SimBackend
from hotloop.gateway import GatewayServer
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec, Turn
from hotloop.sim.tools import tool_output
from hotloop.wire import codec

TOOL = ToolSpec(
    name="read_file",
    description="Read a file.",
    parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    output_bytes=2048,
)


def long_scenario(turns: int, output_bytes: int, name: str = "long") -> Scenario:
    spec = ToolSpec(TOOL.name, TOOL.description, TOOL.parameters, 0.0, output_bytes)
    script = [
        Turn(
            text=f"Step {i}: reading the next file.",
            calls=(
                ScriptedCall("read_file", codec.dumps({"path": f"src/module_{i}.py"}).decode()),
            ),
        )
        for i in range(turns - 1)
    ]
    script.append(Turn(text="Done reading every file."))
    return Scenario(name=name, turns=tuple(script), tools={"read_file": spec})


def _body(scenario: Scenario, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": f"{DEFAULT_MODEL}:{scenario.name}",
        "instructions": "Read every file.",
        "tools": scenario.responses_tools(),
        "input": items,
        "store": False,
    }


def _gateway_ns(response: dict[str, Any]) -> int:
    timings = response["hotloop"]
    return int(timings["gateway_pre_ns"]) + int(timings["gateway_post_ns"])


def _outputs(scenario: Scenario, response: dict[str, Any]) -> list[dict[str, Any]]:
    spec = scenario.tools["read_file"]
    return [
        {
            "type": "function_call_output",
            "call_id": item["call_id"],
            "output": tool_output(spec, item["arguments"]),
        }
        for item in response["output"]
        if item["type"] == "function_call"
    ]


async def run_websocket(url: str, scenario: Scenario) -> list[int]:
    per_turn: list[int] = []
    async with connect(url, max_size=None, compression=None) as socket:
        new: list[dict[str, Any]] = [{"role": "user", "content": "Read every file."}]
        previous: str | None = None
        while True:
            frame: dict[str, Any] = {"type": "response.create", **_body(scenario, new)}
            if previous is not None:
                frame["previous_response_id"] = previous
            await socket.send(codec.dumps(frame).decode())
            while True:
                event = codec.loads(await socket.recv())
                if event["type"] in ("response.completed", "error", "response.failed"):
                    break
            if event["type"] != "response.completed":
                raise RuntimeError(f"turn {len(per_turn) + 1} failed: {event}")
            response = event["response"]
            per_turn.append(_gateway_ns(response))
            new = _outputs(scenario, response)
            if not new:
                return per_turn
            previous = response["id"]


async def run_http(base_url: str, scenario: Scenario) -> list[int]:
    per_turn: list[int] = []
    history: list[dict[str, Any]] = [{"role": "user", "content": "Read every file."}]
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        while True:
            reply = await client.post(
                "/responses",
                content=codec.dumps(_body(scenario, history)),
                headers={"content-type": "application/json"},
            )
            reply.raise_for_status()
            response = codec.loads(reply.content)
            per_turn.append(_gateway_ns(response))
            history.extend(response["output"])
            new = _outputs(scenario, response)
            if not new:
                return per_turn
            history.extend(new)


PRIMING_TURNS = 10


async def prime(mode: str, server: GatewayServer, output_bytes: int) -> None:
    warm = long_scenario(PRIMING_TURNS, output_bytes, "warm")
    if mode == "websocket":
        await run_websocket(server.websocket_url, warm)
    else:
        await run_http(server.base_url, warm)


async def main(turns: int, runs: int, output_bytes: int, marks: list[int]) -> dict[str, Any]:
    scenario = long_scenario(turns, output_bytes)
    results: dict[str, list[list[int]]] = {"websocket": [], "http-resend": []}
    warm = long_scenario(PRIMING_TURNS, output_bytes, "warm")
    async with GatewayServer(
        SimBackend(scenario, "zero", extra_scenarios={"warm": warm})
    ) as server:
        # One full warm-up run of each mode, not counted: imports, first-use allocations and
        # CPython's adaptive specialization of the code paths (which needs many executions).
        print("  warm-up…", file=sys.stderr)
        await run_websocket(server.websocket_url, scenario)
        await run_http(server.base_url, scenario)
        for run in range(runs):
            for mode in ("websocket", "http-resend"):
                print(f"  run {run + 1}/{runs}: {mode} ({turns} turns)…", file=sys.stderr)
                # Prime the mode with a short discarded session: the previous run of the other
                # mode leaves the allocator and CPU caches in its own state (an HTTP run
                # allocates and frees megabytes), which otherwise lands on this run's first
                # turns only.
                await prime(mode, server, output_bytes)
                if mode == "websocket":
                    per_turn = await run_websocket(server.websocket_url, scenario)
                else:
                    per_turn = await run_http(server.base_url, scenario)
                if len(per_turn) != turns:
                    raise RuntimeError(f"{mode} run made {len(per_turn)} turns, expected {turns}")
                results[mode].append(per_turn)
    report: dict[str, Any] = {"turns": turns, "runs": runs, "output_bytes": output_bytes}
    print(
        f"\nGateway's own processing time per turn, µs: median over {runs} runs of the turn"
        f"\nitself, and in brackets over a window of {WINDOW} turns around it"
    )
    header = "".join(f"{f'turn {m}':>20}" for m in marks)
    print(f"{'mode':14}{header}{'last/first':>12}")
    for mode, samples in results.items():
        exact = [statistics.median(run[m - 1] for run in samples) / 1000 for m in marks]
        windowed = [
            statistics.median(value for run in samples for value in _window(run, m)) / 1000
            for m in marks
        ]
        report[mode] = {
            str(m): {"median_us": e, "window_median_us": w}
            for m, e, w in zip(marks, exact, windowed, strict=True)
        }
        cells = "".join(f"{e:>10.1f} [{w:>6.1f}]" for e, w in zip(exact, windowed, strict=True))
        ratio = f"{exact[-1] / exact[0]:.2f}x [{windowed[-1] / windowed[0]:.2f}x]"
        print(f"{mode:14}{cells}{ratio:>18}")
        report[mode]["ratio_last_first"] = exact[-1] / exact[0]
        report[mode]["window_ratio_last_first"] = windowed[-1] / windowed[0]
    return report


WINDOW = 5


def _window(per_turn: list[int], mark: int) -> list[int]:
    """The turns around ``mark`` (1-based), kept inside the conversation."""
    start = max(1, min(mark - WINDOW // 2, len(per_turn) - WINDOW + 1))
    return per_turn[start - 1 : start - 1 + WINDOW]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output-bytes", type=int, default=2048)
    parser.add_argument("--json", help="also write the medians to this JSON file")
    args = parser.parse_args()
    marks = sorted({2, min(50, args.turns), args.turns})
    report = asyncio.run(main(args.turns, args.runs, args.output_bytes, marks))
    if args.json:
        with open(args.json, "wb") as handle:
            handle.write(codec.dumps(report))
