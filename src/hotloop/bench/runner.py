"""``hotloop bench``'s engine: a gateway subprocess, an optional delay proxy, interleaved runs.

The gateway runs as ``python -m hotloop.cli gateway`` in a subprocess so that the client CPU
(``time.process_time`` of this process) is the client's alone; it is terminated when the
benchmark ends, however it ends (error, Ctrl-C, cancellation). Runs are interleaved: each
repetition runs every selected strategy once, in an order rotated by one each repetition, so
a slow patch of the machine spreads over all strategies instead of landing on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import httpx

from hotloop.bench.strategies import RunRecord, Strategy, run_once
from hotloop.errors import HotloopError
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario

__all__ = ["BenchConfig", "Progress", "gateway_subprocess", "rotated", "run_bench", "scaled_tools"]

_STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run: the scenario and profile, the strategies, repetitions and network delay."""

    scenario: Scenario
    profile: LatencyProfile
    strategies: tuple[Strategy, ...]
    runs: int
    rtt_ms: float = 0.0
    tool_time_scale: float = 1.0
    warmup: int = 0
    #: ``--latency`` overrides, passed on to the gateway as ``key=value`` strings.
    latency: tuple[str, ...] = field(default=())
    #: How the gateway finds the scenario (a bundled name or a JSON path; default its name).
    scenario_ref: str = ""


class Progress:
    """Receives the benchmark's progress; the default does nothing (see the CLI for a view)."""

    def run_started(self, repetition: int, strategy: str, turns: int) -> None:
        """A run begins (``repetition`` 0 is a warm-up)."""

    def turn_finished(self, turn: int) -> None:
        """The current run finished its model turn ``turn``."""

    def run_finished(self, record: RunRecord) -> None:
        """The current run ended (completed or failed)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scaled_tools(scenario: Scenario, time_scale: float) -> Scenario:
    """``scenario`` with its tool latencies multiplied by ``time_scale`` (for the bound)."""
    if time_scale == 1.0:
        return scenario
    tools = {
        name: replace(spec, latency_ms=spec.latency_ms * time_scale)
        for name, spec in scenario.tools.items()
    }
    return replace(scenario, tools=tools)


@contextlib.asynccontextmanager
async def gateway_subprocess(
    scenario: str, profile: str, latency: Sequence[str] = ()
) -> AsyncIterator[str]:
    """A gateway in a subprocess; yields its base URL; always terminated on the way out."""
    port = _free_port()
    command = [sys.executable, "-m", "hotloop.cli", "gateway", "--scenario", scenario]
    command += ["--profile", profile, "--port", str(port), "--log-level", "warning"]
    for pair in latency:
        command += ["--latency", pair]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        async with httpx.AsyncClient() as probe:
            while True:
                if process.returncode is not None:
                    detail = b""
                    if process.stderr is not None:
                        detail = await process.stderr.read()
                    raise HotloopError(
                        f"the gateway exited with status {process.returncode}: "
                        f"{detail.decode(errors='replace').strip()[-500:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get(f"{root}/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:  # pragma: no cover - a hung start-up
                    raise HotloopError(f"the gateway did not start within {_STARTUP_TIMEOUT_S} s")
                await asyncio.sleep(0.05)
        yield f"{root}/v1"
    finally:
        # Shielded from cancellation (Ctrl-C): the subprocess must never outlive the bench.
        await asyncio.shield(_stop(process))


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:  # pragma: no cover - a gateway that ignores SIGTERM
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def _delayed(base_url: str, rtt_ms: float) -> AsyncIterator[str]:
    """``base_url``, through a delay proxy when ``rtt_ms`` > 0.

    The proxy runs in its own process (``python -m hotloop.bench.delay_proxy``) so that its
    work does not count as the client's CPU.
    """
    if rtt_ms <= 0:
        yield base_url
        return
    port = base_url.rsplit(":", 1)[1].split("/", 1)[0]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotloop.bench.delay_proxy",
        port,
        str(rtt_ms),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), _STARTUP_TIMEOUT_S)
        if not line.strip().isdigit():
            raise HotloopError(f"the delay proxy did not start (status {process.returncode})")
        yield f"http://127.0.0.1:{int(line)}/v1"
    finally:
        await asyncio.shield(_stop(process))


def rotated(strategies: Sequence[Strategy], repetition: int) -> list[Strategy]:
    """The order of ``repetition``'s runs: the strategies rotated by one per repetition."""
    shift = repetition % len(strategies)
    return [*strategies[shift:], *strategies[:shift]]


async def run_bench(
    config: BenchConfig,
    progress: Progress | None = None,
    *,
    base_url: str | None = None,
) -> list[RunRecord]:
    """Run every strategy ``config.runs`` times, interleaved; return every run's record.

    Starts its own gateway subprocess unless ``base_url`` is given. Warm-up runs (repetition
    0) are in the list too; the report leaves them out of the figures.
    """
    progress = progress or Progress()
    if base_url is None:
        async with gateway_subprocess(
            config.scenario_ref or config.scenario.name,
            config.profile.name.rstrip("*"),
            config.latency,
        ) as started:
            return await _runs(config, progress, started)
    return await _runs(config, progress, base_url)


async def _runs(config: BenchConfig, progress: Progress, base_url: str) -> list[RunRecord]:
    records: list[RunRecord] = []
    stamp = f"{time.time_ns():x}"
    async with _delayed(base_url, config.rtt_ms) as url:
        plan = [(0, list(config.strategies))] * config.warmup
        plan += [(rep, rotated(config.strategies, rep - 1)) for rep in range(1, config.runs + 1)]
        for index, (repetition, order) in enumerate(plan):
            for position, strategy in enumerate(order):
                progress.run_started(repetition, strategy.name, len(config.scenario.turns))
                record = await run_once(
                    strategy,
                    config.scenario,
                    url,
                    time_scale=config.tool_time_scale,
                    repetition=repetition,
                    position=position,
                    session=f"bench-{stamp}-{index}-{strategy.name}",
                    on_turn=progress.turn_finished,
                )
                records.append(record)
                progress.run_finished(record)
    return records
