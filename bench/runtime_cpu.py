"""Where the runtime's CPU per model turn goes, on the ``zero`` profile (the target: at most 1 ms).

One scenario (``--scenario``, default ``coding``) against a gateway in a subprocess on the
``zero`` profile (no model delays), tools at time scale 0, so nothing runs but software. Four
measurements, interleaved run by run in a rotating order so that they share the machine's
good and bad moments, each reported as the median (and quartiles) of CPU per model turn:

* **end to end** — ``Runner.run`` on one warm WebSocket client: this process's CPU
  (``time.process_time``) over the run, less the CPU of the tools' own bodies (the
  application's work, measured inside each tool: ``hotloop.testing.Execution.cpu_ns``), divided
  by its turns. This is the figure the target is about.
* **socket floor** — the same requests (the bodies the runtime sent, re-chained by response id)
  over a bare picows socket that decodes nothing: it only finds each turn's terminal frame. The
  event loop, the syscalls and picows's framing: what any Python client of this server pays.
* **replay, hot** — ``Runner.run`` over a transport that serves the turns captured from a real
  run (each frame decoded by ``codec.decode_event``, each request body built and encoded as the
  WebSocket transport does), back to back: the runtime's own work without any I/O.
* **replay, idle gaps** — the same, sleeping ``--gap-ms`` before each turn's events, as a real
  turn waits for the server. On a VM the same work costs more after the CPU went idle (cold
  caches); this shows how much.

This is a benchmark, not a test: it never fails on time.

    python bench/runtime_cpu.py                  # coding, 30 repetitions
    python bench/runtime_cpu.py --runs 60 --json cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

import hotloop
from hotloop.bench.runner import gateway_subprocess
from hotloop.bench.strategies import strategy_agent, strategy_named
from hotloop.runtime import Agent, Runner
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.testing import ExecutionLog, check_run, session_task
from hotloop.transport import (
    IteratingTransport,
    ModelRequest,
    OnEvent,
    Transport,
    TransportStats,
    websocket_url,
)
from hotloop.transport.websocket import request_body
from hotloop.wire import codec
from hotloop.wire.events import Event

MODES = ("end to end", "socket floor", "replay, hot", "replay, idle gaps")
_STAMP = f"{os.getpid()}-{time.time_ns()}"


def _agent(scenario: Scenario, log: ExecutionLog) -> Agent:
    """Full hotloop (eager, concurrent tools), tools at time scale 0."""
    return strategy_agent(strategy_named("hotloop"), scenario, 0.0, log)


class Capture(IteratingTransport):
    """Wraps a transport; keeps each turn's request and its events as wire bytes."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stats: TransportStats = inner.stats
        self.requests: list[ModelRequest] = []
        self.turns: list[list[bytes]] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        frames: list[bytes] = []
        self.requests.append(request)
        self.turns.append(frames)

        def record(event: Event) -> None:
            frames.append(codec.encode_event(event))
            on_event(event)

        await self.inner.stream_to(request, record)  # the whole wire, nothing skipped

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        return self.inner.stream(request)

    async def close(self) -> None:
        await self.inner.close()


class Replay(IteratingTransport):
    """Serves captured turns in order: encodes each request as the WebSocket transport does,
    then decodes and hands over each captured frame (those of the types the caller skips are
    dropped unread, as :class:`~hotloop.transport.WebSocketTransport` does)."""

    def __init__(self, turns: list[list[bytes]], gap_s: float = 0.0) -> None:
        self.turns = turns
        self.gap_s = gap_s
        self.index = 0
        self.stats = TransportStats()

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        incremental = request.previous_response_id is not None
        body = request_body(request, incremental=incremental, store=False)
        body["type"] = "response.create"
        self.stats.bytes_sent += len(codec.dumps(body))
        frames = self.turns[self.index % len(self.turns)]
        self.index += 1
        if self.gap_s:
            await asyncio.sleep(self.gap_s)
        drop = tuple(codec.type_prefix(kind) for kind in skip)
        for payload in frames:
            if drop and payload.startswith(drop):
                continue  # as the WebSocket transport does: dropped unread
            on_event(codec.decode_event(payload))

    async def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        events: list[Event] = []
        await self.stream_to(request, events.append)
        for event in events:
            yield event

    async def close(self) -> None:
        return None


class _Floor(WSListener):
    """A bare picows client: counts frames, resolves the turn at its terminal frame."""

    def __init__(self) -> None:
        self.done: asyncio.Future[str] | None = None
        self.frames = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.frames += 1
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"response.completed"') and self.done is not None:
            self.done.set_result(codec.loads(payload)["response"]["id"])


async def floor_run(
    socket: WSTransport, listener: _Floor, requests: list[ModelRequest], task: str
) -> None:
    """The captured requests again, chained by the new response ids, nothing decoded."""
    previous: str | None = None
    for index, request in enumerate(requests):
        body = request_body(request, incremental=index > 0, store=False)
        body["type"] = "response.create"
        if index == 0:
            body["input"] = [{"type": "message", "role": "user", "content": task}]
        else:
            body["previous_response_id"] = previous
        listener.done = asyncio.get_running_loop().create_future()
        socket.send(WSMsgType.TEXT, codec.dumps(body))
        previous = await listener.done


async def measure(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    scenario = load_scenario(args.scenario)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    tool_cpu: list[float] = []
    failures: list[str] = []
    async with gateway_subprocess(scenario.name, "zero") as base_url:
        client = hotloop.connect(base_url)
        capture = Capture(client)
        log = ExecutionLog()
        result = await Runner.run(
            _agent(scenario, log), session_task(scenario, f"{_STAMP}-capture"), client=capture
        )
        problems = check_run(scenario, result, log)
        if problems:
            raise SystemExit(f"the capture run failed: {'; '.join(problems)}")
        turns = result.turns
        socket, floor = await ws_connect(_Floor, websocket_url(base_url))
        assert isinstance(floor, _Floor)
        listener = floor
        say(f"captured {turns} turns, {sum(map(len, capture.turns))} events; measuring…")

        async def one(mode: str, repetition: int) -> None:
            task = session_task(scenario, f"{_STAMP}-{mode}-{repetition}")
            log = ExecutionLog()
            agent = _agent(scenario, log)  # built outside the measured span
            cpu = time.process_time()
            if mode == "socket floor":
                await floor_run(socket, listener, capture.requests, task)
            else:
                transport: Transport = client
                if mode == "replay, hot":
                    transport = Replay(capture.turns)
                elif mode == "replay, idle gaps":
                    transport = Replay(capture.turns, args.gap_ms / 1000)
                run = await Runner.run(agent, task, client=transport)
                problems = check_run(scenario, run, log)
                if problems:
                    failures.append(f"{mode} run {repetition}: {'; '.join(problems)}")
                    return
            spent = time.process_time() - cpu
            if repetition > 0:
                # The tools' own bodies are the application's work, not the runtime's.
                tools = log.cpu_ns() / 1e9
                samples[mode].append((spent - tools) / turns * 1000)
                if mode != "socket floor":
                    tool_cpu.append(tools / turns * 1000)

        try:
            for repetition in range(args.runs + 1):  # repetition 0 warms every path up
                shift = repetition % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    await one(mode, repetition)
                if repetition and repetition % 10 == 0:
                    say(f"  {repetition}/{args.runs}")
        finally:
            socket.disconnect()
            await client.close()
    events = sum(map(len, capture.turns)) / turns
    return {
        "scenario": scenario.name,
        "profile": "zero",
        "turns": turns,
        "events_per_turn": events,
        "runs": args.runs,
        "gap_ms": args.gap_ms,
        "tools_own_cpu_ms_per_turn": statistics.median(tool_cpu) if tool_cpu else None,
        "failures": failures,
        "modes": {
            mode: {
                "median_ms": statistics.median(values) if values else None,
                "quartiles_ms": statistics.quantiles(values, n=4) if len(values) > 1 else None,
                "samples_ms": values,
            }
            for mode, values in samples.items()
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\n{report['scenario']} on the zero profile: {report['turns']} turns, "
        f"{report['events_per_turn']:.0f} events per turn; {report['runs']} interleaved runs "
        f"per mode; commit {report['commit']}, {report['machine']['cpus']} CPUs"
    )
    print(f"{'CPU per model turn, ms':28}{'median':>8}{'q1':>8}{'q3':>8}")
    for mode, entry in report["modes"].items():
        label = mode if mode != "replay, idle gaps" else f"replay, {report['gap_ms']:g} ms gaps"
        quartiles = entry["quartiles_ms"] or [None, None, None]
        cells = [entry["median_ms"], quartiles[0], quartiles[2]]
        row = "".join(f"{c:8.3f}" if c is not None else f"{'—':>8}" for c in cells)
        print(f"  {label:26}{row}")
    if report["tools_own_cpu_ms_per_turn"] is not None:
        print(
            f"(the tools' own bodies, {report['tools_own_cpu_ms_per_turn']:.3f} ms per turn, "
            "are the application's work: subtracted from the rows that run them)"
        )
    end, floor = report["modes"]["end to end"], report["modes"]["socket floor"]
    if end["median_ms"] is not None and floor["median_ms"] is not None:
        print(
            f"end to end above the socket floor: {end['median_ms'] - floor['median_ms']:.3f} ms "
            "per turn (target for the end-to-end figure: ≤ 1 ms)"
        )
    for failure in report["failures"]:
        print(f"FAILED: {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", default="coding")
    parser.add_argument("--runs", type=int, default=30, help="repetitions of each mode")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="idle gap before each turn")
    parser.add_argument("--json", help="write the report (with every sample) here")
    args = parser.parse_args(argv)
    report = asyncio.run(measure(args, lambda line: print(line, file=sys.stderr, flush=True)))
    print_report(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
