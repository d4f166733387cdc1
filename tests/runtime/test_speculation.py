"""Speculative prefetch: predicted reads run before the model asks, and nothing changes for it.

A scripted transport plays the model; the tools keep a versioned store, so a read from before
a write differs from one after it. Each case is also played without speculation, and the
model's inputs must be byte for byte the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

import hotloop.runtime.cache as result_cache
from hotloop.runtime import (
    Agent,
    ApprovalRequested,
    MaxTurnsExceeded,
    RunContext,
    Runner,
    ToolDefinitionError,
    tool,
)
from hotloop.runtime.cache import Cache
from hotloop.runtime.speculation import Speculate, Transitions, transitions_of
from hotloop.trace import timeline_from_result
from hotloop.trace.spans import spans_from_result, speculation_effect, timeline_from_spans
from hotloop.transport import TransportError
from hotloop.wire import codec
from hotloop.wire.items import FunctionCallOutput
from support import ScriptedTransport, VersionedFiles, answer_events, turn_events

MODEL = "scripted"

Turns = list[list[tuple[str, dict[str, Any]]]]


class Repo(VersionedFiles):
    """Versioned files, and a ``grep`` whose declared follow-ups read what it finds (``a``
    and ``b``, and ``extra_follow_ups`` files that are never asked for); with ``reread``,
    ``write`` predicts a read of what it wrote."""

    def __init__(
        self,
        *,
        slow: float = 0.0,
        slow_write: float = 0.0,
        extra_follow_ups: int = 0,
        reread: bool = False,
        cache: bool = False,
    ) -> None:
        def reread_it(args: Mapping[str, Any], output: str) -> Iterable[tuple[str, Any]]:
            return [("read", {"path": args["path"]})] if reread else []

        super().__init__(cache=cache, slow=slow, slow_write=slow_write, write_follows=reread_it)
        repo = self

        def matches(args: Mapping[str, Any], output: str) -> Iterable[tuple[str, dict[str, Any]]]:
            names = output.split(": ", 1)[1].split(", ")
            extra = [f"unused{index}" for index in range(extra_follow_ups)]
            yield from (("read", {"path": name}) for name in [*names, *extra])
            yield ("write", {"path": names[0]})  # a write is never speculated

        @tool(reads=["repo"], follows=matches)
        async def grep(pattern: str) -> str:
            """Find files.

            Args:
                pattern: What to find.
            """
            repo.runs.append(f"grep {pattern}")
            return f"{pattern}: a, b"

        self.tools = [grep, self.read, self.write]


async def play(
    turns: Turns,
    repo: Repo,
    *,
    speculate: bool | Speculate,
    client: Any = None,
    burst: bool = False,
) -> Any:
    scripted = client or ScriptedTransport([], burst=burst)
    scripted.turns = [turn_events(f"r{i}", calls) for i, calls in enumerate(turns)]
    scripted.turns.append(answer_events(f"r{len(turns)}"))
    scripted.requests = []
    policies = [] if speculate is False else [Speculate() if speculate is True else speculate]
    result = await Runner.run(
        Agent(MODEL, tools=repo.tools, policies=policies), "go", client=scripted
    )
    inputs = [codec.dumps([item.to_dict() for item in r.history]) for r in scripted.requests]
    return result, inputs


async def compare(
    turns: Turns,
    speculate: bool | Speculate = True,
    *,
    kind: type[Repo] = Repo,
    burst: bool = False,
    **repo: Any,
) -> tuple[Any, Repo, Repo]:
    fast, plain = kind(**repo), kind(**repo)
    result, inputs = await play(turns, fast, speculate=speculate, burst=burst)
    _, reference = await play(turns, plain, speculate=False, burst=burst)
    assert inputs == reference  # lossless
    return result, fast, plain


def marks(result: Any) -> list[tuple[str, str | None]]:
    return [(tool.name, tool.cache) for step in result.steps for tool in step.tools]


async def test_declared_follow_ups_are_fetched_before_the_model_asks() -> None:
    # Four calls made by the time grep's predictions may start: a budget of four.
    turns: Turns = [
        [("read", {"path": "c"}), ("read", {"path": "d"}), ("read", {"path": "e"})],
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("read", {"path": "b"})],
    ]
    result, fast, plain = await compare(turns, Speculate(max_waste=1.0))
    assert sorted(fast.runs) == sorted(plain.runs)  # each read ran once: before it was asked
    assert marks(result)[4:] == [("read", "speculated"), ("read", "speculated")]
    assert [(s.name, s.source, s.used_ns is not None) for s in result.speculations] == [
        ("read", "follows", True),
        ("read", "follows", True),
    ]
    assert all(s.name != "write" for s in result.speculations)  # never a write


async def test_a_write_drops_a_speculation_even_while_it_runs() -> None:
    """grep predicts read a; the model writes a, then reads it. The speculated read started
    before the write: the model's read must not take it, and reads a again after the write."""
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    result, fast, _ = await compare(turns, slow=0.2)
    assert marks(result)[-1] == ("read", None)
    assert fast.runs.count("read a") == 2  # the speculation, wasted; then the real read
    wasted = [s for s in result.speculations if s.arguments == '{"path":"a"}']
    assert wasted and wasted[0].used_ns is None
    # Stopped the moment the write was admitted, not left to run for nothing.
    assert wasted[0].error == "stopped: a write to what it reads was admitted"
    assert wasted[0].finished_ns is not None
    assert wasted[0].finished_ns - wasted[0].started_ns < 0.2e9


async def test_predictions_wait_for_the_response_and_the_writes_in_flight() -> None:
    """grep predicts read a in a turn that also writes a: the prefetch starts only once the
    write is done (started before, it would be dropped and run twice), and is used."""
    turns: Turns = [
        [("grep", {"pattern": "x"}), ("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, Speculate(max_waste=4.0), slow_write=0.05)
    assert fast.runs.count("read a") == plain.runs.count("read a") == 1
    assert marks(result)[-1] == ("read", "speculated")
    write = next(tool for step in result.steps for tool in step.tools if tool.name == "write")
    (read_a,) = [s for s in result.speculations if codec.loads(s.arguments) == {"path": "a"}]
    assert write.finished_ns is not None and read_a.started_ns >= write.finished_ns


async def test_waste_stays_within_its_budget() -> None:
    # grep predicts 2 useful reads and 20 that never come.
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("read", {"path": "b"})],
    ]
    result, fast, plain = await compare(turns, extra_follow_ups=20)
    unused = [s for s in result.speculations if s.used_ns is None]
    executed = len(plain.runs)
    assert len(unused) <= max(0.25 * executed, 2)
    assert len(fast.runs) - len(plain.runs) == len(unused)


async def test_the_transition_model_learns_across_a_clients_runs() -> None:
    """No declared follow-ups: the first run teaches the client that ``read b`` follows
    ``read a``; in the second, ``read b`` is fetched as soon as ``read a`` finished."""
    turns: Turns = [[("read", {"path": "a"})], [("read", {"path": "b"})]]
    shared = ScriptedTransport([])
    repo = Repo()
    first, _ = await play(turns, repo, speculate=True, client=shared)
    assert first.speculations == ()
    # What a run does is learned when it is over: within one run nothing is predicted from it.
    again, _ = await play(turns * 2, repo, speculate=True, client=ScriptedTransport([]))
    assert again.speculations == ()
    second, _ = await play(turns, repo, speculate=True, client=shared)
    assert [(s.name, codec.loads(s.arguments), s.source) for s in second.speculations] == [
        ("read", {"path": "b"}, "learned")
    ]
    assert marks(second)[-1] == ("read", "speculated")


def test_speculate_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Speculate(max_in_flight=0)
    with pytest.raises(ValueError, match="max_waste"):
        Speculate(max_waste=float("nan"))  # would turn speculation off without a word


async def test_a_call_joins_a_speculation_still_running() -> None:
    turns: Turns = [[("grep", {"pattern": "x"})], [("read", {"path": "a"})]]
    result, fast, _ = await compare(turns, slow=0.05)
    assert marks(result)[-1] == ("read", "speculated")
    assert fast.runs.count("read a") == 1


async def test_a_speculation_a_call_joined_serves_no_other_call() -> None:
    # The read is not cached: a repeat must run again (what it reads may have changed
    # elsewhere). A speculation the first call joined while it ran is used up by that call.
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"})],  # joins the speculation still running
        [("read", {"path": "a"})],  # a repeat: runs, as without speculation
    ]
    result, fast, plain = await compare(turns, slow=0.05)
    assert [mark for mark in marks(result) if mark[0] == "read"] == [
        ("read", "speculated"),
        ("read", None),
    ]
    assert fast.runs.count("read a") == plain.runs.count("read a") == 2


async def test_twin_calls_do_not_share_one_speculation() -> None:
    # Two identical reads in one turn each run without speculation (the tool is not cached):
    # one takes the speculation still running, the other runs by itself.
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, slow=0.05)
    assert sorted(str(mark) for mark in marks(result) if mark[0] == "read") == [
        "('read', 'speculated')",
        "('read', None)",
    ]
    assert fast.runs.count("read a") == plain.runs.count("read a") == 2


@pytest.mark.parametrize("slow", [0.0, 0.05])
async def test_a_read_made_just_before_an_overlapping_write_takes_its_speculation(
    slow: float,
) -> None:
    """The read and the write of ``a`` arrive in one burst (the whole turn at once, as from
    a fast server), the read first: it takes the speculation (done, or still running), which
    the write admitted right after it does not take away; then the write runs."""
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, burst=True, slow=slow)
    assert marks(result)[1:3] == [("read", "speculated"), ("write", None)]
    assert fast.runs.count("read a") == plain.runs.count("read a") == 2


async def test_a_read_made_just_before_an_overlapping_write_keeps_its_cached_result() -> None:
    # As without speculation: the read's cached result, set aside when its task was made, is
    # not looked up again after the write (admitted in the same burst) dropped it.
    turns: Turns = [
        [("read", {"path": "a"})],
        [("read", {"path": "a"}), ("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, burst=True, cache=True)
    assert marks(result) == [("read", "miss"), ("read", "hit"), ("write", None), ("read", "miss")]
    assert fast.runs == plain.runs == ["read a", "write a", "read a"]


async def test_a_twin_of_a_cached_call_joins_the_speculation_the_first_one_took() -> None:
    # Single flight holds with speculation on: without it, the twin would join the first
    # call; here it joins the speculation still running that the first call took.
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, slow=0.05, cache=True)
    assert sorted(str(mark) for mark in marks(result) if mark[0] == "read") == [
        "('read', 'coalesced')",
        "('read', 'speculated')",
    ]
    assert fast.runs.count("read a") == plain.runs.count("read a") == 1


@tool(pure=True)
async def pause(seconds: float) -> str:
    """Wait.

    Args:
        seconds: How long.
    """
    await asyncio.sleep(seconds)
    return "waited"


class PausingRepo(Repo):
    """A :class:`Repo` with a ``pause`` tool: a turn that lets time pass."""

    def __init__(self, **repo: Any) -> None:
        super().__init__(**repo)
        self.tools = [*self.tools, pause]


async def test_a_speculation_of_a_tool_not_cached_answers_only_the_turn_it_was_for() -> None:
    # What the read saw may have changed outside the run since: a turn later, it runs again.
    turns: Turns = [
        [("grep", {"pattern": "x"})],  # predicts reads of a and b, for the next turn
        [("read", {"path": "b"})],
        [("read", {"path": "a"})],  # too late for the speculation of a
    ]
    result, fast, plain = await compare(turns)
    assert [mark for mark in marks(result) if mark[0] == "read"] == [
        ("read", "speculated"),
        ("read", None),
    ]
    assert fast.runs.count("read a") == 2 and plain.runs.count("read a") == 1
    [of_a] = [s for s in result.speculations if codec.loads(s.arguments) == {"path": "a"}]
    assert of_a.used_ns is None


async def test_a_speculation_too_old_for_any_call_is_stopped_and_may_start_again() -> None:
    turns: Turns = [
        [("grep", {"pattern": "x"})],  # reads of a and b start, for the next turn
        [("pause", {"seconds": 0})],
        [("read", {"path": "a"})],  # too late: the speculation still running is stopped
        [("grep", {"pattern": "x"})],  # a is predicted again, and may start again
        [("read", {"path": "a"})],
    ]
    # A budget that lets every prediction start: only freshness decides.
    result, fast, plain = await compare(turns, Speculate(max_waste=1.0), kind=PausingRepo, slow=0.2)
    assert [mark for mark in marks(result) if mark[0] == "read"] == [
        ("read", None),
        ("read", "speculated"),
    ]
    of_a = [s for s in result.speculations if codec.loads(s.arguments) == {"path": "a"}]
    assert [(s.used_ns is None, s.error) for s in of_a] == [
        (True, "stopped: the turn it was for is over"),
        (False, None),
    ]
    assert plain.runs.count("read a") == 2 and fast.runs.count("read a") == 3


@pytest.mark.parametrize(
    ("ttl", "mark"), [(None, "speculated"), (60.0, "speculated"), (0.05, "miss")]
)
async def test_a_speculation_of_a_cached_tool_answers_while_its_ttl_allows(
    ttl: float | None, mark: str
) -> None:
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("pause", {"seconds": 0.2})],  # the speculation of a is 0.2 s old after this
        [("read", {"path": "a"})],
    ]
    result, fast, _ = await compare(turns, kind=PausingRepo, cache=Cache(ttl=ttl))
    assert marks(result)[-1] == ("read", mark)
    assert fast.runs.count("read a") == (1 if mark == "speculated" else 2)


async def test_predictions_that_cannot_run_are_dropped() -> None:
    """Unknown tools, arguments the tool refuses, writes, duplicates, a follow-up function
    that raises and a full in-flight budget: none runs, and the run goes on."""
    runs: list[str] = []

    def odd(args: Mapping[str, Any], output: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
        yield ("nowhere", {})
        yield ("look", {"wrong": 1})
        yield ("look", {"path": "a"})
        yield ("look", {"path": "a"})  # twice: once
        yield ("look", {"path": "b"})  # over max_in_flight=1 while a runs
        raise RuntimeError("a broken prediction")

    @tool(pure=True, follows=odd)
    async def start(n: int) -> str:
        """Start.

        Args:
            n: A number.
        """
        return "go"

    @tool(pure=True, cache=True)
    async def look(path: str) -> str:
        """Look.

        Args:
            path: Where.
        """
        runs.append(path)
        await asyncio.sleep(0.02)
        return path

    scripted = ScriptedTransport(
        [turn_events("r0", [("start", {"n": 1})]), turn_events("r1", [("look", {"path": "a"})])]
    )
    scripted.turns.append(answer_events("r2"))
    agent = Agent(MODEL, tools=[start, look], policies=[Speculate(max_in_flight=1)])
    result = await Runner.run(agent, "go", client=scripted)
    assert [(s.name, codec.loads(s.arguments)) for s in result.speculations] == [
        ("look", {"path": "a"})
    ]
    assert runs == ["a"] and marks(result)[-1] == ("look", "speculated")


async def test_speculations_still_running_when_the_run_ends_are_cancelled() -> None:
    turns: Turns = [[("grep", {"pattern": "x"})]]  # a and b are predicted, never asked for
    repo = Repo(slow=5.0)
    result, _ = await play(turns, repo, speculate=True)
    assert result.speculations and all(s.used_ns is None for s in result.speculations)
    await asyncio.sleep(0)
    assert all(s.finished_ns is not None for s in result.speculations)


def test_the_transition_model_is_bounded() -> None:
    model = Transitions(fanout=2, max_keys=2)
    for previous in ("a", "b", "c"):
        model.saw(previous, ("read", "x"))
    assert model.after("a") == () and model.after("c") == (("read", "x"),)
    for call in ("1", "2", "3", "2"):
        model.saw("c", ("read", call))
    assert model.after("c") == (("read", "2"), ("read", "3"))
    assert isinstance(transitions_of(1), Transitions)  # no weak reference: a fresh one


async def test_the_trace_shows_each_speculation_and_what_it_saved_or_wasted() -> None:
    turns: Turns = [[("grep", {"pattern": "x"})], [("read", {"path": "a"})]]
    result, _, _ = await compare(turns, Speculate(max_waste=4.0))
    spans = [s for s in spans_from_result(result) if s.name == "tool.speculation"]
    assert [
        (s.attributes["gen_ai.tool.name"], s.attributes["hotloop.speculation.used"]) for s in spans
    ] == [
        ("read", True),
        ("read", False),
    ]
    # The waterfall draws each speculation on a row of its own, from the run or its trace.
    bars = timeline_from_result(result)
    assert [(bar.row, bar.label) for bar in bars if bar.kind == "tool.speculation"] == [
        ("speculation · read", "used"),
        ("speculation · read", "wasted"),
    ]
    assert timeline_from_spans(spans_from_result(result)) == bars
    used, unused = result.speculations
    saved, wasted = speculation_effect(used, result.wall_ns)
    assert wasted == 0 and 0 <= saved <= used.finished_ns - used.started_ns
    assert speculation_effect(unused, result.wall_ns) == (
        0,
        unused.finished_ns - unused.started_ns,
    )


async def test_a_read_dropped_by_a_write_is_speculated_again_after_it() -> None:
    """grep predicts read a; a write to a drops that speculation; the write's own follow-up
    predicts read a again, and this second speculation is used."""

    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("write", {"path": "a"})],
        [("read", {"path": "a"})],
    ]
    fast, plain = Repo(slow=0.01, reread=True), Repo(slow=0.01, reread=True)
    # A waste budget that lets the second speculation start (b was predicted and never used).
    result, inputs = await play(turns, fast, speculate=Speculate(max_waste=2.0))
    _, reference = await play(turns, plain, speculate=False)
    assert inputs == reference
    reads_of_a = [s for s in result.speculations if codec.loads(s.arguments) == {"path": "a"}]
    assert len(reads_of_a) == 2 and reads_of_a[0].used_ns is None
    assert reads_of_a[1].used_ns is not None and marks(result)[-1] == ("read", "speculated")


async def test_the_budget_goes_to_a_calls_slowest_prediction_first() -> None:
    """``scan`` predicts four fast reads, then the slow test run; a budget of one unused
    speculation (plus one) goes to the test run first, and fast reads take only a third."""
    runs: list[str] = []

    def next_calls(args: Mapping[str, Any], output: str) -> Iterable[tuple[str, Any]]:
        yield from (("read", {"path": name}) for name in ("w", "x", "y", "z"))
        yield ("test", {"path": "all"})

    @tool(reads=["repo"], follows=next_calls)
    async def scan(path: str) -> str:
        """List.

        Args:
            path: Where.
        """
        runs.append("scan")
        return "w x y z"

    @tool(reads=["repo/{path}"])
    async def read(path: str) -> str:
        """Read.

        Args:
            path: The file.
        """
        runs.append(f"read {path}")
        await asyncio.sleep(0.01)
        return path

    @tool(reads=["repo"])
    async def test(path: str) -> str:
        """Run the tests.

        Args:
            path: Which.
        """
        runs.append(f"test {path}")
        await asyncio.sleep(0.3)
        return "passed"

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("read", {"path": "a"}), ("test", {"path": "a"})]),
            turn_events("r1", [("scan", {"path": "."})]),
            turn_events("r2", [("test", {"path": "all"})]),
        ]
    )
    scripted.turns.append(answer_events("r3"))
    agent = Agent(MODEL, tools=[scan, read, test], policies=[Speculate()])
    result = await Runner.run(agent, "go", client=scripted)
    # Three calls made when scan's predictions may start: two may go unused, one of them a
    # read (a third of the budget, or one).
    assert [(s.name, s.used_ns is not None) for s in result.speculations] == [
        ("test", True),
        ("read", False),
    ]
    assert marks(result)[-1] == ("test", "speculated")
    assert runs.count("test all") == 1


async def test_a_speculated_result_a_call_took_is_cached_for_its_repeat() -> None:
    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"})],
        [("read", {"path": "a"})],  # a repeat: the cache has what the speculation gave
        [("write", {"path": "a"})],
        [("read", {"path": "a"})],  # after a write: neither cached nor speculated
    ]
    result, fast, plain = await compare(turns, cache=True)
    assert [mark for mark in marks(result) if mark[0] == "read"] == [
        ("read", "speculated"),
        ("read", "hit"),
        ("read", "miss"),
    ]
    assert fast.runs.count("read a") == 2 and plain.runs.count("read a") == 2


class Tree(Repo):
    """Versioned files, a ``find`` whose declared follow-up lists the directory it finds, and
    a slow ``ls``: the files below a directory, with their versions when it started."""

    def __init__(self) -> None:
        super().__init__()
        tree = self

        @tool(reads=["repo"], follows=lambda args, output: [("ls", {"path": output})])
        async def find(pattern: str) -> str:
            """Find a directory.

            Args:
                pattern: What to find.
            """
            return "src"

        @tool(reads=["repo/{path}"])
        async def ls(path: str) -> str:
            """List a directory.

            Args:
                path: The directory.
            """
            tree.runs.append(f"ls {path}")
            below = sorted(
                (name, v) for name, v in tree.versions.items() if name.startswith(f"{path}/")
            )
            await asyncio.sleep(0.2)
            return ", ".join(f"{name} v{v}" for name, v in below)

        self.tools = [find, ls, self.write]


async def test_a_write_below_what_a_running_speculation_reads_stops_it() -> None:
    """find predicts a listing of src; the model writes src/a.py, then lists src. The listing
    speculated before the write reads all of src: the write stops it when it is admitted, and
    the model's listing runs after the write."""
    turns: Turns = [
        [("find", {"pattern": "x"})],
        [("write", {"path": "src/a.py"})],
        [("ls", {"path": "src"})],
    ]
    fast, plain = Tree(), Tree()
    result, inputs = await play(turns, fast, speculate=True)
    _, reference = await play(turns, plain, speculate=False)
    assert inputs == reference
    assert marks(result)[-1] == ("ls", None)
    assert fast.runs.count("ls src") == 2  # the speculation, stopped; then the model's
    (stopped,) = result.speculations
    assert stopped.name == "ls" and stopped.used_ns is None
    assert stopped.error == "stopped: a write to what it reads was admitted"
    assert stopped.finished_ns is not None
    assert stopped.finished_ns - stopped.started_ns < 0.2e9


async def test_a_speculation_still_running_when_the_run_ends_is_recorded_as_stopped() -> None:
    """find predicts a slow listing, and the model answers at once: the listing is stopped
    with the run, and its record says so when the result is returned, never changing after."""
    result, _ = await play([[("find", {"pattern": "x"})]], Tree(), speculate=True)
    (stopped,) = result.speculations
    assert stopped.error == "stopped: the run ended" and stopped.used_ns is None
    assert stopped.finished_ns is not None and stopped.finished_ns <= result.wall_ns
    ended = stopped.finished_ns
    await asyncio.sleep(0.05)
    assert stopped.finished_ns == ended and stopped.error == "stopped: the run ended"


async def test_tools_that_may_write_or_must_be_asked_for_are_never_speculated() -> None:
    """plan predicts a read, and calls of tools that must not run before the model asks: one
    that declares no effects (it may write anything), one that needs approval, one that takes
    the run's context, and one that declares writes (none for these arguments). Only the read
    is speculated; the model then makes all five calls, and each runs once."""
    runs: list[str] = []

    def next_calls(args: Mapping[str, Any], output: str) -> Iterable[tuple[str, Any]]:
        yield ("read", {"path": "a"})
        yield ("shell", {"command": "make"})
        yield ("deploy", {"path": "a"})
        yield ("whoami", {"path": "a"})
        yield ("fmt", {"path": "a", "apply": False})

    @tool(reads=["repo"], follows=next_calls)
    async def plan(goal: str) -> str:
        """Plan.

        Args:
            goal: What for.
        """
        return "a"

    @tool(reads=["repo/{path}"])
    async def read(path: str) -> str:
        """Read a file.

        Args:
            path: The file.
        """
        runs.append(f"read {path}")
        return path

    @tool
    async def shell(command: str) -> str:
        """Run anything (no declared effects: it may touch everything).

        Args:
            command: The command.
        """
        runs.append(f"shell {command}")
        return "ok"

    @tool(reads=["repo/{path}"], approval=True)
    async def deploy(path: str) -> str:
        """Deploy a file, once a person said yes.

        Args:
            path: The file.
        """
        runs.append(f"deploy {path}")
        return "deployed"

    @tool(reads=["repo/{path}"])
    async def whoami(context: RunContext[str], path: str) -> str:
        """Who asks about a file.

        Args:
            path: The file.
        """
        runs.append(f"whoami {path}")
        return f"{context.deps} on {path}"

    def formatted(args: Mapping[str, Any]) -> list[str]:
        return [f"repo/{args['path']}"] if args["apply"] else []

    @tool(reads=["repo/{path}"], writes=[formatted])
    async def fmt(path: str, apply: bool) -> str:
        """Format a file (or only say what would change).

        Args:
            path: The file.
            apply: Whether to write the change.
        """
        runs.append(f"fmt {path}")
        return "formatted"

    async def approve(request: ApprovalRequested) -> bool:
        return True

    calls = list(next_calls({}, ""))
    scripted = ScriptedTransport(
        [turn_events("r0", [("plan", {"goal": "x"})]), turn_events("r1", calls)]
    )
    scripted.turns.append(answer_events("r2"))
    tools = [plan, read, shell, deploy, whoami, fmt]
    agent = Agent(MODEL, tools=tools, policies=[Speculate(per_call=8)])
    result = await Runner.run(agent, "go", client=scripted, deps="ada", approver=approve)
    assert [(s.name, s.used_ns is not None) for s in result.speculations] == [("read", True)]
    assert marks(result)[1:] == [
        ("read", "speculated"),
        ("shell", None),
        ("deploy", None),
        ("whoami", None),
        ("fmt", None),
    ]
    assert sorted(runs) == ["deploy a", "fmt a", "read a", "shell make", "whoami a"]


async def test_an_agent_that_asks_before_every_call_speculates_nothing() -> None:
    """With ``approval="all"`` every call waits for a person, reads too: grep's predicted
    reads are never run before the model asks, and a denied read never runs at all."""
    files = Repo()
    asked: list[str] = []

    async def approve(request: ApprovalRequested) -> bool:
        asked.append(request.name)
        return request.name != "read" or codec.loads(request.arguments) != {"path": "b"}

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("grep", {"pattern": "x"})]),
            turn_events("r1", [("read", {"path": "a"}), ("read", {"path": "b"})]),
            answer_events("r2"),
        ]
    )
    agent = Agent(MODEL, tools=files.tools, policies=[Speculate()], approval="all")
    result = await Runner.run(agent, "go", client=scripted, approver=approve)
    assert result.speculations == ()
    assert asked == ["grep", "read", "read"]
    assert [run for run in files.runs if run.startswith("read")] == ["read a"]


async def test_a_speculation_that_failed_is_not_served() -> None:
    """grep predicts a read of a whose first run fails: the model's read runs by itself and
    gets its own result, never the speculation's error."""
    runs: list[str] = []

    @tool(reads=["repo"], follows=lambda args, output: [("flaky", {"path": output})])
    async def grep(pattern: str) -> str:
        """Find files.

        Args:
            pattern: What to find.
        """
        return "a"

    @tool(reads=["repo/{path}"])
    async def flaky(path: str) -> str:
        """Read a file; the first try fails.

        Args:
            path: The file.
        """
        runs.append(path)
        if len(runs) == 1:
            raise RuntimeError("not yet")
        return f"{path} v0"

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("grep", {"pattern": "x"})]),
            turn_events("r1", [("flaky", {"path": "a"})]),
            answer_events("r2"),
        ]
    )
    agent = Agent(MODEL, tools=[grep, flaky], policies=[Speculate()])
    result = await Runner.run(agent, "go", client=scripted)
    (failed,) = result.speculations
    assert failed.error == "RuntimeError: not yet" and failed.used_ns is None
    (read,) = result.steps[1].tools
    assert (read.cache, read.error) == (None, None)
    assert runs == ["a", "a"]
    assert [item.text for item in result.items if isinstance(item, FunctionCallOutput)] == [
        "a",
        "a v0",
    ]


async def test_no_more_than_max_in_flight_speculations_run_at_once() -> None:
    """grep predicts four slow reads and the model asks for none. The waste budget has room
    for all four, but two run at once (max_in_flight): the others do not start while they
    run."""
    turns: Turns = [[("grep", {"pattern": "x"})]]
    repo = Repo(slow=5.0, extra_follow_ups=2)
    result, _ = await play(turns, repo, speculate=Speculate(max_in_flight=2, max_waste=12.0))
    assert [codec.loads(s.arguments)["path"] for s in result.speculations] == ["a", "b"]
    assert repo.runs == ["grep x", "read a", "read b"]


async def test_waste_across_calls_stays_within_max_waste_of_the_calls_made() -> None:
    """Eight calls of one turn each predict a read the model never asks for. Each is its
    call's best prediction, so max_waste alone bounds them: unused speculations stay within a
    quarter of the calls made (two may always go unused), two here."""
    files = VersionedFiles()

    @tool(pure=True, follows=lambda args, output: [("read", {"path": f"p{args['n']}"})])
    async def probe(n: int) -> str:
        """Probe.

        Args:
            n: Which.
        """
        return str(n)

    scripted = ScriptedTransport(
        [turn_events("r0", [("probe", {"n": n}) for n in range(8)]), answer_events("r1")]
    )
    speculate = Speculate(max_in_flight=8, max_waste=0.25)
    agent = Agent(MODEL, tools=[probe, files.read], policies=[speculate])
    result = await Runner.run(agent, "go", client=scripted)
    assert len(result.speculations) == 2
    assert all(s.used_ns is None for s in result.speculations)
    assert len(files.runs) == 2 and all(run.startswith("read p") for run in files.runs)


async def test_follow_ups_that_are_not_pairs_are_logged_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Arguments that are no JSON are dropped; a follow-up that is no (name, arguments) pair
    is logged and ends the follow-ups; what came before it is used."""
    runs: list[str] = []

    def sloppy(args: Mapping[str, Any], output: str) -> Iterable[tuple[Any, Any]]:
        yield ("look", {"path": {1, 2}})  # a set: no JSON
        yield ("look", 5)
        yield ("look", {"path": "a"})

    def broken(args: Mapping[str, Any], output: str) -> Iterable[tuple[Any, Any]]:
        yield ("look", {"path": "b"})
        yield (["look"], {"path": "c"})  # not a tool name
        yield ("look", {"path": "c"})

    @tool(pure=True, follows=sloppy)
    async def start(n: int) -> str:
        """Start.

        Args:
            n: A number.
        """
        return "go"

    @tool(pure=True, follows=broken)
    async def begin(n: int) -> str:
        """Begin.

        Args:
            n: A number.
        """
        return "go"

    @tool(reads=["repo/{path}"])
    async def look(path: str) -> str:
        """Look.

        Args:
            path: Where.
        """
        runs.append(path)
        return path

    scripted = ScriptedTransport(
        [
            turn_events("r0", [("start", {"n": 1}), ("begin", {"n": 1})]),
            turn_events("r1", [("look", {"path": "b"})]),
        ]
    )
    scripted.turns.append(answer_events("r2"))
    agent = Agent(MODEL, tools=[start, begin, look], policies=[Speculate(max_waste=4.0)])
    with caplog.at_level("WARNING", logger="hotloop.runtime"):
        result = await Runner.run(agent, "go", client=scripted)
    assert result.final_output == "done"
    assert sorted(codec.loads(s.arguments)["path"] for s in result.speculations) == ["b"]
    assert marks(result)[-1] == ("look", "speculated") and runs == ["b"]
    warnings = [r for r in caplog.records if "follow-ups of" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == [
        "the follow-ups of start raised; those after it are dropped",
        "the follow-ups of begin raised; those after it are dropped",
    ]
    assert "not ('look', 5)" in str(warnings[0].exc_info[1])  # type: ignore[index]


def test_follows_must_be_a_plain_function() -> None:
    async def predicted(args: Mapping[str, Any], output: str) -> list[tuple[str, Any]]:
        return []

    async def streamed(args: Mapping[str, Any], output: str) -> Any:
        yield ("read", {})

    for follows in (predicted, streamed):
        with pytest.raises(ToolDefinitionError, match="not an async one"):
            tool(pure=True, follows=follows)(_echo)
    with pytest.raises(ToolDefinitionError, match="follows= takes a function"):
        tool(pure=True, follows=[("read", {})])(_echo)  # type: ignore[arg-type]
    for wrong in (lambda output: [], lambda args, output, extra: []):
        with pytest.raises(ToolDefinitionError, match=r"is called with \(args, output\)"):
            tool(pure=True, follows=wrong)(_echo)  # type: ignore[arg-type]
    # Anything callable with two arguments will do.
    assert tool(pure=True, follows=lambda *given: [])(_echo).follows is not None


async def _echo(text: str) -> str:
    """Echo.

    Args:
        text: What to say.
    """
    return text


async def test_a_tool_that_declared_no_effects_is_never_speculated() -> None:
    """``idempotent=True`` with no declared effects: running it twice is harmless, yet it may
    write anything, so running it when the model never asked is not."""
    runs: list[str] = []

    @tool(pure=True, follows=lambda args, output: [("notify", {"who": "ops"})])
    async def check(n: int) -> str:
        """Check.

        Args:
            n: A number.
        """
        return "ok"

    @tool(idempotent=True)
    async def notify(who: str) -> str:
        """Notify someone (a side effect).

        Args:
            who: Whom.
        """
        runs.append(who)
        return "sent"

    scripted = ScriptedTransport([turn_events("r0", [("check", {"n": 1})]), answer_events("r1")])
    agent = Agent(MODEL, tools=[check, notify], policies=[Speculate()])
    result = await Runner.run(agent, "go", client=scripted)
    assert result.speculations == () and runs == []


class SlowSecondTurn(ScriptedTransport):
    """A scripted model whose turns after the first take ``delay`` seconds to start."""

    def __init__(self, turns: Any, delay: float) -> None:
        super().__init__(turns)
        self.delay = delay

    async def stream_to(self, request: Any, on_event: Any, *, skip: Any = ()) -> None:
        if self.requests:
            await asyncio.sleep(self.delay)
        await super().stream_to(request, on_event, skip=skip)


async def test_a_speculation_cancelled_before_it_started_ends_its_flight() -> None:
    """Two finds each predict a read; with one in flight, the second waits, and starts when
    the final answer is complete, the moment the run ends and cancels it, before its first
    step. Its flight ends all the same: a later run never joins it (it would wait forever)."""

    @tool(pure=True, follows=lambda args, output: [("look", {"path": args["name"]})])
    async def find(name: str) -> str:
        """Find.

        Args:
            name: What.
        """
        return name

    @tool(reads=["repo/{path}"])
    async def look(path: str) -> str:
        """Look.

        Args:
            path: Where.
        """
        await asyncio.sleep(0.01)
        return path

    agent = Agent(MODEL, tools=[find, look], policies=[Speculate(max_in_flight=1)])
    scripted = SlowSecondTurn(
        [turn_events("r0", [("find", {"name": "a"}), ("find", {"name": "b"})])], 0.1
    )
    scripted.turns.append(answer_events("r1"))
    result = await Runner.run(agent, "go", client=scripted)
    assert len(result.speculations) == 2  # a ran; b started as the run ended
    await asyncio.sleep(0.01)  # the cancelled tasks end, and their callbacks run
    assert all(s.finished_ns is not None for s in result.speculations)
    assert not result_cache._FLIGHTS


async def test_speculations_stop_when_the_run_fails() -> None:
    turns: Turns = [[("grep", {"pattern": "x"})], [("grep", {"pattern": "y"})]]
    scripted = ScriptedTransport([turn_events(f"r{i}", calls) for i, calls in enumerate(turns)])
    repo = Repo(slow=5.0)
    agent = Agent(MODEL, tools=repo.tools, policies=[Speculate()])
    with pytest.raises(MaxTurnsExceeded):
        await Runner.run(agent, "go", client=scripted, max_turns=1)
    await asyncio.sleep(0)
    running = [t for t in asyncio.all_tasks() if "_prefetch" in repr(t.get_coro())]
    assert running == []


class CutAfterEvents(ScriptedTransport):
    """A scripted model whose second response is cut after all its events came (the run
    fails: it may not send the turn again)."""

    async def stream_to(self, request: Any, on_event: Any, *, skip: Any = ()) -> None:
        if len(self.requests) == 1:
            await super().stream_to(request, on_event, skip=skip)
            raise TransportError("connection lost", replay_safe=False)
        await super().stream_to(request, on_event, skip=skip)


async def test_a_speculation_whose_call_never_ran_is_not_used() -> None:
    """The read of a takes the speculation of it, still running, and the run fails before
    it ends: the speculation served no call, and its record says so when the run's error is
    raised."""
    turns: Turns = [[("grep", {"pattern": "x"})], [("read", {"path": "a"})]]
    repo = Repo(slow=0.05)
    scripted = CutAfterEvents(
        [turn_events("r0", turns[0]), turn_events("r1", turns[1], end="cut")], burst=True
    )
    agent = Agent(MODEL, tools=repo.tools, policies=[Speculate()], max_attempts=1)
    with pytest.raises(TransportError) as failed:
        await Runner.run(agent, "go", client=scripted)
    (read,) = failed.value.partial.steps[1].tools
    assert read.started_ns is None  # it never ran
    speculations = failed.value.partial.speculations
    assert [s.arguments for s in speculations] == ['{"path":"a"}', '{"path":"b"}']
    assert all(s.used_ns is None for s in speculations)


async def test_a_twin_runs_once_with_the_first_call_when_their_speculation_fails() -> None:
    """Two identical cached reads in one turn, and the speculation the first one took
    fails: the first runs and the twin joins it, as without speculation (one run, not
    two)."""
    runs: list[str] = []

    @tool(reads=["repo"], follows=lambda args, output: [("flaky", {"path": "a"})])
    async def grep(pattern: str) -> str:
        """Find files.

        Args:
            pattern: What to find.
        """
        return "a"

    @tool(reads=["repo/{path}"], cache=True)
    async def flaky(path: str) -> str:
        """Read a file; the first try fails.

        Args:
            path: The file.
        """
        runs.append(path)
        first = len(runs) == 1
        await asyncio.sleep(0.05)
        if first:
            raise RuntimeError("not yet")
        return f"{path} v0"

    twins = [("flaky", {"path": "a"}), ("flaky", {"path": "a"})]
    scripted = ScriptedTransport(
        [
            turn_events("r0", [("grep", {"pattern": "x"})]),
            turn_events("r1", twins),
            answer_events("r2"),
        ]
    )
    agent = Agent(MODEL, tools=[grep, flaky], policies=[Speculate()])
    result = await Runner.run(agent, "go", client=scripted)
    (failed,) = result.speculations
    assert failed.error == "RuntimeError: not yet" and failed.used_ns is None
    assert runs == ["a", "a"]  # the speculation, then the first call
    assert sorted(str(tool.cache) for tool in result.steps[1].tools) == ["coalesced", "miss"]
    assert all(tool.error is None for tool in result.steps[1].tools)


async def test_a_speculated_result_from_before_a_write_is_not_kept_while_it_runs() -> None:
    """The read of a takes its speculation, and the write of a comes right after it: the
    result, from before the write, is not kept in the tool's shared store while the write
    runs (a read in another run, made after the write, would find it there)."""
    store = result_cache.MemoryStore()
    repo = Repo(cache=Cache(store=store))
    kept: list[int] = []
    repo.while_writing = lambda: kept.append(len(store))

    turns: Turns = [
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"}), ("write", {"path": "a"})],
    ]
    for burst in (False, True):
        kept.clear()
        store.invalidate(None)
        scripted = ScriptedTransport(
            [turn_events(f"r{i}", calls) for i, calls in enumerate(turns)] + [answer_events("r2")],
            burst=burst,
        )
        agent = Agent(MODEL, tools=repo.tools, policies=[Speculate()])
        result = await Runner.run(agent, "go", client=scripted)
        assert marks(result)[1:] == [("read", "speculated"), ("write", None)]
        assert kept == [0]


class DownForB(result_cache.MemoryStore):
    """A store that fails whenever it is asked for a read of b."""

    def get(self, key: str, now: float) -> str | None:
        if '"b"' in key:
            raise ConnectionError("the store is down")
        return super().get(key, now)


async def test_a_store_that_fails_only_skips_the_prefetch_that_looks_in_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grep predicts reads of a and b; looking for b in the cache fails before its
    speculation would start. That speculation is skipped, with a warning; a's still runs
    and serves the model's read, and the run goes on."""
    turns: Turns = [[("grep", {"pattern": "x"})], [("read", {"path": "a"})]]
    result, fast, _ = await compare(turns, cache=Cache(store=DownForB()))
    assert marks(result)[-1] == ("read", "speculated")
    assert [s.arguments for s in result.speculations] == ['{"path":"a"}']
    assert "the cache of read raised; the speculation of it is not started" in caplog.text
    assert fast.runs == ["grep x", "read a"]


async def test_a_read_whose_cached_result_expired_is_prefetched_again() -> None:
    """The read of a is cached for 20 ms; when grep predicts it again, that result has
    expired, so the read is prefetched (a cached result still valid would answer it)."""
    turns: Turns = [
        [("read", {"path": "a"})],
        [("pause", {"seconds": 0.05})],
        [("grep", {"pattern": "x"})],
        [("read", {"path": "a"})],
    ]
    result, fast, plain = await compare(turns, kind=PausingRepo, cache=Cache(ttl=0.02))
    assert marks(result)[-1] == ("read", "speculated")
    assert fast.runs.count("read a") == plain.runs.count("read a") == 2
