"""``hotloop demo``: one scenario played the naive way and the hotloop way, then compared.

The demo starts the gateway in-process on the embedded simulated model (or, with a
:class:`DemoUpstream`, in front of a real model server) and runs the scenario twice with the
runtime, tools executing at the scenario's real latency:

* **naive loop** — stateless HTTP/SSE re-sending the whole history every turn, each tool
  started only once the model's turn is complete, one tool at a time;
* **hotloop** — one warm WebSocket sending only new items, each tool started the moment its
  arguments are complete in the stream, up to eight at once as their declared effects allow.

The naive run shows a progress bar; the hotloop run is shown live (model text as it streams,
tools starting and finishing, one line per finished turn). Then the demo prints the
comparison and writes a self-contained HTML report (:mod:`hotloop.report`) with a waterfall of
both runs on one time axis. Each run on the simulated model is checked against the scenario
(turns, tool calls, final text, no tool errors); a run that fails is reported as failed, never
left out.

A real model does not follow the scenario's script: it gets the scenario's instructions, task
and tools (tools that accept whatever arguments it sends, at the scenario's latency and output
size), and a run fails only when the model fails (an error, no final answer). Both runs go
through the same gateway, so the upstream sees the same kind of requests from both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from hotloop.backends.base import Backend
from hotloop.backends.sim import SimBackend
from hotloop.bench.strategies import Strategy, strategy_agent, strategy_client, strategy_named
from hotloop.errors import DecodeError, HotloopError
from hotloop.gateway.app import GatewayServer
from hotloop.report import ReportRun, connections_opened, write_report
from hotloop.runtime import (
    Agent,
    ModelTurnFinished,
    RunFinished,
    Runner,
    RunResult,
    TextDelta,
    Tool,
    ToolCallFinished,
    ToolCallStarted,
)
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, load_scenario
from hotloop.testing import ExecutionLog, check_run, scenario_tools, session_task
from hotloop.transport import Transport
from hotloop.wire import codec

__all__ = ["DEFAULT_REPORT", "DemoResult", "DemoUpstream", "check_run", "run_demo"]

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
class DemoUpstream:
    """A real model for the demo: the gateway serves ``backend`` instead of the simulated model.

    ``label`` says where the model is (shown, and written in the report); ``model`` is the
    model id both runs ask the gateway for (``None``: the upstream's only model).
    """

    backend: Backend
    label: str
    model: str | None = None


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


# -- what the runs play: the scenario's script, or a real model -----------------------------


class _AnyArguments(Tool):
    """A scenario tool that runs with whatever arguments a real model sends.

    The model is offered the scenario's schema, but nothing checks its arguments against it:
    a real model (or the tests' tiny one, which fills every argument with a placeholder) may
    send values the script never would, and the demo measures the loop, not the model's
    aim. Resource templates (``repo/{path}``) fill a missing argument with nothing.
    """

    def parse(self, arguments: str) -> dict[str, Any]:
        try:
            args = codec.loads(arguments or "{}")
        except DecodeError:
            return {}
        return args if isinstance(args, dict) else {}

    def resources(self, args: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
        filled = _Blank(args)

        def expand(specs: tuple[Any, ...]) -> frozenset[str]:
            keys: set[str] = set()
            for spec in specs:
                if isinstance(spec, str):
                    keys.add(spec.format_map(filled))
                else:
                    keys.update(spec(args))
            return frozenset(keys)

        return expand(self.effects.reads), expand(self.effects.writes)


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class _Setup:
    """What both runs play: the agent, the task, and how a finished run is judged."""

    scenario: Scenario
    tool_time_scale: float
    #: The model id of a real upstream; ``None`` plays the scenario's script on the sim.
    real_model: str | None = None

    @property
    def real(self) -> bool:
        return self.real_model is not None

    @property
    def planned_turns(self) -> int | None:
        return None if self.real else len(self.scenario.turns)

    @property
    def planned_calls(self) -> int | None:
        return None if self.real else self.scenario.total_calls

    def agent(self, strategy: _Strategy, log: ExecutionLog) -> Agent:
        if self.real_model is None:
            return strategy_agent(strategy.plays, self.scenario, self.tool_time_scale, log)
        tools = [
            _AnyArguments.from_schema(
                tool.name,
                tool.parameters,
                tool.fn,
                description=tool.description,
                effects=tool.effects,
                timeout=tool.timeout,
            )
            for tool in scenario_tools(self.scenario, time_scale=self.tool_time_scale, log=log)
        ]
        return Agent(
            self.real_model,
            self.scenario.instructions,
            tools,
            name=strategy.name,
            # A real model may take more turns than the script; a bound keeps a run finite.
            max_turns=2 * len(self.scenario.turns) + 5,
            eager=strategy.plays.eager,
            max_concurrency=strategy.plays.max_concurrency,
        )

    def check(self, result: RunResult, log: ExecutionLog) -> tuple[str, ...]:
        """What makes the run a failure: any difference from the script on the sim; only a
        missing answer from a real model (what it did otherwise is reported, not judged)."""
        if not self.real:
            return check_run(self.scenario, result, log)
        if not result.final_output.strip():
            return ("the model ended the run without a final answer",)
        return ()


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

    planned_turns: int | None
    planned_calls: int | None
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
        elapsed = time.perf_counter() - self.started
        turns = f"/{self.planned_turns}" if self.planned_turns is not None else ""
        calls = f"/{self.planned_calls}" if self.planned_calls is not None else ""
        status = Text.assemble(
            ("hotloop ", "bold green"),
            f"turn {max(self.turn, 1)}{turns} · ",
            f"{self.calls_done}{calls} tool calls done · ",
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


def _progress(strategy: _Strategy, setup: _Setup, console: Console) -> tuple[Progress, Any]:
    """A progress bar for a run not shown live: against the script's plan when there is one."""
    columns: list[ProgressColumn | str] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if setup.real:  # no plan: a pulsing bar and counts
        columns += [
            TextColumn("turn {task.completed:.0f}"),
            TextColumn("· {task.fields[calls]} tool calls"),
        ]
    else:
        columns += [
            TextColumn("turn {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("· {task.fields[calls]}/{task.fields[total_calls]} tool calls"),
        ]
    progress = Progress(*columns, TimeElapsedColumn(), console=console, auto_refresh=False)
    task = progress.add_task(
        strategy.title,
        total=setup.planned_turns,
        calls=0,
        total_calls=setup.planned_calls,
    )
    return progress, task


async def _play(
    strategy: _Strategy, setup: _Setup, base_url: str, console: Console, live: bool
) -> ReportRun:
    """Run the task once with ``strategy``; the returned run says whether it failed."""
    log = ExecutionLog()
    agent = setup.agent(strategy, log)
    client = _connect(strategy, base_url)
    state = _LiveState(setup.planned_turns, setup.planned_calls)
    progress: Progress | None = None
    task: Any = None
    view: Live | Progress | None = None
    if strategy.shown_live:
        if live:
            view = Live(state, console=console, auto_refresh=False, transient=True)
    elif live:
        progress, task = _progress(strategy, setup, console)
        view = progress
    result: RunResult | None = None
    turn_started = time.perf_counter()
    try:
        async with _refreshing(view):
            message = session_task(setup.scenario, strategy.name)  # no shared prompt cache
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
                    if progress is not None:
                        progress.update(task, calls=state.calls_done)
                elif isinstance(event, ModelTurnFinished):
                    state.expected_calls = event.tool_calls
                    if progress is not None:
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
        await client.close()
    assert result is not None  # run_stream always ends with RunFinished
    return ReportRun(
        strategy.name,
        strategy.title,
        strategy.description,
        result,
        client.stats,
        setup.check(result, log),
    )


# -- a real upstream: the model, a warm-up, what happened -----------------------------------


def _served_model(server: GatewayServer, upstream: DemoUpstream) -> str:
    """The model both runs ask for: the one named, else the upstream's only one."""
    served = list(server.gateway.models())
    if upstream.model is not None:
        if upstream.model not in served:
            raise HotloopError(
                f"the gateway does not serve {upstream.model!r}; it serves {', '.join(served)}"
            )
        return upstream.model
    if len(served) != 1:
        raise HotloopError(
            f"{upstream.label} serves {len(served)} models ({', '.join(served) or 'none'}): "
            "name the one to run with --model"
        )
    return served[0]


async def _warm_up(base_url: str, agent: Agent, scenario: Scenario) -> str | None:
    """One unmeasured request with the runs' instructions and tools, so the engine's prompt
    cache and the gateway's upstream connection are as warm for the first run as for the
    second. Returns what went wrong, if anything (the runs then report their own errors)."""
    body = {
        "model": agent.model,
        "instructions": agent.instructions,
        "input": session_task(scenario, "warm-up"),
        "tools": list(agent.definitions),
        "max_output_tokens": 16,
        "store": False,
    }
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as http:
            response = await http.post(f"{base_url}/responses", json=body)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code >= 400:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return None


def _answer(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _what_happened(console: Console, run: ReportRun) -> None:
    """A real model's run in a few lines: its turns, tool calls, tool errors and answer."""
    result = run.result
    if result is None:
        return
    errors = [tool.error for step in result.steps for tool in step.tools if tool.error]
    line = Text(f"  {result.turns} model turns, {result.tool_calls} tool calls", style="dim")
    if errors:
        line.append(f", {len(errors)} failed (the first: {errors[0]})", style="yellow")
    console.print(line)
    console.print(Text.assemble(("  answer: ", "dim"), _answer(result.final_output) or "(none)"))


def _real_subtitle(setup: _Setup, upstream: DemoUpstream) -> str:
    """What played the runs, for the report: a real model, not the scenario's script."""
    scale = f" times {setup.tool_time_scale:g}" if setup.tool_time_scale != 1 else ""
    return (
        f"The task and {len(setup.scenario.tools)} tools of scenario {setup.scenario.name}, "
        f"played by the real model {setup.real_model or ''} at {upstream.label} through the "
        "gateway (it does not follow the scenario's script); tools run at the scenario's "
        f"latency{scale}. Both waterfalls share one time axis."
    )


# -- the comparison ---------------------------------------------------------------------------


def _ratio(naive_s: float, hotloop_s: float) -> str:
    """The comparison table's ``hotloop / naive`` cell."""
    return f"{hotloop_s / naive_s:.2f}x" if naive_s else "-"


def _wall_times(naive_s: float, hotloop_s: float) -> tuple[str, str]:
    """Both wall times in seconds, to 2 decimals or as many more (up to nanoseconds) as it
    takes for the figures' own ratio to read as the ratio printed beside them (the table's
    ``hotloop / naive``, the headline's verdict): never two equal figures beside 1.01x."""
    shown = (_ratio(naive_s, hotloop_s), _verdict(naive_s, hotloop_s))
    for digits in range(2, 10):
        naive, fast = f"{naive_s:.{digits}f}", f"{hotloop_s:.{digits}f}"
        if (_ratio(float(naive), float(fast)), _verdict(float(naive), float(fast))) == shown:
            break
    return naive, fast


def _verdict(naive_s: float, hotloop_s: float) -> str:
    """``3.20x faster``, ``1.25x slower``, or ``about as fast as`` when the ratio shows as 1.00x."""
    speedup = max(naive_s, 1e-9) / max(hotloop_s, 1e-9)
    if f"{speedup:.2f}" != "1.00" and speedup >= 1:
        return f"{speedup:.2f}x faster"
    if f"{1 / speedup:.2f}" != "1.00" and speedup < 1:
        return f"{1 / speedup:.2f}x slower"
    return "about as fast as"


def _headline(naive_s: float, hotloop_s: float, what: str) -> Text:
    """``hotloop finished the <what> 3.20x faster than the naive loop (3.20 s → 1.00 s).``

    "faster" or "slower" by the ratio of the wall times as shown (2 decimals); a ratio that
    shows as 1.00x reads "about as fast as". The times have as many decimals as it takes for
    their own ratio to read the same. Print it with ``soft_wrap=True``: rich would otherwise
    break the line anywhere, between a number and its unit too.
    """
    verdict = _verdict(naive_s, hotloop_s)
    naive, fast = _wall_times(naive_s, hotloop_s)
    style = {"faster": "bold green", "slower": "bold red"}.get(verdict.rpartition(" ")[2], "bold")
    return Text.assemble(
        f"hotloop finished the {what} ",
        (verdict, style),
        " the naive loop" if verdict == "about as fast as" else " than the naive loop",
        f" ({naive} s → {fast} s).",
    )


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
        ratio = _ratio(old, new) if comparable and old and new is not None else "-"
        if seconds and comparable and old and new is not None:
            # The headline's figures: as many decimals as the ratios shown need.
            shown = _wall_times(old, new)
            table.add_row(label, f"{shown[0]} s", f"{shown[1]} s", ratio)
            continue
        table.add_row(label, cells(old, seconds), cells(new, seconds), ratio)
    return table


def _report_failures(console: Console, runs: tuple[ReportRun, ...], real: bool) -> None:
    for run in runs:
        if run.ok:
            continue
        console.print(
            Panel(
                "\n".join(f"• {problem}" for problem in run.problems)
                or "the run produced no result",
                title=f"FAILED: {run.title} did not "
                + ("finish the task" if real else "complete the scenario"),
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
    upstream: DemoUpstream | None = None,
) -> DemoResult:
    """Run the demo and return both runs; ``report_path=None`` writes no report.

    ``live=False`` draws no live view or progress bar (the turn lines and the comparison are
    still printed). Check :attr:`DemoResult.ok`: a failed run is in the result, not raised.
    ``upstream`` runs the scenario's task and tools against a real model instead of the
    simulated one (``profile`` is then unused); only the model's failures fail a run.
    Raises :class:`~hotloop.errors.HotloopError` when the gateway cannot start (say, the
    upstream is unreachable) or does not serve the model asked for.
    """
    console = console or Console()
    script = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    latency = profile if isinstance(profile, LatencyProfile) else get_profile(profile)
    backend = upstream.backend if upstream is not None else SimBackend(script, latency)
    async with GatewayServer(backend) as server:
        if upstream is None:
            setup = _Setup(script, tool_time_scale)
            console.print(
                Text.assemble(
                    ("hotloop demo", "bold"),
                    f" — scenario {script.name!r} ({script.total_calls} tool calls over "
                    f"{len(script.turns)} turns), profile {latency.name!r}, tools at "
                    f"{tool_time_scale:g}x their latency; gateway on {server.base_url}",
                )
            )
        else:
            setup = _Setup(script, tool_time_scale, _served_model(server, upstream))
            console.print(
                Text.assemble(
                    ("hotloop demo", "bold"),
                    f" — model {setup.real_model!r} at {upstream.label}, with the task and "
                    f"{len(script.tools)} tools of scenario {script.name!r}, tools at "
                    f"{tool_time_scale:g}x their latency; gateway on {server.base_url}",
                )
            )
        console.print(Text(f"task: {script.task}", style="dim"))
        if setup.real:
            problem = await _warm_up(server.base_url, setup.agent(NAIVE, ExecutionLog()), script)
            if problem is not None:
                console.print(Text(f"warm-up request failed: {problem}", style="yellow"))
        console.print()
        runs: list[ReportRun] = []
        for index, strategy in enumerate((NAIVE, HOTLOOP), 1):
            with _section(console, f"{index}/2 {strategy.title}", strategy.description):
                run = await _play(strategy, setup, server.base_url, console, live)
                runs.append(run)
                if run.result is None:
                    console.print(f"[bold red]{strategy.title}: FAILED[/] (see below)")
                else:
                    console.print(
                        f"{strategy.title}: done in {run.result.wall_ns / 1e9:.2f} s",
                        highlight=False,
                    )
                    if setup.real:
                        _what_happened(console, run)
        naive, fast = runs
    console.print(_comparison(naive, fast))
    if naive.result is not None and fast.result is not None:
        headline = _headline(
            naive.result.wall_ns / 1e9,
            fast.result.wall_ns / 1e9,
            "task" if setup.real else "scenario",
        )
        console.print(headline, soft_wrap=True, highlight=False)
        paths = (naive.result.turns, naive.result.tool_calls)
        if setup.real and paths != (fast.result.turns, fast.result.tool_calls):
            console.print(
                Text(
                    "The model took different paths in the two runs (turns, tool calls): "
                    "their times compare different work.",
                    style="yellow",
                )
            )
    _report_failures(console, (naive, fast), setup.real)
    written: Path | None = None
    if report_path is not None and naive.result is None and fast.result is None:
        # Nothing to draw (and the report's time axis needs a run that took time).
        console.print(
            f"report: none written to {report_path}: neither run produced a result", soft_wrap=True
        )
    elif report_path is not None:
        if upstream is None:
            written = write_report(report_path, [naive, fast], script, latency)
        else:
            written = write_report(
                report_path,
                [naive, fast],
                script,
                "real model",
                title=f"hotloop demo — {setup.real_model or 'a real model'}, "
                f"scenario {script.name}",
                subtitle=_real_subtitle(setup, upstream),
            )
        # Never broken inside the path: it is copied from here.
        console.print(
            f"report: [bold]{written}[/] (a waterfall of both runs; opens offline)", soft_wrap=True
        )
    return DemoResult(naive, fast, written)
