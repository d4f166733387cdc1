"""``hotloop demo``: one scenario played the naive way and the hotloop way, then compared.

The demo starts the gateway in-process on the embedded simulated model and runs the scenario
twice with the runtime, tools executing at the scenario's real latency:

* **naive loop** — stateless HTTP/SSE re-sending the whole history every turn, each tool
  started only once the model's turn is complete, one tool at a time;
* **hotloop** — one warm WebSocket sending only new items, each tool started the moment its
  arguments are complete in the stream, up to eight at once as their declared effects allow.

The naive run shows a progress bar; the hotloop run is shown live (model text as it streams,
tools starting and finishing, one line per finished turn). Then the demo prints the
comparison and writes a self-contained HTML report (:mod:`hotloop.report`) with a waterfall of
both runs on one time axis. Each run is checked against the scenario (turns, tool calls, final
text, no tool errors); a run that fails is reported as failed, never left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from hotloop.backends.sim import SimBackend
from hotloop.bench.strategies import Strategy, strategy_agent, strategy_client, strategy_named
from hotloop.gateway.app import GatewayServer
from hotloop.report import ReportRun, connections_opened, write_report
from hotloop.runtime import (
    ModelTurnFinished,
    RunFinished,
    Runner,
    RunResult,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.testing import ExecutionLog, check_run, session_task
from hotloop.transport import Transport

__all__ = ["DEFAULT_REPORT", "DemoResult", "check_run", "run_demo"]

#: Where ``hotloop demo`` writes its report unless told otherwise.
DEFAULT_REPORT = Path("reports/demo.html")

_REFRESH_S = 0.1


@dataclass(frozen=True, slots=True)
class _Strategy:
    """How the demo shows one of the benchmark's strategies (``plays``)."""

    plays: Strategy
    title: str
    description: str
    #: Shown live (text, tools, a line per turn) rather than as a progress bar.
    shown_live: bool

    @property
    def name(self) -> str:
        return self.plays.name


NAIVE = _Strategy(
    strategy_named("naive"),
    "naive loop",
    "Stateless HTTP + SSE re-sending the whole history every turn; each tool starts after "
    "the model's turn is complete, one at a time.",
    shown_live=False,
)
HOTLOOP = _Strategy(
    strategy_named("hotloop"),
    "hotloop",
    "One warm WebSocket sending only new items; each tool starts the moment its arguments "
    "are complete in the stream, up to 8 at once as their declared effects allow.",
    shown_live=True,
)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo did: the naive run, the hotloop run, and where the report went."""

    naive: ReportRun
    hotloop: ReportRun
    report_path: Path | None

    @property
    def runs(self) -> tuple[ReportRun, ReportRun]:
        return (self.naive, self.hotloop)

    @property
    def ok(self) -> bool:
        return self.naive.ok and self.hotloop.ok


# -- the live view of the hotloop run --------------------------------------------------------


@dataclass(slots=True)
class _ToolLine:
    name: str
    arguments: str
    started: float
    duration_s: float | None = None
    error: str | None = None


@dataclass(slots=True)
class _LiveState:
    """What the live view shows; events update it, the refresher draws it."""

    scenario: Scenario
    started: float = field(default_factory=time.perf_counter)
    turn: int = 0
    text: list[str] = field(default_factory=list)
    tools: dict[str, _ToolLine] = field(default_factory=dict)
    turns_done: int = 0
    calls_done: int = 0
    expected_calls: int | None = None

    def enter(self, turn: int) -> None:
        """Follow the run into ``turn`` (events of a turn may come in any order)."""
        if turn != self.turn:
            self.turn, self.text, self.tools, self.expected_calls = turn, [], {}, None

    def turn_complete(self) -> bool:
        """Whether the current turn's model response and every tool of it are done."""
        if self.expected_calls is None or self.turns_done >= self.turn:
            return False
        finished = sum(line.duration_s is not None for line in self.tools.values())
        return finished == self.expected_calls

    def __rich__(self) -> RenderableType:
        scenario = self.scenario
        elapsed = time.perf_counter() - self.started
        status = Text.assemble(
            ("hotloop ", "bold green"),
            f"turn {max(self.turn, 1)}/{len(scenario.turns)} · ",
            f"{self.calls_done}/{scenario.total_calls} tool calls done · ",
            (f"{elapsed:.1f} s", "bold"),
        )
        text = "".join(self.text).strip() or "…"
        if len(text) > 360:
            text = "…" + text[-359:]
        model = Panel(
            Text(text, style="italic"),
            title=f"model · turn {max(self.turn, 1)}",
            title_align="left",
            border_style="blue",
        )
        tools = Table.grid(padding=(0, 2))
        tools.add_column(width=2)
        tools.add_column(style="bold")
        tools.add_column(style="dim", max_width=60, no_wrap=True, overflow="ellipsis")
        tools.add_column(justify="right")
        now = time.perf_counter()
        for line in self.tools.values():
            if line.duration_s is None:
                mark, took = Text("▶", "yellow"), Text(f"{now - line.started:.2f} s …", "yellow")
            elif line.error:
                mark, took = Text("✗", "bold red"), Text(line.error[:40], "red")
            else:
                mark, took = Text("✓", "green"), Text(f"{line.duration_s * 1000:.0f} ms", "green")
            tools.add_row(mark, line.name, line.arguments, took)
        return Group(status, model, tools)


def _args(arguments: str, width: int = 60) -> str:
    return arguments if len(arguments) <= width else arguments[: width - 1] + "…"


@contextlib.asynccontextmanager
async def _refreshing(refresh: Live | Progress | None) -> AsyncIterator[None]:
    """Redraw ``refresh`` from the event loop, so drawing never races the run for the GIL."""
    if refresh is None:
        yield
        return

    async def tick() -> None:
        while True:
            await asyncio.sleep(_REFRESH_S)
            refresh.refresh()

    with refresh:
        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            refresh.refresh()


def _connect(strategy: _Strategy, base_url: str) -> Transport:
    return strategy_client(strategy.plays, base_url)


def _turn_line(turn: int, seconds: float, tools: list[_ToolLine]) -> Text:
    line = Text.assemble(("✓ ", "green"), (f"turn {turn:>2}", "bold"), f"  {seconds:5.2f} s  ")
    if not tools:
        return line.append("final answer", style="bold green")
    names: dict[str, int] = {}
    for tool in tools:
        names[tool.name] = names.get(tool.name, 0) + 1
    shown = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in names.items())
    slowest = max(tool.duration_s or 0.0 for tool in tools)
    return line.append(f"{shown}  (slowest {slowest * 1000:.0f} ms)", style="dim")


async def _play(
    strategy: _Strategy,
    scenario: Scenario,
    base_url: str,
    tool_time_scale: float,
    console: Console,
    live: bool,
) -> ReportRun:
    """Run the scenario once with ``strategy``; the returned run says whether it completed it."""
    log = ExecutionLog()
    agent = strategy_agent(strategy.plays, scenario, tool_time_scale, log)
    client = _connect(strategy, base_url)
    state = _LiveState(scenario)
    progress: Progress | None = None
    view: Live | Progress | None = None
    if strategy.shown_live:
        if live:
            view = Live(state, console=console, auto_refresh=False, transient=True)
    elif live:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("turn {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("· {task.fields[calls]}/{task.fields[total_calls]} tool calls"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        view = progress
    task = (
        progress.add_task(
            strategy.title, total=len(scenario.turns), calls=0, total_calls=scenario.total_calls
        )
        if progress is not None
        else None
    )
    result: RunResult | None = None
    turn_started = time.perf_counter()
    try:
        async with _refreshing(view):
            message = session_task(scenario, strategy.name)  # no shared prompt cache
            async for event in Runner.run_stream(agent, message, client=client):
                if not isinstance(event, RunFinished):
                    state.enter(event.turn)
                if isinstance(event, TextDelta):
                    state.text.append(event.delta)
                elif isinstance(event, ToolCallStarted):
                    state.tools[event.call_id] = _ToolLine(
                        event.name, _args(event.arguments), time.perf_counter()
                    )
                elif isinstance(event, ToolCallFinished):
                    state.calls_done += 1
                    line = state.tools.get(event.call_id)
                    if line is not None:
                        line.duration_s = event.duration_ns / 1e9
                        line.error = event.error
                    if progress is not None and task is not None:
                        progress.update(task, calls=state.calls_done)
                elif isinstance(event, ModelTurnFinished):
                    state.expected_calls = event.tool_calls
                    if progress is not None and task is not None:
                        progress.update(task, advance=1)
                elif isinstance(event, RunFinished):
                    result = event.result
                if strategy.shown_live and state.turn_complete():
                    now = time.perf_counter()
                    console.print(
                        _turn_line(state.turn, now - turn_started, list(state.tools.values()))
                    )
                    state.turns_done, state.expected_calls, turn_started = state.turn, None, now
    except Exception as exc:  # a failed run is reported, never dropped
        return ReportRun(
            strategy.name,
            strategy.title,
            strategy.description,
            None,
            client.stats,
            (f"the run raised {type(exc).__name__}: {exc}",),
        )
    finally:
        await client.aclose()
    assert result is not None  # run_stream always ends with RunFinished
    return ReportRun(
        strategy.name,
        strategy.title,
        strategy.description,
        result,
        client.stats,
        check_run(scenario, result, log),
    )


# -- the comparison ---------------------------------------------------------------------------


def _comparison(naive: ReportRun, fast: ReportRun) -> Table:
    table = Table(title="naive loop vs hotloop", title_style="bold", title_justify="left")
    table.add_column("")
    table.add_column("naive loop", justify="right")
    table.add_column("hotloop", justify="right", style="bold green")
    table.add_column("hotloop / naive", justify="right")

    def cells(value: float | None, seconds: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:.2f} s" if seconds else f"{int(value):,}"

    rows: list[tuple[str, float | None, float | None, bool]] = []
    for label, seconds in (
        ("wall time", True),
        ("model turns", False),
        ("tool calls", False),
        ("bytes sent", False),
        ("requests", False),
        ("connections", False),
    ):
        values: list[float | None] = []
        for run in (naive, fast):
            r, s = run.result, run.stats
            values.append(
                {
                    "wall time": r.wall_ns / 1e9 if r else None,
                    "model turns": r.turns if r else None,
                    "tool calls": r.tool_calls if r else None,
                    "bytes sent": s.bytes_sent if s else None,
                    "requests": s.requests if s else None,
                    "connections": connections_opened(run),
                }[label]
            )
        rows.append((label, values[0], values[1], seconds))
    for label, old, new, seconds in rows:
        comparable = naive.result is not None and fast.result is not None
        ratio = f"{new / old:.2f}x" if comparable and old and new is not None else "-"
        table.add_row(label, cells(old, seconds), cells(new, seconds), ratio)
    return table


def _report_failures(console: Console, runs: tuple[ReportRun, ...]) -> None:
    for run in runs:
        if run.ok:
            continue
        console.print(
            Panel(
                "\n".join(f"• {problem}" for problem in run.problems)
                or "the run produced no result",
                title=f"FAILED: {run.title} did not complete the scenario",
                border_style="bold red",
                style="red",
            )
        )


@contextlib.contextmanager
def _section(console: Console, title: str, description: str) -> Iterator[None]:
    console.rule(f"[bold]{title}", align="left")
    console.print(Text(description, style="dim"))
    yield
    console.print()


async def run_demo(
    scenario: str | Scenario = "coding",
    profile: str | LatencyProfile = "fast",
    *,
    tool_time_scale: float = 1.0,
    report_path: str | Path | None = DEFAULT_REPORT,
    live: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo and return both runs; ``report_path=None`` writes no report.

    ``live=False`` draws no live view or progress bar (the turn lines and the comparison are
    still printed). Check :attr:`DemoResult.ok`: a failed run is in the result, not raised.
    """
    console = console or Console()
    script = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    latency = profile if isinstance(profile, LatencyProfile) else get_profile(profile)
    async with GatewayServer(SimBackend(script, latency)) as server:
        console.print(
            Text.assemble(
                ("hotloop demo", "bold"),
                f" — scenario {script.name!r} ({script.total_calls} tool calls over "
                f"{len(script.turns)} turns), profile {latency.name!r}, tools at "
                f"{tool_time_scale:g}x their latency; gateway on {server.base_url}",
            )
        )
        console.print(Text(f"task: {script.task}", style="dim"))
        console.print()
        runs: list[ReportRun] = []
        for index, strategy in enumerate((NAIVE, HOTLOOP), 1):
            with _section(console, f"{index}/2 {strategy.title}", strategy.description):
                run = await _play(strategy, script, server.base_url, tool_time_scale, console, live)
                runs.append(run)
                if run.result is None:
                    console.print(f"[bold red]{strategy.title}: FAILED[/] (see below)")
                else:
                    console.print(
                        f"{strategy.title}: done in {run.result.wall_ns / 1e9:.2f} s",
                        highlight=False,
                    )
        naive, fast = runs
    console.print(_comparison(naive, fast))
    if naive.result is not None and fast.result is not None:
        speedup = naive.result.wall_ns / max(1, fast.result.wall_ns)
        verdict = (
            f"[bold green]{speedup:.2f}x faster[/]"
            if speedup >= 1
            else f"[bold red]{1 / speedup:.2f}x slower[/]"
        )
        console.print(
            f"hotloop finished the scenario {verdict} than the naive loop "
            f"({naive.result.wall_ns / 1e9:.2f} s → {fast.result.wall_ns / 1e9:.2f} s).",
            highlight=False,
        )
    _report_failures(console, (naive, fast))
    written: Path | None = None
    if report_path is not None:
        written = write_report(report_path, [naive, fast], script, latency)
        console.print(f"report: [bold]{written}[/] (a waterfall of both runs; opens offline)")
    return DemoResult(naive, fast, written)
