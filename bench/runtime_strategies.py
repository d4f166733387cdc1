"""Agent-loop strategies side by side: naive HTTP, HTTP + previous_response_id, WebSocket, hotloop.

Plays one scenario (``--scenario``, default ``coding``) against a hotloop gateway on the
embedded simulated model (``--profile``, default ``fast``) with the hotloop runtime, in four
ways that differ only in transport and tool scheduling:

* **naive** — stateless HTTP + SSE re-sending the whole history every turn
  (``connect(transport="http", incremental=False)``); tools one at a time, after the turn ends
  (``Agent(eager=False, max_concurrency=1)``);
* **http-prev-id** — HTTP + SSE with ``previous_response_id`` (``incremental=True``, so
  ``store: true``); same sequential tools;
* **ws-incremental** — WebSocket mode, only the new items each turn; same sequential tools;
* **hotloop** — WebSocket mode + eager dispatch (a call starts the moment its arguments are
  complete in the stream) + concurrent tools (``eager=True, max_concurrency=8``).

Every strategy gets a fresh client per run (connection set-up is part of the run) and the
scenario's tools from :func:`hotloop.testing.scenario_tools` at their real latency
(``--tool-time-scale``; with ``--profile zero`` it defaults to 0, so nothing but software
runs). Runs are interleaved: each repetition runs every strategy once, in an order rotated
by one each repetition, after one uncounted warm-up run per strategy. Every run is checked
(turn count, tool-call count, executions and final text equal the scenario's); a failed run is
reported in the table and in the JSON, never dropped. Each run's task message carries its own
session tag (``hotloop.testing.session_task``), so no run finds another run's prompt in the
simulated engine's prefix cache: every run prefills its own tool results, as a real one would.

The gateway runs in a subprocess (``python -m hotloop.cli gateway``) so that the client CPU
(``time.process_time`` of this process) is the client's alone; ``--in-process`` runs it in
this process instead (the CPU column then includes the gateway). The gateway's own CPU per
run is read from ``/proc`` when it is a subprocess (10 ms clock-tick resolution).

With ``--profile zero`` the report adds CPU time per model turn: client process CPU / turns per
fresh-client run, and, steady-state on one warm client (``--warm-runs`` runs), the runtime's own
CPU: the process's CPU less the tools' own bodies (the application's work, measured inside each
tool), divided by the turns.

This is a benchmark, not a test: it never fails on time (it exits 1 only when a run did not
complete the scenario).

    python bench/runtime_strategies.py                       # coding, fast, 5 runs
    python bench/runtime_strategies.py --profile frontier --json out.json
    python bench/runtime_strategies.py --profile zero        # CPU per turn
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from hotloop.bench.command import non_negative
from hotloop.bench.strategies import (
    Strategy,
    strategy_agent,
    strategy_client,
    strategy_named,
)
from hotloop.runtime import Runner, RunResult, StepRecord
from hotloop.sim.latency import PROFILES, LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.testing import ExecutionLog, check_run, session_task
from hotloop.wire import codec

RUN_TIMEOUT_S = 900.0
#: Tags this invocation's sessions (see ``session_task``): no two runs share a prompt.
_STAMP = f"{os.getpid()}-{time.time_ns()}"


#: The four loop strategies compared (``hotloop bench`` adds ``ws-concurrent``).
STRATEGIES: tuple[Strategy, ...] = tuple(
    strategy_named(name) for name in ("naive", "http-prev-id", "ws-incremental", "hotloop")
)


@dataclass
class RunRecord:
    strategy: str
    repetition: int  # 0 = warm-up
    position: int  # place in this repetition's order
    ok: bool = False
    error: str | None = None
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    gateway_cpu_s: float | None = None
    turns: int = 0
    tool_calls: int = 0
    executions: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)


# -- the gateway --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Gateway:
    """The gateway under test: a subprocess (default) or in this process."""

    def __init__(self, scenario: str, profile: str, in_process: bool) -> None:
        self.scenario = scenario
        self.profile = profile
        self.in_process = in_process
        self.process: asyncio.subprocess.Process | None = None
        self.base_url = ""
        self._server: Any = None

    async def __aenter__(self) -> _Gateway:
        if self.in_process:
            from hotloop.backends.sim import SimBackend
            from hotloop.gateway import GatewayServer

            self._server = GatewayServer(SimBackend(self.scenario, self.profile))
            await self._server.start()
            self.base_url = self._server.base_url
            return self
        port = _free_port()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hotloop.cli",
            "gateway",
            "--scenario",
            self.scenario,
            "--profile",
            self.profile,
            "--port",
            str(port),
            "--log-level",
            "warning",
            stdout=asyncio.subprocess.DEVNULL,
        )
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as probe:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the gateway exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get(f"{self.base_url}/models")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start within 30 s")
                await asyncio.sleep(0.1)
        return self

    def cpu_s(self) -> float | None:
        """The gateway process's CPU time so far (user + system), or None in-process."""
        if self.process is None:
            return None
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After the ")" closing the command name: state is field 3, utime 14, stime 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop()
        if self.process is not None:
            if self.process.returncode is None:
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# -- one run ------------------------------------------------------------------------------


def _phases(steps: Sequence[StepRecord], wall_ns: int) -> dict[str, float]:
    """Where a run's wall time went, from its per-step timing records (seconds).

    * ``model`` — request sent → terminal event, summed over turns;
    * ``first_event`` — request sent → first event (part of ``model``);
    * ``tool_wait`` — terminal event → last tool result of the turn (tools the loop waited on
      after the model finished);
    * ``loop`` — everything else: between a turn's results and the next request, the end;
    * ``tool_busy`` — the union of tool execution intervals per turn, summed;
    * ``tool_hidden`` — the part of ``tool_busy`` that ran while the model was still streaming.
    """
    model = first_event = tool_wait = busy = hidden = 0
    for step in steps:
        done = step.response_done_ns or step.request_sent_ns
        model += done - step.request_sent_ns
        if step.first_event_ns is not None:
            first_event += step.first_event_ns - step.request_sent_ns
        if step.tools_done_ns is not None:
            tool_wait += step.tools_done_ns - done
        intervals = sorted(
            (t.started_ns, t.finished_ns)
            for t in step.tools
            if t.started_ns is not None and t.finished_ns is not None
        )
        merged: list[list[int]] = []
        for start, end in intervals:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in merged:
            busy += end - start
            hidden += max(0, min(end, done) - start)
    loop = wall_ns - model - tool_wait
    return {
        "model_s": model / 1e9,
        "first_event_s": first_event / 1e9,
        "tool_wait_s": tool_wait / 1e9,
        "loop_s": loop / 1e9,
        "tool_busy_s": busy / 1e9,
        "tool_hidden_s": hidden / 1e9,
    }


def _check(scenario: Scenario, result: RunResult, log: ExecutionLog) -> str | None:
    return "; ".join(check_run(scenario, result, log)) or None


async def run_once(
    strategy: Strategy,
    scenario: Scenario,
    gateway: _Gateway,
    time_scale: float,
    repetition: int,
    position: int,
) -> RunRecord:
    record = RunRecord(strategy.name, repetition, position)
    log = ExecutionLog()
    agent = strategy_agent(strategy, scenario, time_scale, log)  # built outside the measured span
    # Every run starts its own conversation: the engine's prefix cache is shared by every
    # request (as a real engine's is), and identical runs would find each other's prompts,
    # tool results included, already cached.
    task = session_task(scenario, f"{_STAMP}-{repetition}-{strategy.name}")
    client = strategy_client(strategy, gateway.base_url)
    gateway_cpu = gateway.cpu_s()
    cpu = time.process_time()
    wall = time.perf_counter()
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            result = await Runner.run(agent, task, client=client)
    except Exception as exc:  # a failed run is reported, never dropped
        record.wall_s = time.perf_counter() - wall
        record.client_cpu_s = time.process_time() - cpu
        record.error = f"{type(exc).__name__}: {exc}"
    else:
        record.wall_s = time.perf_counter() - wall
        record.client_cpu_s = time.process_time() - cpu
        record.turns = result.turns
        record.tool_calls = result.tool_calls
        record.phases = _phases(result.steps, result.wall_ns)
        record.error = _check(scenario, result, log)
        record.ok = record.error is None
    finally:
        after = gateway.cpu_s()
        if gateway_cpu is not None and after is not None:
            record.gateway_cpu_s = after - gateway_cpu
        record.executions = log.count()
        stats = client.stats
        record.stats = {
            "requests": stats.requests,
            "bytes_sent": stats.bytes_sent,
            "full_resends": stats.full_resends,
            "incremental_requests": stats.incremental_requests,
            "connections_opened": stats.connections_opened,
            "reconnects": stats.reconnects,
            "cache_misses": stats.cache_misses,
        }
        await client.close()
    return record


async def warm_cpu_per_turn(
    scenario: Scenario, gateway: _Gateway, runs: int, time_scale: float
) -> dict[str, Any]:
    """Steady-state CPU per turn of the hotloop strategy on one warm, reused client."""
    strategy = STRATEGIES[-1]
    client = strategy_client(strategy, gateway.base_url)
    samples: list[float] = []
    process: list[float] = []
    failures: list[str] = []
    try:
        for index in range(runs + 1):
            log = ExecutionLog()
            agent = strategy_agent(strategy, scenario, time_scale, log)
            task = session_task(scenario, f"{_STAMP}-warm-{index}")
            cpu = time.process_time()
            result = await Runner.run(agent, task, client=client)
            spent = time.process_time() - cpu
            problem = _check(scenario, result, log)
            if problem:
                failures.append(problem)
            elif index > 0:  # the first run warms the connection and the code paths
                # The runtime's own CPU: the tools' bodies are the application's work.
                samples.append((spent - log.cpu_ns() / 1e9) / result.turns)
                process.append(spent / result.turns)
    finally:
        await client.close()
    return {
        "runs": runs,
        "failures": failures,
        "cpu_per_turn_ms": [s * 1000 for s in samples],
        "median_cpu_per_turn_ms": statistics.median(samples) * 1000 if samples else None,
        "median_process_cpu_per_turn_ms": statistics.median(process) * 1000 if process else None,
        "quartiles_cpu_per_turn_ms": (
            [q * 1000 for q in statistics.quantiles(samples, n=4)] if len(samples) > 1 else None
        ),
        "connections_opened": client.stats.connections_opened,
    }


# -- the benchmark ------------------------------------------------------------------------


def _source_version() -> dict[str, Any]:
    """The commit the benchmark ran on, and whether the tree had uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def say(text: str) -> None:
    """Progress, on stderr."""
    print(text, file=sys.stderr, flush=True)


def _order(repetition: int) -> list[Strategy]:
    shift = repetition % len(STRATEGIES)
    return [*STRATEGIES[shift:], *STRATEGIES[:shift]]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scenario = load_scenario(args.scenario)
    profile = get_profile(args.profile)
    time_scale = args.tool_time_scale
    if time_scale is None:
        time_scale = 0.0 if profile.is_zero else 1.0
    records: list[RunRecord] = []
    warm: dict[str, Any] | None = None
    say(
        f"scenario {scenario.name} ({len(scenario.turns)} turns, {scenario.total_calls} tool "
        f"calls), profile {profile.name}, tool time scale {time_scale:g}, {args.runs} runs, "
        f"gateway {'in-process' if args.in_process else 'in a subprocess'}"
    )
    async with _Gateway(scenario.name, profile.name, args.in_process) as gateway:
        say("  warm-up (one uncounted run per strategy)…")
        for position, strategy in enumerate(STRATEGIES):
            record = await run_once(strategy, scenario, gateway, time_scale, 0, position)
            records.append(record)
            say(f"    {strategy.name:15} {record.wall_s:8.2f} s  {_status(record)}")
        for repetition in range(1, args.runs + 1):
            for position, strategy in enumerate(_order(repetition - 1)):
                record = await run_once(
                    strategy, scenario, gateway, time_scale, repetition, position
                )
                records.append(record)
                say(
                    f"  run {repetition}/{args.runs} {strategy.name:15} {record.wall_s:8.2f} s"
                    f"  cpu {record.client_cpu_s:6.3f} s  {_status(record)}"
                )
        if profile.is_zero and args.warm_runs > 0:
            say(f"  hotloop on one warm client, {args.warm_runs} runs…")
            warm = await warm_cpu_per_turn(scenario, gateway, args.warm_runs, time_scale)
    bound = _lower_bound_s(scenario, profile) if time_scale == 1.0 else None
    return _report(args, scenario, profile.name, time_scale, records, warm, bound)


def _lower_bound_s(scenario: Scenario, profile: LatencyProfile) -> float | None:
    """The scenario's critical-path lower bound under ``profile`` (tools at real latency)."""
    try:
        from hotloop.bench.lower_bound import lower_bound
    except ImportError:  # an older tree
        return None
    return lower_bound(scenario, profile).total_s


def _status(record: RunRecord) -> str:
    return "ok" if record.ok else f"FAILED: {record.error}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _report(
    args: argparse.Namespace,
    scenario: Scenario,
    profile: str,
    time_scale: float,
    records: list[RunRecord],
    warm: dict[str, Any] | None,
    bound: float | None,
) -> dict[str, Any]:
    measured = [r for r in records if r.repetition > 0]
    summary: dict[str, dict[str, Any]] = {}
    for strategy in STRATEGIES:
        runs = [r for r in measured if r.strategy == strategy.name]
        good = [r for r in runs if r.ok]
        walls = [r.wall_s for r in good]
        gateway_cpu = [r.gateway_cpu_s for r in good if r.gateway_cpu_s is not None]
        summary[strategy.name] = {
            **strategy.describe(),
            "runs": len(runs),
            "completed": len(good),
            "failures": [{"repetition": r.repetition, "error": r.error} for r in runs if not r.ok],
            "median_wall_s": _median(walls),
            "min_wall_s": min(walls) if walls else None,
            "max_wall_s": max(walls) if walls else None,
            "median_client_cpu_s": _median([r.client_cpu_s for r in good]),
            "median_client_cpu_per_turn_ms": _median(
                [r.client_cpu_s / r.turns * 1000 for r in good if r.turns]
            ),
            "median_gateway_cpu_s": _median(gateway_cpu),
            "requests": _median([r.stats.get("requests", 0) for r in good]),
            "bytes_sent": _median([r.stats.get("bytes_sent", 0) for r in good]),
            "connections_opened": _median([r.stats.get("connections_opened", 0) for r in good]),
            "phases": {
                key: _median([r.phases[key] for r in good])
                for key in (good[0].phases if good else {})
            },
        }
    naive = summary["naive"]["median_wall_s"]
    for entry in summary.values():
        wall = entry["median_wall_s"]
        entry["ratio_to_naive"] = wall / naive if wall is not None and naive else None
        entry["ratio_to_lower_bound"] = wall / bound if wall is not None and bound else None
    completed = {k: v["median_wall_s"] for k, v in summary.items() if v["median_wall_s"]}
    fastest = min(completed, key=lambda k: completed[k]) if completed else None
    report: dict[str, Any] = {
        "benchmark": "runtime_strategies",
        "scenario": scenario.name,
        "scenario_turns": len(scenario.turns),
        "scenario_tool_calls": scenario.total_calls,
        "profile": profile,
        "tool_time_scale": time_scale,
        "runs": args.runs,
        "lower_bound_s": bound,
        "gateway": "in-process" if args.in_process else "subprocess",
        "source": args.source,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "strategies": summary,
        "fastest": fastest,
        "runs_detail": [vars(r) for r in records],
    }
    if warm is not None:
        report["hotloop_warm_client"] = warm
    _print_tables(report)
    return report


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _print_tables(report: dict[str, Any]) -> None:
    summary = report["strategies"]
    in_process = report["gateway"] == "in-process"
    source = report["source"]
    commit = (source["commit"] or "?")[:10] + (" (dirty)" if source["dirty"] else "")
    print(
        f"\n{report['scenario']} scenario ({report['scenario_turns']} turns, "
        f"{report['scenario_tool_calls']} tool calls), profile {report['profile']}, tool time "
        f"scale {report['tool_time_scale']:g}; {report['runs']} interleaved runs per strategy; "
        f"gateway {report['gateway']}; {report['machine']['cpus']} CPUs, commit "
        f"{commit}"
    )
    cpu_label = "cpu s*" if in_process else "client cpu s"
    print(
        f"{'strategy':16}{'ok':>6}{'median s':>10}{'min s':>9}{'max s':>9}{'/naive':>8}"
        f"{'/bound':>8}"
        f"{'requests':>10}{'bytes sent':>12}{cpu_label:>14}{'gw cpu s':>10}"
    )
    for name, entry in summary.items():
        print(
            f"{name:16}{entry['completed']:>3}/{entry['runs']:<2}"
            f"{_fmt(entry['median_wall_s'], '.3f'):>10}{_fmt(entry['min_wall_s'], '.3f'):>9}"
            f"{_fmt(entry['max_wall_s'], '.3f'):>9}{_fmt(entry['ratio_to_naive'], '.3f'):>8}"
            f"{_fmt(entry['ratio_to_lower_bound'], '.3f'):>8}"
            f"{_fmt(entry['requests'], '.0f'):>10}{_fmt(entry['bytes_sent'], ',.0f'):>12}"
            f"{_fmt(entry['median_client_cpu_s'], '.3f'):>14}"
            f"{_fmt(entry['median_gateway_cpu_s'], '.2f'):>10}"
        )
    if report["lower_bound_s"] is not None:
        print(
            f"/bound: median over the critical-path lower bound, {report['lower_bound_s']:.3f} s "
            "(hotloop.bench.lower_bound)"
        )
    if in_process:
        print("* the gateway runs in this process: the CPU column includes its work")
    print(
        "\nWhere the time goes (medians, s): model = request sent → response done, of which "
        "first event;\ntool wait = response done → last tool result; loop = the rest; tool busy "
        "= tools running,\nof which hidden = while the model was still streaming"
    )
    print(
        f"{'strategy':16}{'wall':>9}{'model':>9}{'1st event':>11}{'tool wait':>11}{'loop':>8}"
        f"{'tool busy':>11}{'hidden':>9}"
    )
    for name, entry in summary.items():
        phases = entry["phases"]
        if not phases:
            continue
        print(
            f"{name:16}{_fmt(entry['median_wall_s'], '.3f'):>9}{phases['model_s']:>9.3f}"
            f"{phases['first_event_s']:>11.3f}{phases['tool_wait_s']:>11.3f}"
            f"{phases['loop_s']:>8.3f}{phases['tool_busy_s']:>11.3f}"
            f"{phases['tool_hidden_s']:>9.3f}"
        )
    failures = [(name, f) for name, entry in summary.items() for f in entry["failures"]]
    for name, failure in failures:
        print(f"FAILED: {name} run {failure['repetition']}: {failure['error']}")
    print(f"\nfastest by median wall time: {report['fastest']}")
    if report["profile"] == "zero":
        print("\nClient CPU per model turn (client process CPU / turns), fresh client per run:")
        for name, entry in summary.items():
            print(f"  {name:16}{_fmt(entry['median_client_cpu_per_turn_ms'], '.3f'):>8} ms")
        warm = report.get("hotloop_warm_client")
        if warm is not None:
            print(
                f"  hotloop, one warm client over {warm['runs']} runs: "
                f"{_fmt(warm['median_cpu_per_turn_ms'], '.3f')} ms per turn of runtime CPU "
                f"(target ≤ 1 ms; process CPU "
                f"{_fmt(warm['median_process_cpu_per_turn_ms'], '.3f')} ms with the tools' "
                "own bodies)"
                + (
                    " [quartiles "
                    + " / ".join(f"{q:.3f}" for q in warm["quartiles_cpu_per_turn_ms"])
                    + "]"
                    if warm.get("quartiles_cpu_per_turn_ms")
                    else ""
                )
                + (f"; FAILED runs: {warm['failures']}" if warm["failures"] else "")
            )
        if in_process:
            print("  (in-process gateway: these figures include the gateway's CPU)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="coding")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument("--runs", type=int, default=5, help="repetitions per strategy (≥ 5)")
    parser.add_argument(
        "--tool-time-scale",
        type=non_negative,
        default=None,
        help="multiply the tools' latencies (default 1, or 0 with --profile zero)",
    )
    parser.add_argument(
        "--warm-runs", type=int, default=40, help="zero profile: runs on one warm client"
    )
    parser.add_argument("--in-process", action="store_true", help="run the gateway in this process")
    parser.add_argument("--json", help="also write the report to this JSON file")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (medians of at least 5 repetitions)")
    args.source = _source_version()
    report = asyncio.run(main(args))
    if args.json:
        with open(args.json, "wb") as handle:
            handle.write(codec.dumps(report))
    failed = any(entry["failures"] for entry in report["strategies"].values())
    warm_failed = bool(report.get("hotloop_warm_client", {}).get("failures"))
    sys.exit(1 if failed or warm_failed else 0)
