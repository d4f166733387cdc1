"""The work-avoidance policies (``Cache``, ``Speculate``, ``Compact``) under network faults.

Every run here goes over real loopback sockets: a gateway on the simulated model plays the
``coding-session`` scenario, a :class:`~hotloop.testing.faults.FaultProxy` sits between it and
the runtime, and the tools (:func:`~hotloop.testing.scenario_tools`) keep a versioned world, so
a read served stale differs from a fresh one. The gateway's backend holds a chosen turn in the
middle of its stream (right after a function call's item is complete, so the runtime has
dispatched it), which makes every cut land where the test says, never where a timer happens
to fire. A run with faults and policies must give the model byte for byte the tool results a
fault-free run without policies gives it, and execute each write exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import pytest

from gated import GatedBackend
from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayServer
from hotloop.runtime import (
    Agent,
    Compact,
    Hedge,
    PartialRun,
    Policy,
    RetryOnTimeout,
    RunEvent,
    RunFinished,
    Runner,
    RunResult,
    Tool,
    ToolCallFinished,
)
from hotloop.runtime.speculation import Speculate, transitions_of
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import load_scenario
from hotloop.sim.summary import is_summary_request, is_summary_text
from hotloop.testing import ExecutionLog, check_run, scenario_tools
from hotloop.testing.faults import Fault, FaultProxy
from hotloop.transport import Transport, TransportError, connect
from hotloop.wire import codec
from hotloop.wire.events import OutputItemDone
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Message
from support import RecordingTransport

CODING = load_scenario("coding-session")
MODEL = f"hotloop-sim:{CODING.name}"
WRITE = "apply_patch"
#: Tools take a hundredth of their scripted latency: fast, and still ordered by duration
#: (the speculation budget goes to the slowest predicted tool first).
TIME_SCALE = 0.01
#: A guard against hangs only; no assertion depends on how long anything takes.
TIMEOUT = 20.0
#: A file ``list_dir`` lists and the model never reads: its speculation is never used.
UNREAD = "src/shortlinks/__init__.py"
#: Turn 14's first call: a read that turn 13's grep predicts (so it is speculated).
CLI = codec.dumps({"path": "src/shortlinks/cli.py"}).decode()


class HeldTurns(GatedBackend):
    """The sim, except model turn ``hold`` (the ``hold``-th request that is no summary, counted
    from 1) stops right after the ``after``-th function call item it completes, until
    :attr:`release` is set or the gateway closes it; :attr:`held` is set then (and
    :attr:`held_closed` once the gateway closed it).

    With ``hold_switch``, the turn held is the first whose input holds a ``Compact`` summary
    (the turn that switches to the compacted context), whatever its number. Model turn
    ``silent`` produces no output at all, until the gateway closes it (then
    :attr:`silenced` is set). Summary requests that arrive once ``hold_summaries_from`` turns
    were requested are held before any output (set :attr:`summary_held`), until the gateway
    closes them: the first ``summaries_held`` of them (None: all).
    """

    def __init__(
        self,
        scenario: Any = CODING,
        *,
        hold: int | None = None,
        after: int = 1,
        silent: int | None = None,
        hold_switch: bool = False,
        hold_summaries_from: int | None = None,
        summaries_held: int | None = None,
    ) -> None:
        super().__init__(SimBackend(scenario, "zero"))
        self.hold = hold
        self.after = after
        self.silent = silent
        self.hold_switch = hold_switch
        self.hold_summaries_from = hold_summaries_from
        self.summaries_held = summaries_held
        self.turns = 0
        self.summaries = 0
        self.held = asyncio.Event()
        self.held_closed = asyncio.Event()
        self.silenced = asyncio.Event()
        self.summary_held = asyncio.Event()

    async def generate(self, session: Any, request: Any, out: Any) -> AsyncIterator[Any]:
        calls = 0
        if is_summary_request(request):
            self.summaries += 1
            start, left = self.hold_summaries_from, self.summaries_held
            if start is not None and self.turns >= start and left != 0:
                if left is not None:
                    self.summaries_held = left - 1
                self.summary_held.set()
                await asyncio.Event().wait()  # until the gateway closes the generation
        else:
            self.turns += 1
            if self.turns == self.silent:
                try:
                    await asyncio.Event().wait()
                finally:
                    self.silenced.set()
            if self.turns == self.hold or (self.hold_switch and _compacted(request)):
                self.hold_switch = False
                self.hold = self.turns
                calls = self.after
        async with contextlib.aclosing(session.generate(request, out)) as chunks:
            async for events in chunks:
                yield events
                if calls and any(_call_done(event) for event in events):
                    calls -= 1
                    if not calls:
                        self.held.set()
                        try:
                            await self.release.wait()
                        finally:
                            if not self.release.is_set():
                                self.held_closed.set()


def _compacted(request: Any) -> bool:
    """Whether a model request's input holds a summary (``Compact`` switched to it)."""
    return any(
        isinstance(item, Message) and is_summary_text(item.text) for item in request.context.items
    )


def _call_done(event: Any) -> bool:
    return isinstance(event, OutputItemDone) and isinstance(event.item, FunctionCall)


def dead_port() -> int:
    """A loopback port nothing listens on: a proxy pointed there hangs up on every client."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (checked every few ms), at most :data:`TIMEOUT`."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


def coding_tools(
    log: ExecutionLog, *, cache: bool = True, unread: asyncio.Event | None = None
) -> list[Tool]:
    """``coding-session``'s tools; with ``unread``, reading :data:`UNREAD` (which only a
    speculation does) waits for it: a speculation still running whatever the test does."""
    tools = scenario_tools(CODING, time_scale=TIME_SCALE, log=log, cache=cache)
    if unread is not None:
        read = next(tool for tool in tools if tool.name == "read_file")
        body = read.fn

        async def gated(**args: Any) -> Any:
            if args.get("path") == UNREAD:
                await unread.wait()
            return await body(**args)

        read.fn = gated
    return tools


def agent_with(tools: list[Tool], policies: Sequence[Policy], **options: Any) -> Agent:
    return Agent(
        MODEL,
        CODING.instructions,
        tools,
        policies=list(policies),
        max_turns=len(CODING.turns) + 5,
        **options,
    )


def outputs(result: RunResult) -> list[str]:
    """The tool results the model got, in order."""
    return [item.text for item in result.items if isinstance(item, FunctionCallOutput)]


async def reference(gateway: GatewayServer) -> list[str]:
    """The tool results of a fault-free run without policies."""
    log = ExecutionLog()
    agent = agent_with(coding_tools(log, cache=False), [])
    async with connect(gateway.base_url) as client:
        result = await Runner.run(agent, CODING.task, client=client)
    assert check_run(CODING, result, log) == ()
    return outputs(result)


async def play_coding(
    backend: Any, agent: Agent, then: Callable[[], Awaitable[Any]] | None = None
) -> RunResult:
    """``agent`` plays the coding scenario over a gateway of its own on ``backend``; ``then``
    is awaited before the gateway stops (what the test waits to see happen there)."""
    async with GatewayServer(backend) as server, connect(server.base_url) as client:
        result = await asyncio.wait_for(Runner.run(agent, CODING.task, client=client), TIMEOUT)
        if then is not None:
            await asyncio.wait_for(then(), TIMEOUT)
    return result


def assert_unchanged(result: RunResult, log: ExecutionLog, expected: list[str]) -> None:
    """Nothing changed for the model: the run is complete, each write ran once, and every
    tool result is what a fault-free run without policies gave it."""
    assert check_run(CODING, result, log) == ()
    assert writes_once(log)
    assert outputs(result) == expected


def writes_once(log: ExecutionLog) -> bool:
    """Every write of the script executed, each exactly once."""
    scripted = {c.arguments for t in CODING.turns for c in t.calls if c.name == WRITE}
    ran = [n for (name, _), n in log.by_arguments().items() if name == WRITE]
    return len(ran) == len(scripted) and set(ran) == {1}


class Observed:
    """A client that hands every event on unchanged, and counts the function calls whose
    items were complete: the runner has taken (validated, admitted) each one by then."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.calls = 0

    async def stream_to(self, request: Any, on_event: Any, *, skip: Any = ()) -> None:
        def forward(event: Any) -> None:
            on_event(event)
            if _call_done(event):
                self.calls += 1

        await self.inner.stream_to(request, forward, skip=skip)

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    async def close(self) -> None:
        await self.inner.close()


def calls_before(turn: int) -> int:
    """The function calls the script makes before model turn ``turn`` (from 1)."""
    return sum(len(t.calls) for t in CODING.turns[: turn - 1])


class Streamed:
    """``Runner.run_stream`` in a task of its own: its events as they come, and its result."""

    def __init__(self, agent: Agent, client: Transport, **options: Any) -> None:
        self.events: list[RunEvent] = []
        self.result: RunResult | None = None
        self.task = asyncio.create_task(self._consume(agent, client, options))

    async def _consume(self, agent: Agent, client: Transport, options: Any) -> RunResult:
        async for event in Runner.run_stream(agent, CODING.task, client=client, **options):
            self.events.append(event)
            if isinstance(event, RunFinished):
                self.result = event.result
        assert self.result is not None
        return self.result

    async def finished_call(self, turn: int) -> None:
        """Wait until a call of ``turn`` has its result (reported to the run)."""
        await until(
            lambda: any(
                isinstance(event, ToolCallFinished) and event.turn == turn for event in self.events
            )
        )


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks a run started that are still pending: speculations, summaries, tool calls."""
    names = {"ToolExecutor._prefetch", "Asides._ended", "_TurnCalls._execute"}
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") in names
    ]


async def stopped_with_the_run() -> None:
    """Everything a run started and left pending when it returned (or raised) was cancelled
    then, and ends without anyone awaiting it."""
    left = leftover_tasks()
    assert all(task.cancelling() for task in left), left
    if left:
        await asyncio.wait(left, timeout=TIMEOUT)
    assert not leftover_tasks()


# -- a cut in the middle of a turn, with every policy on --------------------------------------


def cut_at_turn_14() -> tuple[HeldTurns, ExecutionLog, Compact, Agent]:
    """Every policy on, turn 14 and the summaries from turn 13 held at the gateway, and a
    speculated read (of :data:`UNREAD`) that never ends by itself: the gateway's backend,
    the execution log, the compaction policy and the agent."""
    unread = asyncio.Event()
    log = ExecutionLog()
    compact = Compact(threshold_tokens=3000, summary_tokens=64)
    agent = agent_with(coding_tools(log, unread=unread), [Speculate(), compact])
    return HeldTurns(hold=14, hold_summaries_from=13), log, compact, agent


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_a_turn_cut_mid_stream_with_every_policy_on_changes_nothing_for_the_model(
    gateway: GatewayServer, transport: Literal["websocket", "http"]
) -> None:
    """Turn 14 reads ``cli.py``, speculated after turn 13's grep: the turn is held right after
    that call, the connections are reset, and the gateway then hangs up on two reconnects
    before it serves again. A speculation runs all along (of a file never read), a summary is
    held at the cut, cached results exist. The run completes, each write runs once, the model
    gets what a fault-free run without policies gives it, and nothing of the run is left
    running."""
    expected = await reference(gateway)
    backend, log, compact, agent = cut_at_turn_14()
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1", transport=transport) as client,
    ):
        run = Streamed(agent, client)
        async with asyncio.timeout(TIMEOUT):
            await backend.held.wait()
            await backend.summary_held.wait()
        await run.finished_call(14)
        assert any(t.get_coro().__qualname__ == "ToolExecutor._prefetch" for t in leftover_tasks())
        proxy.target_port = dead_port()  # the gateway hangs up before replying
        hung_up = proxy.connections + 2
        assert proxy.inject(Fault.RESET) >= 1
        await until(lambda: proxy.connections >= hung_up)
        proxy.target_port = server.port
        result = await asyncio.wait_for(run.task, TIMEOUT)
        await stopped_with_the_run()

    assert_unchanged(result, log, expected)
    step = result.steps[13]
    assert step.attempts == 2
    assert [(tool.reused, tool.cache) for tool in step.tools] == [
        (True, "speculated"),
        (False, "hit"),
    ]
    # The speculated read ran once, before the model asked for it, and served it once.
    assert log.by_arguments()[("read_file", CLI)] == 1
    used = [s for s in result.speculations if s.arguments == CLI]
    assert len(used) == 1 and used[0].used_ns is not None
    # Every record is final when the run returns.
    assert all(
        s.finished_ns is not None and s.finished_ns <= result.wall_ns for s in result.speculations
    )
    (never,) = [s for s in result.speculations if UNREAD in s.arguments]
    assert never.error == "stopped: the run ended" and never.used_ns is None
    assert all(aside.response_done_ns is not None for aside in result.asides)
    cut = [aside for aside in result.asides if aside.error and "cancelled" not in aside.error]
    assert len(cut) == 1 and cut[0].turn in (13, 14)
    assert result.asides[-1].error == "cancelled: the run ended first"
    assert compact.compactions >= 1


async def cut_turn(
    backend: HeldTurns, proxy: FaultProxy, run: Streamed, turn: int, *, kind: Fault = Fault.RESET
) -> None:
    """Once ``turn`` is held and one of its calls has its result, cut every connection."""
    await asyncio.wait_for(backend.held.wait(), TIMEOUT)
    await run.finished_call(turn)
    assert proxy.inject(kind) >= 1


async def test_a_cache_hit_reused_after_a_cut_is_still_a_hit() -> None:
    """Turn 10 reads two files the cache holds. Cut after the first hit, the turn goes out
    again and reuses it: its record still says it was a hit (the run's counts of avoided work,
    and ``check_run``, read the records), and nothing ran for it."""
    backend = HeldTurns(hold=10)
    log = ExecutionLog()
    agent = agent_with(coding_tools(log), [])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as client,
    ):
        run = Streamed(agent, client)
        await cut_turn(backend, proxy, run, 10)
        result = await asyncio.wait_for(run.task, TIMEOUT)
    assert check_run(CODING, result, log) == ()
    step = result.steps[9]
    assert step.attempts == 2
    assert [(tool.reused, tool.cache) for tool in step.tools] == [(True, "hit"), (False, "hit")]
    hits = sum(tool.cache == "hit" for step in result.steps for tool in step.tools)
    assert log.count() == CODING.total_calls - hits


async def test_a_write_sent_again_after_a_cut_still_has_its_follow_ups_speculated(
    gateway: GatewayServer,
) -> None:
    """Turn 21 patches ``test_stats.py``, and the patch predicts the test run the model makes
    at turn 22. The turn is cut right after the patch's item (a write: held, never run from
    the cut attempt), sent again, and the patch runs once: its prediction is fetched while
    turn 22 is generated, as without the cut, and the model's test run takes it. The client
    learns the calls that followed each other as from a run without the cut (the patch made
    again does not follow itself)."""
    async with connect(gateway.base_url) as uncut:
        agent = agent_with(coding_tools(ExecutionLog()), [Speculate()])
        await asyncio.wait_for(Runner.run(agent, CODING.task, client=uncut), TIMEOUT)
        learned = transitions_of(uncut).as_dict()
    backend = HeldTurns(hold=21)
    log = ExecutionLog()
    agent = agent_with(coding_tools(log), [Speculate()])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as inner,
    ):
        client = Observed(inner)
        run = Streamed(agent, client)
        await asyncio.wait_for(backend.held.wait(), TIMEOUT)
        await until(lambda: client.calls > calls_before(21))  # the patch was admitted
        assert proxy.inject(Fault.RESET) == 1
        result = await asyncio.wait_for(run.task, TIMEOUT)
    assert check_run(CODING, result, log) == ()
    assert writes_once(log)
    assert result.steps[20].attempts == 2
    assert [(tool.name, tool.cache) for tool in result.steps[21].tools] == [
        ("run_tests", "speculated")
    ]
    assert transitions_of(client).as_dict() == learned


async def test_a_write_run_before_a_cut_is_reused_and_no_read_from_before_it_is_served(
    gateway: GatewayServer,
) -> None:
    """With writes dispatched eagerly, turn 7's first patch (of ``models.py``, read and cached
    at turn 3) runs before the turn is cut. The turn is sent again over a new connection: the
    patch is reused, not run again, and its record still says what it invalidated; the second
    patch runs once; turn 8's reads of the patched files are executed again, never answered
    with what the cache or a speculation held from before the patch."""
    expected = await reference(gateway)
    backend = HeldTurns(hold=7)
    log = ExecutionLog()
    agent = agent_with(coding_tools(log), [Speculate()], eager_writes=True)
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as client,
    ):
        run = Streamed(agent, client)
        await cut_turn(backend, proxy, run, 7, kind=Fault.DROP)
        result = await asyncio.wait_for(run.task, TIMEOUT)
    assert_unchanged(result, log, expected)
    patches = result.steps[6]
    assert patches.attempts == 2
    assert [(tool.reused, tool.invalidated > 0) for tool in patches.tools] == [
        (True, True),
        (False, True),
    ]
    rereads = result.steps[7].tools
    assert [(tool.name, tool.cache) for tool in rereads] == [("read_file", "miss")] * 2


async def test_a_run_that_fails_with_policies_on_is_continued_and_nothing_leaks(
    gateway: GatewayServer,
) -> None:
    """Turn 14 is cut after its speculated read of ``cli.py`` finished, and the gateway then
    stays away longer than ``reconnect_timeout``: the run fails, with a speculation and a
    summary running. Both are stopped with it. Continued from its ``PartialRun`` once the
    gateway is back, the run completes: the finished read is reused (it ran once), no write
    runs twice, the continuation holds nothing the failed run cached or prefetched, and the
    model gets, over both runs, what one fault-free run without policies gives it."""
    expected = await reference(gateway)
    backend, log, _, agent = cut_at_turn_14()
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1", reconnect_timeout=0.3) as client,
    ):
        run = Streamed(agent, client)
        async with asyncio.timeout(TIMEOUT):
            await backend.summary_held.wait()
        proxy.target_port = dead_port()
        await cut_turn(backend, proxy, run, 14)
        with pytest.raises(TransportError) as failed:
            await asyncio.wait_for(run.task, TIMEOUT)
        assert failed.value.code == "connect_failed"
        await stopped_with_the_run()
        partial = failed.value.partial
        assert isinstance(partial, PartialRun) and partial.turns == 13
        assert [(call.name, call.arguments) for call in partial.finished] == [("read_file", CLI)]
        # What the failed run spent on its summaries is in its usage.
        turns = sum(step.usage.input_tokens for step in partial.steps if step.usage)
        assert partial.usage.input_tokens > turns
        spent = [record.usage for record in (*partial.steps, *partial.asides) if record.usage]
        assert partial.usage.input_tokens == sum(usage.input_tokens for usage in spent)
        # Every record is final: the summary cut with the connection says why it ended, and
        # the speculation still running was stopped when the run failed.
        assert all(aside.response_done_ns is not None for aside in partial.asides)
        assert partial.asides[-1].error == "the WebSocket closed during the turn"
        assert all(s.finished_ns is not None for s in partial.speculations)
        (never,) = [s for s in partial.speculations if UNREAD in s.arguments]
        assert never.error == "stopped: the run ended"

        proxy.target_port = server.port
        result = await Runner.run(agent, CODING.task, client=client, previous=partial)

    assert writes_once(log)
    assert log.by_arguments()[("read_file", CLI)] == 1
    assert outputs(result) == expected
    assert result.final_output == CODING.turns[-1].text
    assert partial.turns + result.turns == len(CODING.turns)
    # The interrupted turn again: the finished read reused, the other one read afresh (the
    # failed run's cached and speculated results died with it).
    assert [(tool.reused, tool.cache) for tool in result.steps[0].tools] == [
        (True, None),
        (False, "miss"),
    ]
    assert all(s.started_ns >= 0 and s.finished_ns is not None for s in result.speculations)


# -- summaries that fail or hang ---------------------------------------------------------------


def gate_first(
    tools: list[Tool], name: str, path: str, gate: asyncio.Event, started: asyncio.Event
) -> list[str]:
    """The first execution of tool ``name`` on ``path`` sets ``started``, waits for ``gate``.
    Returns the list of that tool's executions started on ``path`` (finished or not)."""
    tool = next(tool for tool in tools if tool.name == name)
    body = tool.fn
    starts: list[str] = []

    async def gated(**args: Any) -> Any:
        if args.get("path") == path:
            starts.append(path)
            if len(starts) == 1:
                started.set()
                await gate.wait()
        return await body(**args)

    tool.fn = gated
    return starts


async def test_a_summary_cut_at_the_network_level_is_recorded_and_the_turns_go_on(
    gateway: GatewayServer,
) -> None:
    """A summary is on its way (the gateway holds it) while turn 9's test run goes on, and no
    turn is in flight: the connection is reset then. The summary fails, and its record says
    why; no turn is disturbed (each goes out once), the next one reconnects, the policy tries
    again at a later boundary and compacts, and the model gets what it gets without policies."""
    expected = await reference(gateway)
    backend = HeldTurns(hold_summaries_from=8, summaries_held=1)
    log = ExecutionLog()
    tools = coding_tools(log)
    gate, testing = asyncio.Event(), asyncio.Event()
    gate_first(tools, "run_tests", "tests/test_views.py", gate, testing)
    compact = Compact(threshold_tokens=3000, summary_tokens=64)
    agent = agent_with(tools, [Speculate(), compact])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as client,
    ):
        run = Streamed(agent, client)
        async with asyncio.timeout(TIMEOUT):
            await backend.summary_held.wait()
            await testing.wait()
        assert proxy.inject(Fault.RESET) == 1
        await until(lambda: proxy.active == 0)
        gate.set()
        result = await asyncio.wait_for(run.task, TIMEOUT)
        assert client.stats.reconnects == 1
    assert check_run(CODING, result, log) == ()
    assert outputs(result) == expected
    assert [step.attempts for step in result.steps] == [1] * len(CODING.turns)
    (cut,) = [aside for aside in result.asides if aside.error is not None]
    assert cut.error == "the WebSocket closed during the turn" and cut.usage is None
    assert cut.response_done_ns is not None
    later = result.asides[result.asides.index(cut) + 1 :]
    assert later and all(aside.usage is not None for aside in later)
    assert compact.failed == 1 and compact.compactions >= 2


async def test_a_summary_that_never_comes_back_holds_nothing_up(gateway: GatewayServer) -> None:
    """The gateway accepts every summary request and never answers it (no timeout: the policy
    waits as long as the run lasts). The turns never wait for it: the run completes, each
    turn sent once, with what the model gets without policies; the summary is stopped when
    the run returns, and its record says so."""
    expected = await reference(gateway)
    backend = HeldTurns(hold_summaries_from=0)
    log = ExecutionLog()
    compact = Compact(threshold_tokens=3000, summary_tokens=64, summary_timeout=None)
    agent = agent_with(coding_tools(log), [Speculate(), compact])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        connect(server.base_url) as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            result = await Runner.run(agent, CODING.task, client=client)
        # Back in this task at once: the summary's task was cancelled, and has not ended yet.
        assert any(task.get_coro().__qualname__ == "Asides._ended" for task in leftover_tasks())
        await stopped_with_the_run()
    assert check_run(CODING, result, log) == ()
    assert outputs(result) == expected
    assert [step.attempts for step in result.steps] == [1] * len(CODING.turns)
    assert backend.summaries == compact.summaries == 1 and compact.compactions == 0
    (aside,) = result.asides
    assert aside.error == "cancelled: the run ended first" and aside.usage is None
    assert aside.response_done_ns == result.wall_ns


# -- with the policies that send a turn again ------------------------------------------------


def took_cli_once(result: RunResult, log: ExecutionLog, step: int = 13) -> None:
    """Turn 14's speculated read of ``cli.py`` ran once, served the model once, and its record
    says so (reused or not, depending on whether an attempt of the turn failed)."""
    assert log.by_arguments()[("read_file", CLI)] == 1
    (used,) = [s for s in result.speculations if s.arguments == CLI]
    assert used.used_ns is not None
    assert [tool.cache for tool in result.steps[step].tools] == ["speculated", "hit"]


@pytest.mark.parametrize("policy", ["retry", "hedge"])
async def test_a_stalled_turn_sent_again_by_a_policy_takes_its_speculation_once(
    gateway: GatewayServer, policy: str
) -> None:
    """Turn 14 stalls for good right after its speculated read (the gateway holds it): the
    stall is noticed (``RetryOnTimeout`` with ``stall_timeout``, or ``Hedge(stall=...)``), the
    turn goes out again on a fresh lane and reuses the read. The speculation served it once,
    and the run gives the model what a fault-free run without policies gives it."""
    expected = await reference(gateway)
    backend = HeldTurns(hold=14)
    log = ExecutionLog()
    options: dict[str, Any] = {}
    resend: Policy
    if policy == "retry":
        resend, options["stall_timeout"] = RetryOnTimeout(), 0.3
    else:
        resend = Hedge(stall=0.3, budget=1.0, min_samples=1000)  # stall re-sends only
    agent = agent_with(coding_tools(log), [resend, Speculate()], **options)
    # The stalled response is given up at the gateway too (cancelled on its lane).
    result = await play_coding(backend, agent, then=backend.held_closed.wait)
    assert_unchanged(result, log, expected)
    assert result.steps[13].attempts == 2
    assert [tool.reused for tool in result.steps[13].tools] == [True, False]
    took_cli_once(result, log)


async def test_a_hedge_that_wins_over_a_silent_attempt_dispatches_each_call_once(
    gateway: GatewayServer,
) -> None:
    """Turn 14's request gets no output at all (the gateway holds it): the hedge goes out,
    produces output first and wins, and the silent attempt is cancelled at the gateway. Only
    the winner's calls are dispatched: the speculated read serves it once, every write runs
    once, and the model gets what a fault-free run without policies gives it."""
    expected = await reference(gateway)
    backend = HeldTurns(silent=14)
    log = ExecutionLog()
    hedge = Hedge(delay=0.05, budget=1.0)
    agent = agent_with(coding_tools(log), [hedge, Speculate()])
    result = await play_coding(backend, agent, then=backend.silenced.wait)
    assert_unchanged(result, log, expected)
    assert hedge.hedges >= 1 and hedge.wins >= 1
    assert result.steps[13].attempts == 1
    took_cli_once(result, log)


# -- model faults ----------------------------------------------------------------------------

#: The sim fails about a third of its responses: rate limited (to be retried after 10 ms),
#: a server error before any output, or a stream cut after some output. Summaries too.
FLAKY = get_profile("zero").override(
    rate_limit_probability=0.1,
    server_error_probability=0.1,
    drop_probability=0.15,
    retry_after_s=0.01,
)


async def test_model_faults_with_every_policy_on_change_nothing_for_the_model(
    gateway: GatewayServer,
) -> None:
    """The model fails often (rate limits, server errors, streams cut mid-response), turns
    and summaries alike. Every failed turn is sent again, reusing the calls it started: the
    run completes, each write runs once, and the model gets what a fault-free run without
    policies gives it; the summaries that failed say so in their records."""
    expected = await reference(gateway)
    log = ExecutionLog()
    compact = Compact(threshold_tokens=3000, summary_tokens=64)
    agent = agent_with(coding_tools(log), [Speculate(), compact], max_attempts=10)
    result = await play_coding(SimBackend(CODING, FLAKY, seed=3), agent)
    assert_unchanged(result, log, expected)
    assert sum(step.attempts for step in result.steps) > len(result.steps)
    # Every summary that brought nothing back says why, a failed response included.
    assert compact.failed >= 1
    for aside in result.asides:
        assert aside.response_done_ns is not None
        assert aside.usage is not None or aside.error is not None, aside
    failed = [aside for aside in result.asides if aside.error and "cancelled" not in aside.error]
    assert all(aside.error.startswith("the model failed: ") for aside in failed)
    assert len(failed) >= compact.failed


async def test_the_turn_that_switches_to_a_compacted_context_cut_mid_stream_is_sent_again(
    gateway: GatewayServer,
) -> None:
    """The first turn sent with a summary in place of the older conversation (a fresh chain,
    the whole compacted context) is cut right after its first call: the attempt that goes out
    again sends the same compacted context, reuses what had started, and the run gives the
    model what a fault-free run without policies gives it."""
    expected = await reference(gateway)
    backend = HeldTurns(hold_switch=True)
    log = ExecutionLog()
    compact = Compact(threshold_tokens=3000, summary_tokens=64)
    agent = agent_with(coding_tools(log), [Speculate(), compact])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as inner,
    ):
        client = RecordingTransport(Observed(inner))
        run = Streamed(agent, client)
        await asyncio.wait_for(backend.held.wait(), TIMEOUT)
        turn = backend.hold
        assert turn is not None
        await until(lambda: client.inner.calls > calls_before(turn))
        assert proxy.inject(Fault.RESET) == 1
        result = await asyncio.wait_for(run.task, TIMEOUT)
    assert_unchanged(result, log, expected)
    assert result.steps[turn - 1].attempts == 2
    assert result.steps[turn - 1].tools[0].reused or result.steps[turn - 1].tools[0].name == WRITE
    # Both attempts sent the same compacted context, whole.
    sent = [request for request in client.sent if "metadata" not in request.settings]
    first, again = sent[turn - 1], sent[turn]
    assert first.history is again.history and again.previous_response_id is None
    assert compact.compactions >= 1


async def test_a_call_waiting_on_a_speculation_when_its_turn_is_cut_takes_it_once() -> None:
    """Turn 14's read of ``cli.py`` joins its speculation, still running (the tool waits), and
    the turn is cut then. The turn goes out again and reuses the waiting call: when the
    speculation comes, it serves that call alone, and the file is read once."""
    backend = HeldTurns(hold=14)
    log = ExecutionLog()
    tools = coding_tools(log)
    gate, reading = asyncio.Event(), asyncio.Event()
    starts = gate_first(tools, "read_file", "src/shortlinks/cli.py", gate, reading)
    agent = agent_with(tools, [Speculate()])
    async with (
        GatewayServer(backend) as server,  # type: ignore[arg-type]
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(f"{proxy.url}/v1") as inner,
    ):
        client = Observed(inner)
        run = Streamed(agent, client)
        async with asyncio.timeout(TIMEOUT):
            await reading.wait()  # the speculation started, and waits
            await backend.held.wait()
        await until(lambda: client.calls > calls_before(14))
        await asyncio.sleep(0)  # the call's task takes its first step: it joins
        assert proxy.inject(Fault.RESET) == 1
        gate.set()
        result = await asyncio.wait_for(run.task, TIMEOUT)
    assert check_run(CODING, result, log) == ()
    assert writes_once(log)
    assert starts == ["src/shortlinks/cli.py"]
    assert result.steps[13].attempts == 2
    assert [(tool.reused, tool.cache) for tool in result.steps[13].tools] == [
        (True, "speculated"),
        (False, "hit"),
    ]
    took_cli_once(result, log)
