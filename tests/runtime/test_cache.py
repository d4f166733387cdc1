"""The tool-result cache: hits, single flight, invalidation by writes, and losslessness.

A scripted transport plays the model's turns; the tools keep a versioned store, so a result
read before a write differs from one read after it: a stale hit would show in what the model
is sent next. Every test compares, where it matters, with the same run without the cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections.abc import Collection
from typing import Any

import pytest
from pydantic import BaseModel

from hotloop.runtime import Agent, RunContext, Runner, RunResult, Tool, tool
from hotloop.runtime.cache import Cache, MemoryStore, RunResults
from hotloop.runtime.tools import ToolDefinitionError
from hotloop.trace.spans import spans_from_result, steps_from_spans
from hotloop.trace.timeline import timeline_from_steps
from hotloop.transport import ModelRequest, OnEvent
from hotloop.wire import codec
from hotloop.wire.items import FunctionCallOutput, Message
from support import ScriptedTransport, VersionedFiles, answer_events, turn_events

MODEL = "scripted"


class Where(BaseModel):
    """A structured argument: not plain JSON once validated."""

    path: str


class Files(VersionedFiles):
    """Versioned files, cached reads and a cached ``grep`` over them, and a ``shell`` that
    declares nothing (it may touch everything); ``runs`` logs every execution."""

    def __init__(self, *, cache: bool | Cache = True, slow: float = 0.0) -> None:
        super().__init__(cache=cache, slow=slow)
        files = self

        @tool(reads=["repo"], cache=cache)
        async def grep(pattern: str) -> str:
            """Search every file.

            Args:
                pattern: What to find.
            """
            files.runs.append(f"grep {pattern}")
            return f"{pattern}: " + ", ".join(
                f"{k} v{v}" for k, v in sorted(files.versions.items())
            )

        @tool
        async def shell(command: str) -> str:
            """Run anything (no declared effects: it may touch everything).

            Args:
                command: The command.
            """
            files.runs.append(f"shell {command}")
            return "ok"

        self.tools = [self.read, grep, self.write, shell]


Turns = list[list[tuple[str, dict[str, Any]]]]


async def play(
    turns: Turns, files: Files, client: Any = None, *, burst: bool = False
) -> tuple[Any, ScriptedTransport]:
    scripted = ScriptedTransport(
        [turn_events(f"r{index}", calls) for index, calls in enumerate(turns)]
        + [answer_events(f"r{len(turns)}")],
        burst=burst,
    )
    agent = Agent(MODEL, tools=files.tools)
    result = await Runner.run(agent, "go", client=client or scripted)
    return result, scripted


def inputs(scripted: ScriptedTransport) -> list[bytes]:
    """What the model was sent each turn, byte for byte."""
    return [codec.dumps([item.to_dict() for item in r.history]) for r in scripted.requests]


def cache_marks(result: Any) -> list[tuple[str, str | None]]:
    return [(tool.name, tool.cache) for step in result.steps for tool in step.tools]


async def same_as_uncached(turns: Turns, *, burst: bool = False) -> tuple[Any, Files]:
    """Play ``turns`` with and without the cache; the model's inputs must be identical."""
    cached, plain = Files(), Files(cache=False)
    result, scripted = await play(turns, cached, burst=burst)
    _, reference = await play(turns, plain, burst=burst)
    assert inputs(scripted) == inputs(reference)
    return result, cached


async def test_a_repeated_read_is_answered_from_the_cache() -> None:
    turns: Turns = [[("read", {"path": "a"})], [("read", {"path": "a"})], [("read", {"path": "b"})]]
    result, files = await same_as_uncached(turns)
    assert files.runs == ["read a", "read b"]
    assert cache_marks(result) == [("read", "miss"), ("read", "hit"), ("read", "miss")]


async def test_arguments_are_canonical() -> None:
    runs: list[str] = []

    @tool(pure=True, cache=True)
    async def search(pattern: str, limit: int) -> str:
        """Search.

        Args:
            pattern: What to find.
            limit: How many.
        """
        runs.append(pattern)
        return f"{pattern} {limit}"

    # The same call with its keys in another order: one key.
    scripted = ScriptedTransport(
        [
            turn_events("r0", [("search", {"pattern": "x", "limit": 2})]),
            turn_events("r1", [("search", {"limit": 2, "pattern": "x"})]),
            answer_events("r2"),
        ]
    )
    result = await Runner.run(Agent(MODEL, tools=[search]), "go", client=scripted)
    assert runs == ["x"]
    assert cache_marks(result) == [("search", "miss"), ("search", "hit")]


async def test_a_write_invalidates_what_it_overlaps_and_the_reread_sees_it() -> None:
    turns: Turns = [
        [("read", {"path": "a"}), ("read", {"path": "b"})],
        [("write", {"path": "a"})],
        [("read", {"path": "a"}), ("read", {"path": "b"})],
    ]
    result, files = await same_as_uncached(turns)
    assert files.runs == ["read a", "read b", "write a", "read a"]  # b is still valid
    writes = [tool for step in result.steps for tool in step.tools if tool.name == "write"]
    assert writes[0].invalidated == 1  # read a, dropped when the write was admitted
    assert cache_marks(result)[-2:] == [("read", "miss"), ("read", "hit")]


async def test_resources_are_hierarchical() -> None:
    # grep reads all of repo: a write to repo/a drops it; a read of repo/b stays.
    turns: Turns = [
        [("grep", {"pattern": "x"}), ("read", {"path": "b"})],
        [("write", {"path": "a"})],
        [("grep", {"pattern": "x"}), ("read", {"path": "b"})],
    ]
    _, files = await same_as_uncached(turns)
    assert files.runs == ["grep x", "read b", "write a", "grep x"]


async def test_a_tool_with_no_declared_effects_invalidates_everything() -> None:
    turns: Turns = [
        [("read", {"path": "a"})],
        [("shell", {"command": "make"})],
        [("read", {"path": "a"})],
    ]
    _, files = await same_as_uncached(turns)
    assert files.runs == ["read a", "shell make", "read a"]


async def test_a_read_running_across_a_write_is_never_stored() -> None:
    """In one response: a slow read of a, then a write to a. The read was admitted first, so it
    runs (and the write waits for it); it finishes after the write was admitted, so its
    result — from before the write — is not kept, and the next turn reads again."""
    turns: Turns = [
        [("read", {"path": "a"}), ("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    cached, plain = Files(slow=0.01), Files(cache=False, slow=0.01)
    result, scripted = await play(turns, cached)
    _, reference = await play(turns, plain)
    assert inputs(scripted) == inputs(reference)
    assert cached.runs == ["read a", "write a", "read a"]
    assert cache_marks(result)[-1] == ("read", "miss")


async def test_identical_calls_in_flight_run_once() -> None:
    turns: Turns = [[("read", {"path": "a"}), ("read", {"path": "a"}), ("read", {"path": "a"})]]
    cached, plain = Files(slow=0.01), Files(cache=False, slow=0.01)
    result, scripted = await play(turns, cached)
    _, reference = await play(turns, plain)
    assert inputs(scripted) == inputs(reference)
    assert cached.runs == ["read a"]
    assert cache_marks(result) == [("read", "miss"), ("read", "coalesced"), ("read", "coalesced")]


async def test_a_write_admitted_between_two_identical_reads_keeps_them_apart() -> None:
    """read a, write a, read a in one response: the second read waits for the write and must
    not join the first read, which started before it."""
    turns: Turns = [[("read", {"path": "a"}), ("write", {"path": "a"}), ("read", {"path": "a"})]]
    cached, plain = Files(slow=0.01), Files(cache=False, slow=0.01)
    result, scripted = await play(turns, cached)
    _, reference = await play(turns, plain)
    assert inputs(scripted) == inputs(reference)
    assert cached.runs == ["read a", "write a", "read a"]
    assert [mark for _, mark in cache_marks(result)] == ["miss", None, "miss"]


async def test_errors_are_not_cached() -> None:
    failures: list[int] = []

    @tool(pure=True, cache=True)
    async def flaky(n: int) -> str:
        """Fails the first time.

        Args:
            n: A number.
        """
        failures.append(n)
        if len(failures) == 1:
            raise RuntimeError("not yet")
        return "fine"

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("flaky", {"n": 1})]),
            turn_events("r1", [("flaky", {"n": 1})]),
            answer_events("r2"),
        ]
    )
    await Runner.run(Agent(MODEL, tools=[flaky]), "go", client=scripted)
    assert failures == [1, 1]


async def test_the_client_scope_shares_results_across_runs_and_writes_reach_them() -> None:
    files = Files(cache=Cache(scope="client"))
    shared = ScriptedTransport([])

    async def run(calls: list[tuple[str, dict[str, Any]]]) -> None:
        shared.turns = [turn_events("r0", calls), answer_events("r1")]
        await Runner.run(Agent(MODEL, tools=files.tools), "go", client=shared)

    await run([("read", {"path": "a"})])
    await run([("read", {"path": "a"})])  # another run, the same client: a hit
    assert files.runs == ["read a"]
    await run([("write", {"path": "a"})])
    await run([("read", {"path": "a"})])
    assert files.runs == ["read a", "write a", "read a"]
    # Another client keeps its own results.
    other = ScriptedTransport([turn_events("r0", [("read", {"path": "a"})]), answer_events("r1")])
    await Runner.run(Agent(MODEL, tools=files.tools), "go", client=other)
    assert files.runs[-1] == "read a" and len(files.runs) == 4


class Lanes(ScriptedTransport):
    """One client for runs that overlap in time: each run's task names its own script."""

    def __init__(self) -> None:
        super().__init__([])
        self.lanes: dict[str, ScriptedTransport] = {}

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        task = request.history[0]
        assert isinstance(task, Message)
        await self.lanes[task.text].stream_to(request, on_event, skip=skip)


async def run_on(
    client: Lanes, task: str, tools: list[Tool], calls: list[tuple[str, dict[str, Any]]]
) -> RunResult:
    """A run of one turn of ``calls`` on the shared ``client``, its task ``task``."""
    client.lanes[task] = ScriptedTransport([turn_events("r0", calls), answer_events("r1")])
    return await Runner.run(Agent(MODEL, tools=tools), task, client=client)


def outputs(result: RunResult) -> list[str]:
    return [item.text for item in result.items if isinstance(item, FunctionCallOutput)]


async def test_a_read_in_another_run_after_a_write_was_admitted_is_fresh() -> None:
    """Two runs share the client's results. A write in one has changed a and is still
    running; a read of a in the other, made after the write was admitted, must not get the
    result cached before the write."""
    files = Files(cache=Cache(scope="client"))
    changed, release = asyncio.Event(), asyncio.Event()

    @tool(writes=["repo/{path}"])
    async def save(path: str) -> str:
        """Change a file, then take a while to return.

        Args:
            path: The file.
        """
        files.versions[path] = files.versions.get(path, 0) + 1
        changed.set()
        await release.wait()
        return "saved"

    tools = [files.read, save]
    client = Lanes()
    await run_on(client, "warm", tools, [("read", {"path": "a"})])
    saving = asyncio.create_task(run_on(client, "save", tools, [("save", {"path": "a"})]))
    await changed.wait()
    try:
        result = await run_on(client, "read", tools, [("read", {"path": "a"})])
    finally:
        release.set()
        await saving
    assert outputs(result) == ["a v1"]
    assert cache_marks(result) == [("read", "miss")]
    assert files.runs == ["read a", "read a"]


async def test_a_read_made_in_another_run_while_a_write_runs_is_dropped_when_it_finishes() -> None:
    """A read in another run, made while a write to what it reads runs and has not changed it
    yet, is cached; the write drops it when it finishes: a read after the write gets the new
    version."""
    files = Files(cache=Cache(scope="client"))
    started, go = asyncio.Event(), asyncio.Event()

    @tool(writes=["repo/{path}"])
    async def save(path: str) -> str:
        """Wait, then change a file.

        Args:
            path: The file.
        """
        started.set()
        await go.wait()
        files.versions[path] = files.versions.get(path, 0) + 1
        return "saved"

    tools = [files.read, save]
    client = Lanes()
    saving = asyncio.create_task(run_on(client, "save", tools, [("save", {"path": "a"})]))
    await started.wait()
    try:
        during = await run_on(client, "during", tools, [("read", {"path": "a"})])
    finally:
        go.set()
        await saving
    after = await run_on(client, "after", tools, [("read", {"path": "a"})])
    assert outputs(during) == ["a v0"] and outputs(after) == ["a v1"]
    assert cache_marks(after) == [("read", "miss")]
    assert files.runs == ["read a", "read a"]


async def test_a_read_running_across_another_runs_write_is_neither_joined_nor_kept() -> None:
    """Two runs' views of one client's results: a read runs in one, and the other admits a
    write to what it reads. An identical read after the write must not join the running one,
    and the running one's result, from before the write, is not kept; a write elsewhere
    changes nothing."""
    client = ScriptedTransport([])
    cache, key, reads = Cache(scope="client"), "read a", frozenset({"repo/a"})
    reading, writing = RunResults(client), RunResults(client)
    kind, _, since = reading.lookup(cache, key, reads)
    assert kind == "miss"  # it runs
    writing.invalidate(frozenset({"repo/b"}))
    assert writing.lookup(cache, key, reads)[0] == "coalesced"
    writing.invalidate(frozenset({"repo"}))
    kind, _, epoch = writing.lookup(cache, key, reads)
    assert kind == "miss"  # it runs by itself
    writing.finish(cache, key, reads, epoch, "a v1")
    reading.finish(cache, key, reads, since, "a v0")
    assert writing.lookup(cache, key, reads)[:2] == ("hit", "a v1")


async def test_a_read_started_before_another_runs_write_answers_only_its_own_joiners() -> None:
    """A read of a runs, and a twin joins it; another run admits a write to a, and its own
    read of a starts (a twin joins that one too). The first read finishing first gives its
    result (from before the write) to its own twin only: the read after the write and its
    twin get theirs, and nothing waits forever."""
    client = ScriptedTransport([])
    cache, key, reads = Cache(scope="client"), "read a", frozenset({"repo/a"})
    reading, writing = RunResults(client), RunResults(client)
    kind, _, before = reading.lookup(cache, key, reads)
    assert kind == "miss"
    kind, early, _ = reading.lookup(cache, key, reads)
    assert kind == "coalesced" and isinstance(early, asyncio.Future)
    writing.invalidate(frozenset({"repo/a"}))
    kind, _, after = writing.lookup(cache, key, reads)
    assert kind == "miss"
    kind, late, _ = writing.lookup(cache, key, reads)
    assert kind == "coalesced" and isinstance(late, asyncio.Future) and late is not early
    reading.finish(cache, key, reads, before, "a v0")
    assert early.done() and early.result() == "a v0"
    assert not late.done()
    writing.finish(cache, key, reads, after, "a v1")
    assert late.result() == "a v1"
    assert writing.lookup(cache, key, reads)[:2] == ("hit", "a v1")


async def test_a_write_reaches_a_store_of_its_own_the_run_never_looked_in() -> None:
    """A store given to ``Cache(store=...)`` is shared: a run whose tools only write still
    drops what it holds about what they write, and the next read is fresh."""
    shared = MemoryStore()
    files = Files(cache=Cache(store=shared))
    await play([[("read", {"path": "a"})]], files)
    assert len(shared) == 1

    @tool(writes=["repo/{path}"])
    async def save(path: str) -> str:
        """Change a file.

        Args:
            path: The file.
        """
        files.versions[path] = files.versions.get(path, 0) + 1
        return "saved"

    scripted = ScriptedTransport(
        [turn_events("r0", [("save", {"path": "a"})]), answer_events("r1")]
    )
    result = await Runner.run(Agent(MODEL, tools=[save]), "go", client=scripted)
    assert result.steps[0].tools[0].invalidated == 1 and len(shared) == 0
    reread, _ = await play([[("read", {"path": "a"})]], files)
    assert outputs(reread) == ["a v1"] and files.runs == ["read a", "read a"]
    shared.invalidate(None)  # every run's writes reach it until it is collected: leave it empty


async def test_every_argument_is_part_of_the_key() -> None:
    runs: list[tuple[str, int]] = []

    @tool(pure=True, cache=True)
    async def search(pattern: str, limit: int) -> str:
        """Search.

        Args:
            pattern: What to find.
            limit: How many.
        """
        runs.append((pattern, limit))
        return f"{pattern} {limit}"

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("search", {"pattern": "x", "limit": 2})]),
            turn_events("r1", [("search", {"pattern": "x", "limit": 3})]),
            turn_events("r2", [("search", {"limit": 2, "pattern": "y"})]),
            answer_events("r3"),
        ]
    )
    result = await Runner.run(Agent(MODEL, tools=[search]), "go", client=scripted)
    assert runs == [("x", 2), ("x", 3), ("y", 2)]
    assert [mark for _, mark in cache_marks(result)] == ["miss", "miss", "miss"]


def test_results_expire_after_their_ttl() -> None:
    store = MemoryStore()
    assert store.put("k", "out", frozenset({"repo"}), expires=10.0, since=store.epoch)
    assert store.get("k", 9.9) == "out"
    assert store.get("k", 10.0) is None and len(store) == 0
    with pytest.raises(ValueError, match="ttl"):
        Cache(ttl=0)


def test_a_store_refuses_results_read_before_an_overlapping_write() -> None:
    store = MemoryStore()
    since = store.epoch
    store.invalidate(frozenset({"repo/b"}))
    assert store.put("a", "old a", frozenset({"repo/a"}), None, since)  # b's write: unrelated
    store.invalidate(frozenset({"repo"}))
    assert not store.put("a2", "old a", frozenset({"repo/a"}), None, since)
    assert store.get("a", 0.0) is None  # dropped by the write to repo


def test_only_tools_that_cannot_write_may_be_cached() -> None:
    with pytest.raises(ToolDefinitionError, match="only a tool that cannot write"):

        @tool(writes=["repo/{path}"], cache=True)
        async def save(path: str) -> str:
            """Save."""
            return path

    with pytest.raises(ToolDefinitionError, match="only a tool that cannot write"):

        @tool(cache=True)
        async def anything(path: str) -> str:
            """No declared effects: it may write."""
            return path


async def test_traces_and_the_waterfall_mark_hits_and_invalidations() -> None:
    turns: Turns = [
        [("read", {"path": "a"})],
        [("read", {"path": "a"})],
        [("write", {"path": "a"})],
    ]
    result, _ = await play(turns, Files())
    steps = steps_from_spans(spans_from_result(result))
    marks = [(tool.name, tool.cache, tool.invalidated) for step in steps for tool in step.tools]
    assert marks == [("read", "miss", 0), ("read", "hit", 0), ("write", None, 1)]
    labels = [bar.label for bar in timeline_from_steps(result.steps) if bar.kind == "tool.run"]
    assert labels == ["", "cache hit", "invalidated 1"]


def test_stores_are_bounded_and_forget_old_invalidations_safely() -> None:
    store = MemoryStore(max_entries=2)
    for key in ("a", "b", "c"):
        store.put(key, key, frozenset({f"repo/{key}"}), None, store.epoch)
    assert len(store) == 2 and store.get("a", 0.0) is None  # the least recently used went
    since = store.epoch
    for _ in range(5000):  # more invalidations than a store remembers
        store.invalidate(frozenset({"elsewhere"}))
    # Whether one of the forgotten ones touched it cannot be told: the result is not kept.
    assert not store.put("d", "d", frozenset({"repo/d"}), None, since)
    with pytest.raises(ValueError, match="scope"):
        Cache(scope="galaxy")  # type: ignore[arg-type]


class Plain:
    """A store with only the protocol's methods (a shared store, say)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.entries: dict[str, str] = {}

    def get(self, key: str, now: float) -> str | None:
        return self.entries.get(key)

    def put(
        self, key: str, output: str, reads: frozenset[str], expires: float | None, since: int
    ) -> bool:
        if since != self.epoch:
            return False
        self.entries[key] = output
        return True

    def invalidate(self, writes: frozenset[str] | None) -> int:
        self.epoch += 1
        dropped = len(self.entries)
        self.entries.clear()
        return dropped

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)


async def test_any_store_and_every_scope_serve() -> None:
    plain = Plain()
    for cache in (Cache(store=plain), Cache(scope="process")):
        files = Files(cache=cache, slow=0.01)
        turns: Turns = [
            [("read", {"path": "p"}), ("read", {"path": "p"})],
            [("read", {"path": "p"})],
            [("write", {"path": "p"})],
            [("read", {"path": "p"})],
        ]
        result, _ = await play(turns, files)
        assert files.runs == ["read p", "write p", "read p"]
        assert [mark for _, mark in cache_marks(result)] == [
            "miss",
            "coalesced",
            "hit",
            None,
            "miss",
        ]
    # A client that cannot be weakly referenced keeps client-scoped results for its run only.
    results = RunResults(("not", "weakly", "referenced"))
    assert results.store(Cache(scope="client")) is results.store(Cache())
    assert results.invalidate(frozenset({"nothing/here"})) == 0


async def test_a_call_whose_twin_failed_runs_by_itself() -> None:
    runs: list[int] = []

    @tool(pure=True, cache=True)
    async def once(n: int) -> str:
        """Fails on its first run.

        Args:
            n: A number.
        """
        runs.append(n)
        await asyncio.sleep(0.01)
        if len(runs) == 1:
            raise RuntimeError("first")
        return "fine"

    scripted = ScriptedTransport(
        [turn_events("r0", [("once", {"n": 1}), ("once", {"n": 1})]), answer_events("r1")]
    )
    result = await Runner.run(Agent(MODEL, tools=[once]), "go", client=scripted)
    assert runs == [1, 1]
    assert [tool.error is None for tool in result.steps[0].tools] == [False, True]


async def test_arguments_that_are_not_plain_json_still_make_a_key() -> None:
    runs: list[str] = []

    @tool(pure=True, cache=True)
    async def locate(where: Where) -> str:
        """Locate.

        Args:
            where: Where.
        """
        runs.append(where.path)
        return where.path

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("locate", {"where": {"path": "a"}})]),
            turn_events("r1", [("locate", {"where": {"path": "a"}})]),
            answer_events("r2"),
        ]
    )
    await Runner.run(Agent(MODEL, tools=[locate]), "go", client=scripted)
    assert runs == ["a"]


async def test_a_write_below_a_key_with_a_trailing_slash_drops_it() -> None:
    """``read("src/")`` reads ``repo/src/``: a write to ``repo/src/a`` below it drops it."""
    turns: Turns = [
        [("read", {"path": "src/"})],
        [("write", {"path": "src/a"})],
        [("read", {"path": "src/"})],
    ]
    result, files = await same_as_uncached(turns)
    assert files.runs == ["read src/", "write src/a", "read src/"]
    assert cache_marks(result)[-1] == ("read", "miss")


def test_stores_and_their_bounds_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=-1)
    with pytest.raises(TypeError, match="has no get, put, invalidate, epoch"):
        Cache(store=object())  # type: ignore[arg-type]


def test_a_memory_store_may_be_shared_by_threads() -> None:
    """Runs on several event loops (``Runner.run_sync`` in threads) share the process store:
    an invalidation never meets a store changing under it."""
    store = MemoryStore()
    errors: list[Exception] = []
    stop = time.monotonic() + 0.5

    def put() -> None:
        index = 0
        try:
            while time.monotonic() < stop and not errors:
                store.put(f"k{index}", "x", frozenset({f"repo/{index % 50}"}), None, store.epoch)
                index += 1
        except Exception as exc:
            errors.append(exc)

    def invalidate() -> None:
        index = 0
        try:
            while time.monotonic() < stop and not errors:
                store.invalidate(frozenset({f"repo/{index % 50}"}))
                index += 1
        except Exception as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=put) for _ in range(2)]
        threads.append(threading.Thread(target=invalidate))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_runs_on_other_event_loops_share_the_process_scope() -> None:
    """Identical calls at once from runs on four event loops (four threads): none joins a call
    running on another loop (it could not await it), and every run gets its result."""
    runs: list[str] = []

    @tool(reads=["repo/{path}"], cache=Cache(scope="process"))
    async def read_across_loops(path: str) -> str:
        """Read.

        Args:
            path: The file.
        """
        runs.append(path)
        await asyncio.sleep(0.05)
        return f"{path} v1"

    def one_run() -> list[str]:
        scripted = ScriptedTransport(
            [turn_events("r0", [("read_across_loops", {"path": "p"})]), answer_events("r1")]
        )
        agent = Agent(MODEL, tools=[read_across_loops])
        result = asyncio.run(Runner.run(agent, "go", client=scripted))
        return [tool.error or "" for step in result.steps for tool in step.tools]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(lambda _: one_run(), range(4)))
    assert errors == [[""]] * 4
    assert 1 <= len(runs) <= 4


async def test_a_tool_that_raises_cancelled_error_itself_fails_its_call_only() -> None:
    """A tool whose own await was cancelled elsewhere raises ``CancelledError`` while nothing
    cancelled the run: the model gets a tool error (not cached), and the run goes on."""
    runs: list[int] = []

    @tool(pure=True, cache=True)
    async def fragile(n: int) -> str:
        """Fails its first run with a CancelledError of its own.

        Args:
            n: A number.
        """
        runs.append(n)
        if len(runs) == 1:
            raise asyncio.CancelledError("the connection it awaited was cancelled")
        return "fine"

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("fragile", {"n": 1})]),
            turn_events("r1", [("fragile", {"n": 1})]),
            answer_events("r2"),
        ]
    )
    result = await Runner.run(Agent(MODEL, tools=[fragile]), "go", client=scripted)
    assert result.final_output == "done" and runs == [1, 1]
    first, second = (tool for step in result.steps for tool in step.tools)
    assert first.error == "CancelledError: the connection it awaited was cancelled"
    assert second.error is None and second.cache == "miss"


def test_a_tool_that_takes_a_run_context_is_cached_for_its_run_only() -> None:
    """Its result may depend on the run's deps (the user): kept across runs, one user's result
    would be served to another."""
    for cache in (Cache(scope="process"), Cache(scope="client"), Cache(store=MemoryStore())):
        with pytest.raises(ToolDefinitionError, match="takes a RunContext"):

            @tool(reads=["order:{order_id}"], cache=cache)
            async def get_order(context: RunContext[str], order_id: str) -> str:
                """Look an order up for the run's user."""
                return f"{order_id} of {context.deps}"

    @tool(reads=["order:{order_id}"], cache=True)
    async def get_own_order(context: RunContext[str], order_id: str) -> str:
        """Look an order up for the run's user."""
        return f"{order_id} of {context.deps}"

    assert get_own_order.cache == Cache()


async def test_a_read_made_just_before_an_overlapping_write_takes_its_cached_result() -> None:
    """The read and the write arrive in one burst (the whole turn at once, as from a fast
    server): the read comes first in the model's order, so it is answered from before the
    write, from the cache, and the write then runs."""
    turns: Turns = [
        [("read", {"path": "a"})],
        [("read", {"path": "a"}), ("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    result, files = await same_as_uncached(turns, burst=True)
    assert files.runs == ["read a", "write a", "read a"]
    assert cache_marks(result) == [
        ("read", "miss"),
        ("read", "hit"),
        ("write", None),
        ("read", "miss"),
    ]


@pytest.mark.parametrize(
    ("approval", "marks"),
    [
        (None, ["miss", "coalesced", None]),
        ("all", ["miss", "miss", None]),  # each call looks up once approved, by itself
    ],
)
async def test_a_result_from_before_a_write_is_not_kept_while_the_write_runs(
    approval: Any, marks: list[str | None]
) -> None:
    """Two identical reads of a and a write of a arrive in one burst: the reads run first
    (they come first in the model's order; the second joins the first), and their result,
    from before the write, is not kept in the tool's shared store while the write runs (a
    read in another run, made after the write, would find it there). Calls that wait for
    approval first read from before the write all the same."""
    store = MemoryStore()
    files = Files(cache=Cache(store=store))
    kept: list[int] = []
    files.while_writing = lambda: kept.append(len(store))
    calls = [("read", {"path": "a"}), ("read", {"path": "a"}), ("write", {"path": "a"})]
    scripted = ScriptedTransport([turn_events("r0", calls), answer_events("r1")], burst=True)
    agent = Agent(MODEL, tools=files.tools, approval=approval)
    result = await Runner.run(agent, "go", client=scripted, approver=lambda request: True)
    assert [mark for _, mark in cache_marks(result)] == marks
    assert files.runs == ["read a" for mark in marks if mark == "miss"] + ["write a"]
    assert kept == [0]


class Failing(Plain):
    """A store whose ``get`` fails once, the ``at``-th time it is called (a store that went
    down for a moment)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.gets = 0

    def get(self, key: str, now: float) -> str | None:
        self.gets += 1
        if self.gets == self.at:
            raise ConnectionError("the store is down")
        return super().get(key, now)


async def test_a_store_that_fails_fails_the_run_and_never_hangs_it() -> None:
    """One tool at a time: the second read is set to start when the first one ends, and the
    store fails once then. The run fails with the store's error, as when it fails in a
    call's own look-up: it neither waits for a call that never started nor looks again."""
    files = Files(cache=Cache(store=Failing(at=2)), slow=0.05)
    scripted = ScriptedTransport(
        [
            turn_events("r0", [("read", {"path": "a"}), ("read", {"path": "b"})]),
            answer_events("r1"),
        ]
    )
    agent = Agent(MODEL, tools=files.tools, max_concurrency=1)
    with pytest.raises(ConnectionError, match="the store is down"):
        await asyncio.wait_for(Runner.run(agent, "go", client=scripted), 5.0)
    assert files.runs == ["read a"]
