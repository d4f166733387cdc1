"""Soak test: many concurrent WebSocket sessions against a real gateway, with a flat-RSS check.

``make soak`` (= ``python bench/soak.py``) starts ``hotloop gateway`` (the simulated model) as a
separate process on a free loopback port, waits for ``/health``, then runs ``--sessions``
(1,000) concurrent sessions for ``--duration`` (600 s), to find leaks and errors that only
show up under sustained concurrent load. Each session holds a persistent WebSocket-mode
connection (the project's own client, :class:`hotloop.transport.WebSocketTransport`) and runs
chained turns on it: each turn sends only the new user message plus ``previous_response_id``
with ``store: false``, so the gateway's connection-scoped cache resolves every continuation.
After ``--turns-per-conversation`` (8) turns the session starts a fresh conversation, so no
conversation grows without bound. Between turns a session "thinks" for ``--think`` (4 s)
±50 % (uniform jitter); sessions connect spread over the first ``--ramp`` seconds. The offered
load is about ``sessions / (think + turn latency)``: ~230 turns/s for 1,000 sessions, about
half a core for the gateway and the generator together, which a 2-core machine sustains
with room to spare. The generator is split over ``--workers`` processes (one per 500
sessions, each one asyncio loop); their results are merged.

Two choices make the gateway's memory reach its steady state within the warm-up, so that
growth after it means a leak, not a bounded structure still filling up (both are options):

* **A new connection per conversation** (``--conversations-per-connection 1``). The gateway
  keeps up to 128 responses per connection (``cache_max_entries``; older conversations on the
  same socket stay cached until evicted), ~2 KB each here: with one socket for the whole run,
  1,000 sessions at one turn per ~4 s fill their caches only after ~9 minutes (~230 MB).
  Reconnecting per conversation bounds each cache to one conversation (8 entries) and also
  soaks the connection set-up and tear-down path (~30 connections/s).
* **The request log in a temporary SQLite file** (``--store sqlite``, i.e. ``hotloop gateway
  --store FILE``; ``store: false`` responses never touch it either way). The in-memory store
  keeps the latest 100,000 request-log records (~31 MB), which takes ~7 minutes to fill at
  this rate. ``--store memory`` soaks the default store instead.

**Latency profile: ``fast``** (200 ms to first token, 1,000 tokens/s, 20 ms service overhead).
It is the regime hotloop is built for (fast agent models, where per-request overhead matters),
every turn still streams one delta per token at a realistic pace, and turns stay short, so the
socket, the cache and the timers of every session are exercised many times in a run. ``zero``
would turn the soak into a CPU-saturation test with meaningless latencies; ``frontier`` would
make each turn last seconds and exercise far fewer turns in the same time.

What it prints: a progress line every ``--progress-interval`` seconds (elapsed, turns, errors,
gateway RSS), then the summary: turns and achieved turns/s, errors by kind, p50/p99 turn
latency (request sent → ``response.completed``), and the gateway's RSS (``VmRSS`` of
``/proc/<pid>/status``, sampled every ``--sample-interval`` s) at the start of the measured
window (right after warm-up: ``--warmup``, default the first 60 s or 10 % of the run, whichever
is shorter), in the middle and at the end, with min, max and drift (end vs start).

It passes (exit 0) only if every turn completed (no error of any kind: transport errors, turn
timeouts, failed or incomplete responses, silent reconnects or cache misses, gateway log errors,
connections the gateway still counts as open after the clients left) and every RSS sample after
warm-up is within ``--rss-tolerance`` (±10 %) of the start sample. The gateway and the worker
processes are always stopped on the way out (error, Ctrl-C, SIGTERM); the gateway also gets
SIGTERM should this process die without cleaning up.

    make soak                                           # 1,000 sessions, 10 minutes
    python bench/soak.py --duration 60 --sessions 200   # a short run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import IO, Any

from hotloop.bench.report import percentile
from hotloop.sim.latency import PROFILES
from hotloop.transport import ModelRequest, TransportError, WebSocketTransport, websocket_url
from hotloop.wire.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseInProgress,
    ResponseQueued,
)
from hotloop.wire.items import Item, Message
from hotloop.wire.responses import ResponseObject

MODEL = "hotloop-sim"
INSTRUCTIONS = "You are a concise assistant. Continue the analysis one step at a time."
#: Everything but the terminal events: dropped by the client unread (not even decoded).
SKIP = frozenset(
    kind.type
    for kind in (
        ResponseCreated,
        ResponseQueued,
        ResponseInProgress,
        OutputItemAdded,
        OutputItemDone,
        ContentPartAdded,
        ContentPartDone,
        OutputTextDelta,
        OutputTextDone,
        FunctionCallArgumentsDelta,
        FunctionCallArgumentsDone,
    )
)
_HEALTH_TIMEOUT_S = 30.0
_REPORT_EVERY_S = 1.0
_MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Settings:
    """What one soak run does (passed to every worker process)."""

    sessions: int
    duration: float
    think: float
    turns_per_conversation: int
    conversations_per_connection: int
    ramp: float
    turn_timeout: float
    profile: str
    store: str
    workers: int
    warmup: float
    sample_interval: float
    progress_interval: float
    rss_tolerance: float
    seed: int


@dataclass(slots=True)
class WorkerResult:
    """What one generator process did (merged by the coordinator)."""

    turns: int = 0
    conversations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    connections_opened: int = 0
    reconnects: int = 0
    cache_misses: int = 0
    full_resends: int = 0
    incremental_requests: int = 0
    cpu_s: float = 0.0

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind}: {detail}"[:300])

    def to_message(self) -> dict[str, Any]:
        message = asdict(self)
        message["errors"] = dict(self.errors)
        message["latencies_ms"] = self.latencies_ms.tobytes()
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> WorkerResult:
        latencies = array("d")
        latencies.frombytes(message.pop("latencies_ms"))
        errors = Counter(message.pop("errors"))
        return cls(**message, errors=errors, latencies_ms=latencies)


# -- the load generator (one asyncio loop per worker process) ------------------------------


class _Worker:
    """The sessions of one generator process and what they did."""

    def __init__(self, settings: Settings, base_url: str, deadline: float) -> None:
        self.settings = settings
        self.url = websocket_url(base_url)
        self.deadline = deadline  # loop time at which no new turn starts
        self.result = WorkerResult()

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` (at most until the deadline); False once the run is over."""
        await asyncio.sleep(max(0.0, min(seconds, self.remaining())))
        return self.remaining() > 0

    async def session(self, index: int) -> None:
        settings = self.settings
        rng = random.Random(f"{settings.seed}-{index}")
        if not await self.pause(rng.uniform(0.0, settings.ramp)):
            return
        transport = await self.open()
        try:
            if not await self.pause(rng.uniform(0.0, settings.think)):
                return
            conversation = 0
            on_socket = 0  # conversations on the current connection
            history: list[Item] = []
            previous: str | None = None
            turn = 0
            while self.remaining() > 0:
                if previous is None or turn == settings.turns_per_conversation:
                    if on_socket == settings.conversations_per_connection > 0:
                        await self.close(transport)
                        transport = await self.open()
                        on_socket = 0
                    conversation += 1
                    on_socket += 1
                    self.result.conversations += 1
                    history, previous, turn = [], None, 0
                new_from = len(history)
                text = (
                    f"Session {index}, conversation {conversation}, step {turn + 1}: "
                    "summarise what we found so far and propose the next check."
                )
                history.append(Message(role="user", content=text))
                request = ModelRequest(
                    model=MODEL,
                    history=tuple(history),
                    new_from=new_from,
                    previous_response_id=previous,
                    instructions=INSTRUCTIONS,
                )
                response = await self.turn(transport, request)
                turn += 1
                if response is not None:
                    history.extend(response.output)
                    previous = response.id
                else:
                    previous = None  # start over: the next turn opens a fresh conversation
                if not await self.pause(settings.think * rng.uniform(0.5, 1.5)):
                    break
        finally:
            await self.close(transport)

    async def open(self) -> WebSocketTransport:
        """A new connection (opened now: a failure is an error; the next turn tries again)."""
        transport = WebSocketTransport(self.url, store=False, max_lanes=1)
        try:
            async with asyncio.timeout(self.settings.turn_timeout):
                await transport.connect()
        except (TimeoutError, TransportError) as exc:
            self.result.error("connect", repr(exc))
        return transport

    async def close(self, transport: WebSocketTransport) -> None:
        """Close ``transport`` and add what it did to the result."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await transport.close()
        stats = transport.stats
        result = self.result
        result.connections_opened += stats.connections_opened
        result.reconnects += stats.reconnects
        result.cache_misses += stats.cache_misses
        result.full_resends += stats.full_resends
        result.incremental_requests += stats.incremental_requests

    async def turn(
        self, transport: WebSocketTransport, request: ModelRequest
    ) -> ResponseObject | None:
        """One turn: its response (latency recorded), or ``None`` after recording an error."""
        ends: list[Event] = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.turn_timeout):
                await transport.stream_to(request, ends.append, skip=SKIP)
        except TimeoutError:
            self.result.error("turn_timeout", f"no response within {self.settings.turn_timeout} s")
            return None
        except TransportError as exc:
            self.result.error(f"transport:{exc.code or 'error'}", str(exc))
            return None
        except Exception as exc:  # anything else is a failure to report, not to crash on
            self.result.error(type(exc).__name__, str(exc))
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000
        end = ends[-1] if ends else None
        if not isinstance(end, ResponseCompleted):
            status = end.type if end is not None else "no terminal event"
            self.result.error(f"response:{status}", repr(end)[:200])
            return None
        if not end.response.output:
            self.result.error("empty_output", end.response.id)
            return None
        self.result.turns += 1
        self.result.latencies_ms.append(elapsed_ms)
        return end.response


async def _run_worker(
    worker_id: int,
    settings: Settings,
    base_url: str,
    sessions: Sequence[int],
    stop: EventType,
    results: multiprocessing.Queue[tuple[Any, ...]],
) -> WorkerResult:
    loop = asyncio.get_running_loop()
    worker = _Worker(settings, base_url, loop.time() + settings.duration)
    parent = os.getppid()
    tasks = [asyncio.create_task(worker.session(index)) for index in sessions]
    everything = asyncio.gather(*tasks, return_exceptions=True)
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=_REPORT_EVERY_S)
            result = worker.result
            results.put(("progress", worker_id, result.turns, dict(result.errors)))
            if stop.is_set() or os.getppid() != parent:  # told to stop, or orphaned
                for task in tasks:
                    task.cancel()
                await asyncio.wait([everything], timeout=10)
                break
    finally:
        if not everything.done():
            everything.cancel()
    for outcome in everything.result() if everything.done() and not everything.cancelled() else ():
        if isinstance(outcome, Exception):
            worker.result.error(f"session_crash:{type(outcome).__name__}", str(outcome))
    worker.result.cpu_s = time.process_time()
    return worker.result


def worker_main(
    worker_id: int,
    settings: Settings,
    base_url: str,
    sessions: Sequence[int],
    go: EventType,
    stop: EventType,
    results: multiprocessing.Queue[tuple[Any, ...]],
) -> None:
    """A generator process: wait for ``go``, run its sessions, put its result on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    try:
        results.put(("ready", worker_id))
        while not go.wait(0.5):
            if stop.is_set():
                return
        result = asyncio.run(_run_worker(worker_id, settings, base_url, sessions, stop, results))
        results.put(("done", worker_id, result.to_message()))
    except BaseException:
        results.put(("failed", worker_id, traceback.format_exc()))


# -- the gateway process -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    """In the gateway child, before exec: SIGTERM when the soak process dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _hotloop_command() -> list[str]:
    """The ``hotloop`` console script of this environment (or the module, without one)."""
    script = Path(sys.executable).with_name("hotloop")
    if script.exists():
        return [str(script)]
    found = shutil.which("hotloop")
    return [found] if found else [sys.executable, "-m", "hotloop.cli"]


def read_rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def read_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GatewayProcess:
    """``hotloop gateway`` (sim backend) in a process of its own, logging to a temp file."""

    def __init__(self, profile: str, store: str) -> None:
        self.profile = profile
        self.store = store
        self.workdir = tempfile.TemporaryDirectory(prefix="hotloop-soak-")
        self.log: IO[bytes] = open(Path(self.workdir.name, "gateway.log"), "w+b")  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        for _attempt in range(3):  # another process may take the free port first
            self.port = _free_port()
            command = [*_hotloop_command(), "gateway", "--profile", self.profile]
            command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
            if self.store == "sqlite":
                command += ["--store", str(Path(self.workdir.name, "store.sqlite"))]
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle
                # No thread runs yet in this process (the workers start after the gateway).
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
            if self._wait_healthy():
                return
        raise RuntimeError(f"the gateway did not start:\n{self.log_tail()}")

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + _HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            health = f"http://127.0.0.1:{self.port}/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2):
                return True
            time.sleep(0.1)
        self.stop()
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metric(self, name: str) -> float | None:
        """One unlabelled metric from ``GET /metrics`` (``None`` if unavailable)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- the coordinator -----------------------------------------------------------------------


@dataclass(slots=True)
class RssSample:
    elapsed_s: float
    rss_bytes: int


def _mib(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def rss_summary(samples: Sequence[RssSample], warmup: float, tolerance: float) -> dict[str, Any]:
    """Start (first sample after warm-up), middle, end, min, max, drift and the verdict."""
    window = [s for s in samples if s.elapsed_s >= warmup]
    if not window:
        return {"ok": False, "reason": "no RSS sample after warm-up"}
    start, end = window[0], window[-1]
    middle_at = (start.elapsed_s + end.elapsed_s) / 2
    middle = min(window, key=lambda s: abs(s.elapsed_s - middle_at))
    low = min(s.rss_bytes for s in window)
    high = max(s.rss_bytes for s in window)
    deviation = max(abs(s.rss_bytes / start.rss_bytes - 1) for s in window)
    return {
        "ok": deviation <= tolerance,
        "samples": len(window),
        "start": {"at_s": start.elapsed_s, "bytes": start.rss_bytes},
        "middle": {"at_s": middle.elapsed_s, "bytes": middle.rss_bytes},
        "end": {"at_s": end.elapsed_s, "bytes": end.rss_bytes},
        "min_bytes": low,
        "max_bytes": high,
        "drift_pct": (end.rss_bytes / start.rss_bytes - 1) * 100,
        "max_deviation_pct": deviation * 100,
        "tolerance_pct": tolerance * 100,
    }


def _split(sessions: int, workers: int) -> Iterator[range]:
    per, extra = divmod(sessions, workers)
    first = 0
    for worker in range(workers):
        count = per + (1 if worker < extra else 0)
        yield range(first, first + count)
        first += count


class _Interrupted(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Interrupted


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent WebSocket sessions")
    parser.add_argument(
        "--think", type=float, default=4.0, help="mean seconds between turns of a session (±50%%)"
    )
    parser.add_argument("--turns-per-conversation", type=int, default=8)
    parser.add_argument(
        "--conversations-per-connection",
        type=int,
        default=1,
        help="a session opens a new connection after this many conversations (0: never)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="the gateway's store: a temporary SQLite file (default) or its in-memory store",
    )
    parser.add_argument(
        "--ramp", type=float, default=None, help="seconds over which sessions connect (default 5)"
    )
    parser.add_argument("--turn-timeout", type=float, default=30.0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument(
        "--workers", type=int, default=None, help="generator processes (default: 1 per 500)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds (default: min(60, 10%% of duration))"
    )
    parser.add_argument("--sample-interval", type=float, default=None, help="RSS sampling (s)")
    parser.add_argument("--progress-interval", type=float, default=30.0)
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="fraction (0.10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.duration <= 0 or args.think < 0:
        parser.error("--sessions must be >= 1, --duration > 0 and --think >= 0")
    if args.turns_per_conversation < 1:
        parser.error("--turns-per-conversation must be >= 1")
    workers = args.workers or max(1, math.ceil(args.sessions / 500))
    duration = float(args.duration)
    return Settings(
        sessions=args.sessions,
        duration=duration,
        think=args.think,
        turns_per_conversation=args.turns_per_conversation,
        conversations_per_connection=args.conversations_per_connection,
        ramp=args.ramp if args.ramp is not None else min(5.0, duration / 10),
        turn_timeout=args.turn_timeout,
        profile=args.profile,
        store=args.store,
        workers=min(workers, args.sessions),
        warmup=args.warmup if args.warmup is not None else min(60.0, duration / 10),
        sample_interval=args.sample_interval or min(2.0, max(0.2, duration / 50)),
        progress_interval=args.progress_interval,
        rss_tolerance=args.rss_tolerance,
        seed=args.seed,
    ), args.json


def main(argv: Sequence[str] | None = None) -> int:
    settings, json_path = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    go = context.Event()
    results: multiprocessing.Queue[tuple[Any, ...]] = context.Queue()
    gateway = GatewayProcess(settings.profile, settings.store)
    workers: list[multiprocessing.process.BaseProcess] = []
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    print(
        f"soak: {settings.sessions} sessions x {settings.duration:.0f} s, profile "
        f"{settings.profile!r}, think {settings.think:g} s ±50%, "
        f"{settings.turns_per_conversation} turns per conversation, "
        f"{settings.workers} generator process(es), warm-up {settings.warmup:g} s",
        flush=True,
    )
    try:
        gateway.start()
        print(f"gateway pid {gateway.pid} at {gateway.base_url}", flush=True)
        for worker_id, sessions in enumerate(_split(settings.sessions, settings.workers)):
            worker = context.Process(
                target=worker_main,
                args=(worker_id, settings, gateway.base_url, sessions, go, stop, results),
                name=f"soak-worker-{worker_id}",
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        summary = _coordinate(settings, gateway, workers, go, stop, results)
    except (KeyboardInterrupt, _Interrupted):
        print("\nsoak: interrupted; stopping the workers and the gateway", flush=True)
        return 130
    finally:
        stop.set()
        for process in workers:
            process.join(15)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        gateway.stop()
        signal.signal(signal.SIGTERM, previous_handler)
        gateway.log.close()
        gateway.workdir.cleanup()
        results.close()
        results.join_thread()
    _print_summary(summary)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0 if summary["passed"] else 1


def _drain(
    results: multiprocessing.Queue[tuple[Any, ...]],
    handle: Callable[[tuple[Any, ...]], None],
    wait: float = 0.0,
) -> None:
    """Hand every message on ``results`` to ``handle``; wait up to ``wait`` s for the first."""
    try:
        message = results.get(timeout=wait) if wait > 0 else results.get_nowait()
        while True:
            handle(message)
            message = results.get_nowait()
    except queue.Empty:
        return


def _coordinate(
    settings: Settings,
    gateway: GatewayProcess,
    workers: Sequence[multiprocessing.process.BaseProcess],
    go: EventType,
    stop: EventType,
    results: multiprocessing.Queue[tuple[Any, ...]],
) -> dict[str, Any]:
    ready: set[int] = set()
    progress: dict[int, tuple[int, dict[str, int]]] = {}
    done: dict[int, WorkerResult] = {}
    failures: dict[int, str] = {}

    def handle(message: tuple[Any, ...]) -> None:
        kind, worker_id = message[0], message[1]
        if kind == "ready":
            ready.add(worker_id)
        elif kind == "progress":
            progress[worker_id] = (message[2], message[3])
        elif kind == "done":
            done[worker_id] = WorkerResult.from_message(message[2])
        elif kind == "failed":
            failures[worker_id] = message[2]

    spawn_deadline = time.monotonic() + 60
    while len(ready) < len(workers):
        _drain(results, handle, wait=0.5)
        if failures or time.monotonic() > spawn_deadline:
            raise RuntimeError(f"generator processes did not start: {failures}")
        if any(not process.is_alive() for process in workers):
            raise RuntimeError("a generator process died while starting")

    samples: list[RssSample] = []
    gateway_died = False
    cpu_at_start = read_cpu_seconds(gateway.pid)
    started = time.monotonic()
    go.set()
    next_sample = 0.0
    next_progress = settings.progress_interval
    end_by = settings.duration + settings.turn_timeout + 30
    while len(done) + len(failures) < len(workers):
        elapsed = time.monotonic() - started
        if elapsed >= next_sample and elapsed <= settings.duration:
            if not gateway.alive():
                gateway_died = True
                stop.set()
            else:
                samples.append(RssSample(round(elapsed, 2), read_rss_bytes(gateway.pid)))
            next_sample += settings.sample_interval
        if elapsed >= next_progress:
            turns = sum(entry[0] for entry in progress.values())
            error_count = sum(sum(entry[1].values()) for entry in progress.values())
            current = _mib(samples[-1].rss_bytes) if samples else "?"
            print(
                f"[{elapsed:6.0f} s] turns {turns:,} ({turns / elapsed:.1f}/s), "
                f"errors {error_count}, gateway RSS {current}",
                flush=True,
            )
            next_progress += settings.progress_interval
        if elapsed > end_by:
            stop.set()  # workers that overrun: cancel their sessions
        if elapsed > end_by + 30:
            raise RuntimeError("generator processes did not finish")
        if any(
            not process.is_alive() and index not in done and index not in failures
            for index, process in enumerate(workers)
        ):
            _drain(results, handle, wait=1.0)  # its last message may still be in the pipe
            for index, process in enumerate(workers):
                if not process.is_alive() and index not in done and index not in failures:
                    failures[index] = f"exited with code {process.exitcode} and no result"
        _drain(results, handle, wait=min(0.5, settings.sample_interval))
    wall_s = time.monotonic() - started
    gateway_cpu_s = read_cpu_seconds(gateway.pid) - cpu_at_start if gateway.alive() else math.nan

    rss_after_close: int | None = None
    merged = WorkerResult()
    for result in done.values():
        merged.turns += result.turns
        merged.conversations += result.conversations
        merged.errors.update(result.errors)
        merged.error_samples.extend(result.error_samples)
        merged.latencies_ms.extend(result.latencies_ms)
        merged.connections_opened += result.connections_opened
        merged.reconnects += result.reconnects
        merged.cache_misses += result.cache_misses
        merged.full_resends += result.full_resends
        merged.incremental_requests += result.incremental_requests
        merged.cpu_s += result.cpu_s
    errors = merged.errors
    for index, detail in failures.items():
        errors["worker_failed"] += 1
        merged.error_samples.append(f"worker {index}: {detail.strip()[-500:]}")
    if merged.reconnects:
        errors["silent_reconnect"] += merged.reconnects
    if merged.cache_misses:
        errors["cache_miss"] += merged.cache_misses
    if gateway_died or not gateway.alive():
        errors["gateway_died"] += 1
        merged.error_samples.append(f"gateway log:\n{gateway.log_tail()}")
    else:
        # Every client has gone: the gateway must hold no connection and no response.
        leftovers: dict[str, float | None] = {}
        for _ in range(50):
            leftovers = {
                name: gateway.metric(name)
                for name in ("hotloop_websocket_connections", "hotloop_active_responses")
            }
            if all(value == 0 for value in leftovers.values()):
                break
            time.sleep(0.1)
        for name, value in leftovers.items():
            if value != 0:
                errors[f"gateway_leftover:{name}"] += 1
                merged.error_samples.append(f"{name} = {value} after every client closed")
        rss_after_close = read_rss_bytes(gateway.pid)
    log_errors = [
        line for line in gateway.log_text().splitlines() if "ERROR" in line or "Traceback" in line
    ]
    if log_errors:
        errors["gateway_log_error"] += len(log_errors)
        merged.error_samples.extend(log_errors[:_MAX_ERROR_SAMPLES])

    measured_s = min(wall_s, settings.duration)
    rss = rss_summary(samples, settings.warmup, settings.rss_tolerance)
    latencies = merged.latencies_ms
    total_errors = sum(errors.values())
    return {
        "settings": asdict(settings),
        "wall_s": wall_s,
        "turns": merged.turns,
        "turns_per_s": merged.turns / measured_s,
        "conversations": merged.conversations,
        "errors": dict(errors),
        "error_total": total_errors,
        "error_samples": merged.error_samples[:20],
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=math.nan),
        },
        "connections_opened": merged.connections_opened,
        "incremental_requests": merged.incremental_requests,
        "full_resends": merged.full_resends,
        "gateway_cpu_pct": 100 * gateway_cpu_s / wall_s,
        "generator_cpu_pct": 100 * merged.cpu_s / wall_s,
        "rss": rss,
        "rss_after_close_bytes": rss_after_close,
        "rss_samples": [[s.elapsed_s, s.rss_bytes] for s in samples],
        "passed": total_errors == 0 and merged.turns > 0 and bool(rss["ok"]),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    settings = summary["settings"]
    latency = summary["latency_ms"]
    print()
    print(f"=== soak summary ({settings['sessions']} sessions, {settings['duration']:.0f} s) ===")
    print(
        f"turns          {summary['turns']:,} ({summary['turns_per_s']:.1f} turns/s), "
        f"{summary['conversations']:,} conversations"
    )
    print(f"errors         {summary['error_total']}", end="")
    if summary["errors"]:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(summary["errors"].items()))
        print(f" ({kinds})", end="")
    print()
    for sample in summary["error_samples"]:
        print(f"  - {sample}")
    print(
        f"turn latency   p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
        f"max {latency['max']:.1f} ms"
    )
    print(
        f"connections    {summary['connections_opened']:,} opened; "
        f"{summary['incremental_requests']:,} incremental requests, "
        f"{summary['full_resends']:,} full sends (first turns)"
    )
    print(
        f"CPU            gateway {summary['gateway_cpu_pct']:.0f}% of one core, "
        f"generator {summary['generator_cpu_pct']:.0f}%"
    )
    rss = summary["rss"]
    if "start" in rss:
        print(
            f"gateway RSS    start {_mib(rss['start']['bytes'])} (t={rss['start']['at_s']:.0f} s), "
            f"middle {_mib(rss['middle']['bytes'])} (t={rss['middle']['at_s']:.0f} s), "
            f"end {_mib(rss['end']['bytes'])} (t={rss['end']['at_s']:.0f} s)"
        )
        print(
            f"               min {_mib(rss['min_bytes'])}, max {_mib(rss['max_bytes'])}, "
            f"drift {rss['drift_pct']:+.1f}% (max deviation {rss['max_deviation_pct']:.1f}%, "
            f"limit ±{rss['tolerance_pct']:.0f}%)"
        )
    else:
        print(f"gateway RSS    {rss['reason']}")
    if summary["rss_after_close_bytes"] is not None:
        print(f"               after every client closed: {_mib(summary['rss_after_close_bytes'])}")
    print(f"RESULT         {'PASS' if summary['passed'] else 'FAIL'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
