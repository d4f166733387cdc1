"""Whole agent runs with write tools, through a :class:`FaultProxy`, against a real gateway.

This is the harness behind ``make faults`` (``bench/faults.py``) and its scaled-down test: it
answers "does a run survive the network, and does any write happen twice?" by measuring, not
by assuming.

* The scenario (:func:`orders_scenario`) has turns that look orders up (reads) and place
  orders (writes, two in parallel per turn), each write with an order id that is unique within
  the run. The tools (:func:`order_tools`) are built per run and count every execution per
  (run, order id) in an :class:`OrderBook`: a write executed twice shows up as a count of 2.
* A gateway (:class:`RestartableGateway`) runs in this process on the embedded simulated
  model, with a SQLite store, and is restarted on the same port while runs are in flight.
* Runs go through a :class:`FaultProxy` whose :class:`FaultPlan` fires every kind of fault at
  random byte offsets, half over WebSocket mode and half over HTTP/SSE. A run that fails is
  continued from ``exc.partial`` (:func:`run_resuming`) a bounded number of times; it counts
  as lost only if it still cannot complete.
* Fault-free runs (the same runs through a proxy without faults, and no restarts) alternate
  with the faulty ones, phase by phase, so that both see the same machine; the overhead per
  fault is the difference of the medians divided by the faults per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotloop.backends.sim import SimBackend
from hotloop.errors import HotloopError
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.runtime import Agent, RunResult, Tool, tool
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec, Turn
from hotloop.testing.faults import Fault, FaultPlan, FaultProxy, run_resuming
from hotloop.transport import connect
from hotloop.wire import codec

__all__ = [
    "RESTART",
    "FaultRunConfig",
    "FaultRunReport",
    "OrderBook",
    "RestartableGateway",
    "order_tools",
    "orders_scenario",
    "run_fault_campaign",
]

MODEL = "hotloop-sim"
#: The key of gateway restarts in :attr:`FaultRunReport.faults`, next to the proxy's kinds.
RESTART = "restart"

_ORDER_ID = {"type": "object", "properties": {"order_id": {"type": "string"}}}
_LOOKUP = ToolSpec(
    name="lookup_order",
    description="Look an order up.",
    parameters={**_ORDER_ID, "required": ["order_id"]},
    output_bytes=400,
)
_PLACE = ToolSpec(
    name="place_order",
    description="Place an order (a write: it must happen exactly once).",
    parameters={
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "quantity": {"type": "integer"}},
        "required": ["order_id", "quantity"],
    },
    output_bytes=120,
)


def _call(spec: ToolSpec, **arguments: Any) -> ScriptedCall:
    return ScriptedCall(spec.name, codec.dumps(arguments).decode())


def orders_scenario(turns: int = 6, writes_per_turn: int = 2) -> Scenario:
    """``turns - 1`` turns that each look one order up and place ``writes_per_turn`` orders
    in parallel (order ids ``o<turn>-<n>``, unique within a run), then a final answer."""
    script = [
        Turn(
            text=f"Step {index}: checking order c{index}, then placing the new ones.",
            calls=(
                _call(_LOOKUP, order_id=f"c{index}"),
                *(
                    _call(_PLACE, order_id=f"o{index}-{n}", quantity=index + n)
                    for n in range(writes_per_turn)
                ),
            ),
        )
        for index in range(1, turns)
    ]
    script.append(Turn(text="Every order is placed, each exactly once."))
    return Scenario(
        name="orders",
        turns=tuple(script),
        tools={_LOOKUP.name: _LOOKUP, _PLACE.name: _PLACE},
        instructions="You place orders. Never place one twice.",
        task="Place this week's orders.",
    )


def scripted_writes(scenario: Scenario) -> list[str]:
    """The order ids the scenario's writes use, in script order."""
    return [
        str(codec.loads(call.arguments)["order_id"])
        for turn in scenario.turns
        for call in turn.calls
        if call.name == _PLACE.name
    ]


@dataclass
class OrderBook:
    """Every execution of the write tool, counted per (run, order id)."""

    placed: Counter[tuple[str, str]] = field(default_factory=Counter)

    def twice(self) -> int:
        """Writes that were executed more than once (each such write counts once)."""
        return sum(1 for count in self.placed.values() if count > 1)

    def missing(self, run: str, order_ids: list[str]) -> int:
        """Writes of ``run`` that never executed."""
        return sum(1 for order_id in order_ids if self.placed[run, order_id] == 0)


def order_tools(book: OrderBook, run: str) -> list[Tool]:
    """The scenario's tools for one run: a read, and a write counted in ``book``."""

    @tool(name=_LOOKUP.name, reads=["order:{order_id}"])
    async def lookup_order(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id}: open. " + "x" * _LOOKUP.output_bytes

    @tool(name=_PLACE.name, writes=["order:{order_id}"])
    async def place_order(order_id: str, quantity: int) -> str:
        """Place an order (a write: it must happen exactly once)."""
        book.placed[run, order_id] += 1
        return f"placed {order_id} x{quantity}"

    return [lookup_order, place_order]


class RestartableGateway:
    """A gateway on the simulated model, in this process, that can restart on its port.

    Stored responses go to the SQLite file ``store_path``, so they outlive a restart as they
    would in a deployment (a client continuing one by id after the restart still finds it);
    without one they live in memory and die with each gateway.
    """

    def __init__(
        self, scenario: Scenario, profile: str = "zero", store_path: Path | None = None
    ) -> None:
        self.scenario = scenario
        self.profile = profile
        self.config = GatewayConfig(store_path=store_path)
        self.port = 0
        self.restarts = 0
        self._server: GatewayServer | None = None

    async def start(self) -> None:
        backend = SimBackend(self.scenario, self.profile)
        self._server = GatewayServer(backend, self.config, port=self.port)
        self.port = self._server.port
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop the gateway (every connection ends); ``down_for`` s later start a new one."""
        await self.stop()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()
        self.restarts += 1

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass(frozen=True, slots=True)
class FaultRunConfig:
    """What :func:`run_fault_campaign` does.

    Phases alternate: ``concurrency`` runs through the fault proxy (with a gateway restart
    during the phase, every ``restart_every`` faulty phases), then ``concurrency`` fault-free
    runs, until ``faults`` faults (restarts included) were injected. The plan aims at
    ``faults_per_run`` proxy faults per run, from the bytes a fault-free run forwards. A run
    is continued up to ``max_resumes`` times. ``stall_timeout`` is short so that stalled and
    half-open connections are noticed quickly.
    """

    faults: int = 1_000
    seed: int = 1
    concurrency: int = 4
    faults_per_run: float = 2.0
    restart_every: int = 1
    profile: str = "zero"
    turns: int = 6
    max_resumes: int = 10
    first_event_timeout: float = 5.0
    stall_timeout: float = 1.0
    turn_timeout: float = 60.0
    reconnect_timeout: float = 15.0
    kinds: tuple[Fault, ...] = tuple(Fault)
    plan_stall_seconds: tuple[float, float] = (0.05, 1.5)
    plan_delay_seconds: tuple[float, float] = (0.005, 0.1)


@dataclass
class FaultRunReport:
    """What a campaign measured. Times are seconds."""

    runs: int = 0
    completed: int = 0
    lost: int = 0
    clean_runs: int = 0
    faulty_runs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    writes_twice: int = 0
    writes_missing: int = 0
    wrong_answers: int = 0
    resumes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost_reasons: Counter[str] = field(default_factory=Counter)
    #: Tracebacks the gateway logged (uvicorn's "Exception in ASGI application"), by type.
    gateway_errors: Counter[str] = field(default_factory=Counter)
    clean_seconds: list[float] = field(default_factory=list)
    faulty_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    @property
    def faults_per_run(self) -> float:
        return self.total_faults / self.faulty_runs if self.faulty_runs else 0.0

    @property
    def overhead_per_fault(self) -> float | None:
        """(median faulty run - median fault-free run) / faults per faulty run."""
        if not self.clean_seconds or not self.faulty_seconds or not self.faults_per_run:
            return None
        extra = statistics.median(self.faulty_seconds) - statistics.median(self.clean_seconds)
        return extra / self.faults_per_run

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.writes_twice == 0


@dataclass
class _Campaign:
    config: FaultRunConfig
    scenario: Scenario
    book: OrderBook
    report: FaultRunReport
    order_ids: list[str]
    serial: int = 0

    def agent(self, run: str) -> Agent:
        config = self.config
        return Agent(
            MODEL,
            self.scenario.instructions,
            order_tools(self.book, run),
            first_event_timeout=config.first_event_timeout,
            stall_timeout=config.stall_timeout,
            turn_timeout=config.turn_timeout,
        )

    async def one_run(self, url: str, *, faulty: bool) -> None:
        """One run to the end (resumed after failures); its outcome goes to the report."""
        self.serial += 1
        run = f"r{self.serial}"
        config = self.config
        kind: Literal["websocket", "http"] = "websocket" if self.serial % 2 else "http"
        # HTTP continues by previous_response_id from the SQLite store, across restarts too.
        client = connect(
            f"{url}/v1",
            transport=kind,
            store=True,
            incremental=True,
            reconnect_timeout=config.reconnect_timeout,
        )
        report = self.report

        def failed(exc: HotloopError) -> None:
            report.errors[f"{kind}: {_describe(exc)}"] += 1

        started = time.monotonic()
        result: RunResult | None = None
        try:
            result = await run_resuming(
                self.agent(run),
                f"{self.scenario.task} (run {run})",
                client=client,
                max_resumes=config.max_resumes,
                on_error=failed,
            )
        except HotloopError as exc:
            report.lost_reasons[f"{kind}: {_describe(exc)}: {exc}"] += 1
        except Exception as exc:  # a defect, not a network fault: counted, never hidden
            report.lost_reasons[f"{kind}: crash: {exc!r}"] += 1
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        elapsed = time.monotonic() - started
        report.runs += 1
        report.writes += len(self.order_ids)
        report.writes_missing += self.book.missing(run, self.order_ids)
        if faulty:
            report.faulty_runs += 1
        else:
            report.clean_runs += 1
        if result is None:
            report.lost += 1
            return
        report.completed += 1
        if result.final_output != self.scenario.turns[-1].text:
            report.wrong_answers += 1
        (report.faulty_seconds if faulty else report.clean_seconds).append(elapsed)


def _describe(exc: HotloopError) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}({code})" if code else type(exc).__name__


async def run_fault_campaign(
    config: FaultRunConfig,
    *,
    store_dir: Path | None = None,
    progress: Callable[[FaultRunReport], None] | None = None,
) -> FaultRunReport:
    """Run phases until ``config.faults`` faults were injected; see :class:`FaultRunConfig`.

    ``store_dir`` holds the gateway's SQLite store (default: a temporary directory).
    ``progress`` is called with the report after every phase.
    """
    with tempfile.TemporaryDirectory() as scratch:
        store_path = Path(store_dir or scratch) / "faults.sqlite"
        return await _campaign(config, store_path, progress)


class _GatewayErrors(logging.Filter):
    """Counts the tracebacks the gateway logs, into the report instead of the terminal."""

    def __init__(self, report: FaultRunReport) -> None:
        super().__init__()
        self.report = report

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "?"
        self.report.gateway_errors[kind] += 1
        return False


async def _campaign(
    config: FaultRunConfig,
    store_path: Path,
    progress: Callable[[FaultRunReport], None] | None,
) -> FaultRunReport:
    scenario = orders_scenario(config.turns)
    campaign = _Campaign(config, scenario, OrderBook(), FaultRunReport(), scripted_writes(scenario))
    report = campaign.report
    rng = random.Random(config.seed)
    started = time.monotonic()
    errors = _GatewayErrors(report)
    logging.getLogger("uvicorn.error").addFilter(errors)
    gateway = RestartableGateway(scenario, config.profile, store_path)
    await gateway.start()
    clean = FaultProxy("127.0.0.1", gateway.port)
    faulty = FaultProxy("127.0.0.1", gateway.port)
    try:
        await clean.start()
        await faulty.start()
        phase = 0
        # Calibration: what one fault-free run forwards sets the plan's mean gap.
        await _phase(campaign, clean.url, config.concurrency, faulty=False)
        per_run = clean.forwarded / max(1, config.concurrency)
        faulty.plan = FaultPlan(
            seed=config.seed,
            every_bytes=max(1.0, per_run / config.faults_per_run),
            kinds=config.kinds,
            stall_seconds=config.plan_stall_seconds,
            delay_seconds=config.plan_delay_seconds,
        )
        while report.total_faults < config.faults:
            phase += 1
            restart = config.restart_every > 0 and phase % config.restart_every == 0
            await _phase(
                campaign,
                faulty.url,
                config.concurrency,
                faulty=True,
                restart=(gateway, rng) if restart else None,
            )
            report.faults = Counter({kind.value: n for kind, n in faulty.faults.items()})
            report.faults[RESTART] = gateway.restarts
            await _phase(campaign, clean.url, config.concurrency, faulty=False)
            _finish(report, campaign, started)
            if progress is not None:
                progress(report)
    finally:
        await faulty.stop()
        await clean.stop()
        await gateway.stop()
        logging.getLogger("uvicorn.error").removeFilter(errors)
    _finish(report, campaign, started)
    return report


def _finish(report: FaultRunReport, campaign: _Campaign, started: float) -> None:
    report.writes_twice = campaign.book.twice()
    report.wall_seconds = time.monotonic() - started


async def _phase(
    campaign: _Campaign,
    url: str,
    runs: int,
    *,
    faulty: bool,
    restart: tuple[RestartableGateway, random.Random] | None = None,
) -> None:
    """``runs`` concurrent runs; with ``restart``, the gateway restarts while they run."""
    tasks = [asyncio.create_task(campaign.one_run(url, faulty=faulty)) for _ in range(runs)]
    if restart is not None:
        gateway, rng = restart
        typical = statistics.median(campaign.report.clean_seconds or [0.2])
        done, _ = await asyncio.wait(tasks, timeout=rng.uniform(0.1, 0.9) * typical)
        if len(done) < len(tasks):
            await gateway.restart()
    await asyncio.gather(*tasks)
