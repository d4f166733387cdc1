"""``hotloop demo``: the gateway on the embedded model, driven by a scripted tool-calling session.

The demo starts a gateway in-process on an ephemeral port and plays a scenario twice, printing
every turn as it happens:

* **WebSocket mode** — one socket, each turn sends only the tool results plus
  ``previous_response_id`` (``store: false``, so state lives only in the connection cache);
* **stateless HTTP** — a fresh streaming ``POST /v1/responses`` per turn re-sending the whole
  history, as a naive loop does.

Both use a small client written with ``websockets``/``httpx`` and hotloop's own sans-I/O
stream assembler. Tools run concurrently as the scenario describes them (latency, output
size). The runtime with eager dispatch comes later; this shows the transport and the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect

from hotloop.backends.sim import DEFAULT_MODEL, SimBackend
from hotloop.gateway.app import GatewayServer
from hotloop.protocol.assembler import FunctionCallReady, ResponseStream, TextDelta
from hotloop.protocol.sse import ResponsesSSEDecoder
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.sim.tools import run_tool
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message

__all__ = ["SessionResult", "run_demo", "run_http_session", "run_websocket_session"]

Printer = Callable[[str], None]


@dataclass
class SessionResult:
    """What one scripted session did."""

    mode: str
    turns: int = 0
    tool_calls: int = 0
    bytes_sent: int = 0
    wall_s: float = 0.0
    final_text: str = ""
    gateway_ns: list[int] = field(default_factory=list)


def _request(scenario: Scenario, items: Sequence[Item], previous: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": f"{DEFAULT_MODEL}:{scenario.name}",
        "instructions": scenario.instructions,
        "tools": scenario.responses_tools(),
        "input": [item.to_dict() for item in items],
    }
    if previous is not None:
        body["previous_response_id"] = previous
    return body


async def _run_tools(
    scenario: Scenario, calls: Sequence[FunctionCall], say: Printer, time_scale: float
) -> list[FunctionCallOutput]:
    async def one(call: FunctionCall) -> FunctionCallOutput:
        spec = scenario.tools[call.name]
        started = time.perf_counter()
        output = await run_tool(spec, call.arguments, time_scale=time_scale)
        say(
            f"    ✓ {call.name} finished in {(time.perf_counter() - started) * 1000:.0f} ms "
            f"({len(output)} bytes)"
        )
        return FunctionCallOutput(call_id=call.call_id, output=output)

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _report(stream: ResponseStream, event: Event, say: Printer, text: list[str]) -> None:
    for report in stream.receive(event):
        if isinstance(report, TextDelta):
            text.append(report.delta)
        elif isinstance(report, FunctionCallReady):
            if text:
                say(f"  model: {''.join(text).strip()}")
                text.clear()
            args = report.call.arguments
            shown = args if len(args) <= 70 else args[:67] + "..."
            say(f"  → call {report.call.name}({shown})")


def _finish_turn(
    stream: ResponseStream, result: SessionResult, text: list[str], say: Printer
) -> None:
    if text:
        say(f"  model: {''.join(text).strip()}")
        text.clear()
    final = stream.final_response
    if final is None:
        raise RuntimeError(f"turn ended without a response: {stream.error}")
    timings = final.extra.get("hotloop") if final.extra else None
    if isinstance(timings, dict):
        result.gateway_ns.append(int(timings["gateway_pre_ns"]) + int(timings["gateway_post_ns"]))
    result.turns += 1


async def run_websocket_session(
    base_ws_url: str, scenario: Scenario, say: Printer = print, tool_time_scale: float = 1.0
) -> SessionResult:
    """Play ``scenario`` over one WebSocket, sending only new items each turn."""
    result = SessionResult("websocket")
    started = time.perf_counter()
    async with connect(base_ws_url, max_size=None, compression=None) as socket:
        new_items: list[Item] = [Message(role="user", content=scenario.task)]
        previous: str | None = None
        while True:
            frame = codec.dumps(
                {
                    "type": "response.create",
                    "store": False,
                    **_request(scenario, new_items, previous),
                }
            )
            result.bytes_sent += len(frame)
            await socket.send(frame.decode())
            stream, text = ResponseStream(), list[str]()
            say(f"turn {result.turns + 1}: sent {len(frame):,} bytes")
            while not stream.done:
                _report(stream, codec.decode_event(await socket.recv()), say, text)
            _finish_turn(stream, result, text, say)
            calls = [item for item in stream.output if isinstance(item, FunctionCall)]
            if not calls:
                result.final_text = stream.text
                break
            result.tool_calls += len(calls)
            new_items = list(await _run_tools(scenario, calls, say, tool_time_scale))
            previous = stream.response_id
    result.wall_s = time.perf_counter() - started
    return result


async def run_http_session(
    base_url: str, scenario: Scenario, say: Printer = print, tool_time_scale: float = 1.0
) -> SessionResult:
    """Play ``scenario`` as a naive loop: a fresh streaming request re-sending everything."""
    result = SessionResult("http")
    started = time.perf_counter()
    history: list[Item] = [Message(role="user", content=scenario.task)]
    while True:
        body = codec.dumps({"stream": True, "store": False, **_request(scenario, history, None)})
        result.bytes_sent += len(body)
        say(f"turn {result.turns + 1}: sent {len(body):,} bytes")
        stream, text = ResponseStream(), list[str]()
        # A new client per turn: a new TCP connection, as a stateless loop would open.
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream(
                "POST",
                f"{base_url}/responses",
                content=body,
                headers={"content-type": "application/json"},
            ) as response,
        ):
            decoder = ResponsesSSEDecoder()
            async for chunk in response.aiter_bytes():
                for event in decoder.feed(chunk):
                    _report(stream, event, say, text)
        _finish_turn(stream, result, text, say)
        history.extend(stream.output)
        calls = [item for item in stream.output if isinstance(item, FunctionCall)]
        if not calls:
            result.final_text = stream.text
            break
        result.tool_calls += len(calls)
        history.extend(await _run_tools(scenario, calls, say, tool_time_scale))
    result.wall_s = time.perf_counter() - started
    return result


async def run_demo(
    scenario_name: str = "coding",
    profile: str | LatencyProfile = "fast",
    say: Printer = print,
    tool_time_scale: float = 1.0,
) -> tuple[SessionResult, SessionResult]:
    """Start a gateway and play the scenario over WebSocket mode, then stateless HTTP."""
    scenario = load_scenario(scenario_name)
    backend = SimBackend(scenario, profile)
    async with GatewayServer(backend) as server:
        say(
            f"hotloop gateway on {server.base_url} — scenario {scenario.name!r}, "
            f"profile {backend.profile.name!r}"
        )
        say(f"task: {scenario.task}\n")
        say("── WebSocket mode: one socket, only new items + previous_response_id ──")
        ws = await run_websocket_session(server.websocket_url, scenario, say, tool_time_scale)
        say("\n── stateless HTTP: a new request per turn re-sending the whole history ──")
        http = await run_http_session(server.base_url, scenario, say, tool_time_scale)
    say("\n── summary ──")
    say(f"{'':18}{'WebSocket':>14}{'HTTP resend':>14}")
    say(f"{'model turns':18}{ws.turns:>14}{http.turns:>14}")
    say(f"{'tool calls':18}{ws.tool_calls:>14}{http.tool_calls:>14}")
    say(f"{'bytes sent':18}{ws.bytes_sent:>14,}{http.bytes_sent:>14,}")
    say(f"{'wall time (s)':18}{ws.wall_s:>14.2f}{http.wall_s:>14.2f}")
    gw_ws = sum(ws.gateway_ns) / 1e6
    gw_http = sum(http.gateway_ns) / 1e6
    say(f"{'gateway time (ms)':18}{gw_ws:>14.2f}{gw_http:>14.2f}")
    say(f"\nWebSocket mode took {ws.wall_s / http.wall_s:.2f}x the time of the stateless loop.")
    return ws, http
