"""The runner end to end: real ``@tool`` functions, a real gateway on loopback, the sim model.

Everything goes through the wire: the runtime only sees the gateway through a transport, and
the tests only look at what the runtime reports (results, events, step records, transport
counters) and at what a recording transport saw go out and come back. Orderings and counts
are asserted, never durations; the few timeouts here only guard against hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import (
    Agent,
    MaxTurnsExceeded,
    ModelTurnFinished,
    RunEvent,
    RunFinished,
    Runner,
    RunResult,
    TextDelta,
    Tool,
    ToolCallFinished,
    ToolCallStarted,
    tool,
)
from hotloop.runtime.runner import REDUNDANT_EVENTS, STREAMED_TEXT_EVENTS
from hotloop.sim.latency import get_profile
from hotloop.sim.scenario import Scenario, ScriptedCall, Turn
from hotloop.transport import ModelRequest, OnEvent, Transport, TransportStats, connect
from hotloop.wire.events import Event
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Message
from support import CITIES, normalized

GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayServer]]

MODEL = "hotloop-sim"
#: A guard against hangs only; no assertion depends on how long anything takes.
GUARD = 10.0
#: 5 ms per output token: a turn's stream lasts long enough for a tool to start inside it.
SLOW = get_profile("zero").override(decode_tokens_per_s=200)
FINAL = "All done."

TransportName = Literal["websocket", "http", "chat"]


# -- helpers ------------------------------------------------------------------------------


def call(name: str, **arguments: Any) -> ScriptedCall:
    return ScriptedCall(name, json.dumps(arguments))


def script(*turns: Turn) -> Scenario:
    """A scenario of ``turns`` (tools unchecked: the agent's tools are what the model sees)."""
    return Scenario(name="custom", turns=(*turns, Turn(text=FINAL)))


class Recording:
    """A transport that records, in one shared log, the type of each event it yields.

    It also keeps every request it was asked to stream (what the model was sent) and the event
    types the runner said it would skip, and can offer the model extra tool definitions the
    agent does not have (a model that calls a tool the client does not know). The runner's
    ``skip`` reaches the inner transport unless ``whole_wire`` asks to log every event.
    """

    def __init__(
        self,
        inner: Transport,
        log: list[str] | None = None,
        extra_tools: Sequence[Mapping[str, Any]] = (),
        label: str = "",
        *,
        whole_wire: bool = False,
    ) -> None:
        self.inner = inner
        self.whole_wire = whole_wire
        self.skips: list[frozenset[str]] = []
        self.stats: TransportStats = inner.stats  # the same counters, not a copy
        self.log: list[str] = log if log is not None else []
        self.requests: list[ModelRequest] = []
        self.extra_tools = tuple(extra_tools)
        self.label = label

    def _prepare(self, request: ModelRequest) -> ModelRequest:
        if self.extra_tools:
            request = replace(request, tools=(*request.tools, *self.extra_tools))
        self.requests.append(request)
        return request

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        def logged(event: Event) -> None:
            self.log.append(self.label + event.type)
            on_event(event)

        self.skips.append(frozenset(skip))
        forwarded = () if self.whole_wire else skip
        await self.inner.stream_to(self._prepare(request), logged, skip=forwarded)

    async def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        async for event in self.inner.stream(self._prepare(request)):
            self.log.append(self.label + event.type)
            yield event

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def serve(
    gateway_factory: GatewayFactory,
) -> Callable[..., AbstractAsyncContextManager[Recording]]:
    """``async with serve(scenario, profile=..., transport=...) as client:`` (a Recording)."""

    @asynccontextmanager
    async def start(
        scenario: Scenario | None = None,
        *,
        profile: Any = "zero",
        transport: TransportName = "websocket",
        **options: Any,
    ) -> AsyncIterator[Recording]:
        async with gateway_factory(scenario=scenario, profile=profile) as server:
            client = Recording(connect(server.base_url, transport=transport, **options))
            try:
                yield client
            finally:
                await client.close()

    return start


def outputs(result: RunResult) -> list[FunctionCallOutput]:
    return [item for item in result.items if isinstance(item, FunctionCallOutput)]


def error_of(output: FunctionCallOutput) -> dict[str, Any]:
    assert isinstance(output.output, str)
    error: dict[str, Any] = json.loads(output.output)["error"]
    return error


@tool(reads=["weather:{city}"])
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city.
    """
    return f"Sunny in {city}."


def weather_agent(**options: Any) -> Agent:
    return Agent(MODEL, "You check the weather.", [get_weather], **options)


# -- eager dispatch -----------------------------------------------------------------------


def gated_tools(log: list[str]) -> list[Tool]:
    @tool(reads=["file:{path}"])
    async def look(path: str) -> str:
        """Look at a file."""
        log.append(f"tool-started:{path}")
        return f"seen {path}"

    return [look]


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_eager_dispatch_starts_the_first_tool_before_the_terminal_event(
    serve: Any, transport: TransportName
) -> None:
    # The second call's arguments take a few decode intervals to stream: the first call's
    # tool must start inside that window, before response.completed of the same turn.
    scenario = script(
        Turn(calls=(call("look", path="a.py"), call("look", path="some/longer/path/" + "b" * 80)))
    )
    log: list[str] = []
    async with serve(scenario, profile=SLOW, transport=transport) as inner:
        client = Recording(inner, log, whole_wire=True)
        result = await Runner.run(Agent(MODEL, tools=gated_tools(log)), "go", client=client)

    assert result.final_output == FINAL
    first_turn = log[: log.index("response.completed") + 1]
    started = first_turn.index("tool-started:a.py")
    assert first_turn.index("response.function_call_arguments.done") < started
    # More of the same turn streamed after the tool started: the second call's arguments.
    assert "response.function_call_arguments.delta" in first_turn[started:]


async def test_eager_dispatch_over_chat_completions(serve: Any) -> None:
    scenario = script(Turn(calls=(call("look", path="a.py"), call("look", path="b" * 40))))
    log: list[str] = []
    async with serve(scenario, profile=SLOW, transport="chat") as inner:
        client = Recording(inner, log, whole_wire=True)
        result = await Runner.run(Agent(MODEL, tools=gated_tools(log)), "go", client=client)

    assert result.final_output == FINAL
    assert log.index("tool-started:a.py") < log.index("response.completed")


async def test_non_eager_agent_starts_tools_after_the_terminal_event(serve: Any) -> None:
    scenario = script(Turn(calls=(call("look", path="a.py"), call("look", path="b.py"))))
    log: list[str] = []
    async with serve(scenario, profile=SLOW) as inner:
        client = Recording(inner, log)
        agent = Agent(MODEL, tools=gated_tools(log), eager=False)
        result = await Runner.run(agent, "go", client=client)

    assert result.final_output == FINAL
    completed = log.index("response.completed")
    assert completed < log.index("tool-started:a.py") < log.index("tool-started:b.py")


# -- scheduling rules end to end ----------------------------------------------------------


async def test_reads_of_different_and_same_resources_overlap(serve: Any) -> None:
    # Each read waits at a barrier until all three are running: they can only finish
    # (without timing out) if they overlap.
    barrier = asyncio.Barrier(3)

    @tool(reads=["file:{path}"], timeout=GUARD)
    async def read(path: str, replica: int) -> str:
        await barrier.wait()
        return f"{path}#{replica}"

    scenario = script(
        Turn(
            calls=(
                call("read", path="a", replica=0),
                call("read", path="b", replica=0),
                call("read", path="a", replica=1),
            )
        )
    )
    async with serve(scenario) as client:
        result = await Runner.run(Agent(MODEL, tools=[read]), "go", client=client)

    assert [o.output for o in outputs(result)] == ["a#0", "b#0", "a#1"]
    assert all(record.error is None for record in result.steps[0].tools)


async def test_a_write_keeps_model_order_against_accesses_of_its_resource(serve: Any) -> None:
    log: list[str] = []
    started: dict[int, asyncio.Event] = {tag: asyncio.Event() for tag in range(6)}

    async def access(kind: str, path: str, tag: int, wait_for: int | None) -> str:
        log.append(f"start {kind}{tag}")
        started[tag].set()
        if wait_for is not None:
            # Hold this call until a later call of the turn started: calls of the turn
            # in between were submitted meanwhile and had to wait for this one.
            await started[wait_for].wait()
        await asyncio.sleep(0)
        log.append(f"end {kind}{tag}")
        return f"{kind}{tag}:{path}"

    @tool(reads=["file:{path}"], timeout=GUARD)
    async def read(path: str, tag: int, wait_for: int | None = None) -> str:
        return await access("r", path, tag, wait_for)

    @tool(writes=["file:{path}"], timeout=GUARD)
    async def write(path: str, tag: int, wait_for: int | None = None) -> str:
        return await access("w", path, tag, wait_for)

    scenario = script(
        Turn(
            calls=(
                call("read", path="a", tag=0, wait_for=5),
                call("read", path="a", tag=1),
                call("write", path="a", tag=2),
                call("read", path="a", tag=3),
                call("write", path="a", tag=4),
                call("read", path="b", tag=5),
            )
        )
    )
    async with serve(scenario) as client:
        result = await Runner.run(Agent(MODEL, tools=[read, write]), "go", client=client)

    assert all(record.error is None for record in result.steps[0].tools)
    position = {entry: index for index, entry in enumerate(log)}
    # The reads of file:a overlap each other, and the read of file:b overlaps them.
    assert position["start r1"] < position["end r0"]
    assert position["start r5"] < position["end r0"]
    # The write waits for both earlier reads; later accesses wait for the write, in order.
    assert max(position["end r0"], position["end r1"]) < position["start w2"]
    assert position["end w2"] < position["start r3"]
    assert position["end r3"] < position["start w4"]
    assert [o.output for o in outputs(result)] == [
        "r0:a",
        "r1:a",
        "w2:a",
        "r3:a",
        "w4:a",
        "r5:b",
    ]


async def test_undeclared_tools_run_alone(serve: Any) -> None:
    log: list[str] = []
    running = 0
    seen_by_exclusive: list[int] = []

    @tool(pure=True)
    async def compute(tag: int) -> str:
        nonlocal running
        running += 1
        log.append(f"start p{tag}")
        for _ in range(5):
            await asyncio.sleep(0)  # give a wrongly admitted call every chance to start
        log.append(f"end p{tag}")
        running -= 1
        return f"p{tag}"

    @tool
    async def shell(tag: int) -> str:
        nonlocal running
        running += 1
        log.append(f"start x{tag}")
        for _ in range(5):
            await asyncio.sleep(0)
            seen_by_exclusive.append(running)
        log.append(f"end x{tag}")
        running -= 1
        return f"x{tag}"

    scenario = script(
        Turn(
            calls=(
                call("compute", tag=0),
                call("compute", tag=1),
                call("shell", tag=2),
                call("compute", tag=3),
                call("shell", tag=4),
            )
        )
    )
    async with serve(scenario) as client:
        result = await Runner.run(Agent(MODEL, tools=[compute, shell]), "go", client=client)

    assert set(seen_by_exclusive) == {1}
    x2, x4 = log.index("start x2"), log.index("start x4")
    assert log[x2 : x2 + 2] == ["start x2", "end x2"]
    assert log[x4 : x4 + 2] == ["start x4", "end x4"]
    assert max(log.index("end p0"), log.index("end p1")) < x2
    assert log.index("end x2") < log.index("start p3") < log.index("end p3") < x4
    assert [o.output for o in outputs(result)] == ["p0", "p1", "x2", "p3", "x4"]


async def test_results_reach_the_model_in_call_order(serve: Any) -> None:
    finished: list[int] = []
    done = {tag: asyncio.Event() for tag in range(3)}

    @tool(pure=True, timeout=GUARD)
    async def job(tag: int, after: list[int]) -> str:
        for other in after:
            await done[other].wait()
        finished.append(tag)
        done[tag].set()
        return f"job {tag}"

    # Call 0 finishes last, call 2 first.
    scenario = Scenario(
        name="order",
        turns=(
            Turn(
                text="Three jobs.",
                calls=(
                    call("job", tag=0, after=[1]),
                    call("job", tag=1, after=[2]),
                    call("job", tag=2, after=[]),
                ),
            ),
            Turn(text=FINAL),
        ),
    )
    async with serve(scenario) as client:
        result = await Runner.run(Agent(MODEL, tools=[job]), "go", client=client)

    assert finished == [2, 1, 0]
    calls = [item for item in result.items if isinstance(item, FunctionCall)]
    results = outputs(result)
    assert [o.call_id for o in results] == [c.call_id for c in calls]
    assert [o.output for o in results] == ["job 0", "job 1", "job 2"]
    # What the model got on the second turn: the three results, in the model's call order.
    second = client.requests[1]
    sent = [item for item in second.new_items if isinstance(item, FunctionCallOutput)]
    assert [o.output for o in sent] == ["job 0", "job 1", "job 2"]
    assert [o.call_id for o in sent] == [c.call_id for c in calls]
    assert client.stats.incremental_requests == 1
    assert result.final_output == FINAL


# -- failures are results for the model ---------------------------------------------------


async def test_failing_tools_give_error_results_and_the_loop_carries_on(serve: Any) -> None:
    timed_out: list[str] = []

    @tool(pure=True)
    async def boom(reason: str) -> str:
        raise RuntimeError(f"kaboom: {reason}")

    @tool(pure=True, timeout=0.05)
    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            timed_out.append("cancelled")
            raise
        return "never"

    @tool(pure=True)
    def square(n: int) -> int:
        return n * n

    ghost = {
        "type": "function",
        "name": "ghost",
        "description": "A tool the client does not have.",
        "parameters": {"type": "object", "properties": {}},
    }
    scenario = script(
        Turn(
            calls=(
                call("boom", reason="disk"),
                call("slow"),
                call("square", n="abc"),
                ScriptedCall("square", '{"n": 3'),
                call("ghost"),
                call("square", n=4),
            )
        ),
    )
    async with serve(scenario) as inner:
        client = Recording(inner, extra_tools=[ghost])
        agent = Agent(MODEL, tools=[boom, slow, square])
        result = await Runner.run(agent, "go", client=client)

    assert result.final_output == FINAL
    assert result.turns == 2
    boom_out, slow_out, wrong_type, bad_json, ghost_out, good = outputs(result)
    assert error_of(boom_out) == {"type": "tool_error", "message": "RuntimeError: kaboom: disk"}
    assert error_of(slow_out) == {"type": "timeout", "message": "slow timed out after 0.05 s"}
    assert timed_out == ["cancelled"]
    wrong = error_of(wrong_type)
    assert wrong["type"] == "invalid_arguments"
    assert "invalid arguments for square: n: Input should be a valid integer" in wrong["message"]
    assert error_of(bad_json)["type"] == "invalid_arguments"
    assert "Invalid JSON" in error_of(bad_json)["message"]
    assert error_of(ghost_out) == {
        "type": "unknown_tool",
        "message": "no tool named 'ghost'; available: boom, slow, square",
    }
    assert good.output == "16"
    errors = [record.error for record in result.steps[0].tools]
    assert errors[:5] == [
        "RuntimeError: kaboom: disk",
        "slow timed out after 0.05 s",
        wrong["message"],
        error_of(bad_json)["message"],
        "unknown tool",
    ]
    assert errors[5] is None
    # The model got all six results, errors included, in call order.
    sent = [item for item in client.requests[1].new_items if isinstance(item, FunctionCallOutput)]
    assert sent == outputs(result)


async def test_resources_that_cannot_be_worked_out_are_that_calls_error(serve: Any) -> None:
    """A declaration the model's arguments do not fit (a template naming a field left out, a
    function that raises or returns no keys) is an ``invalid_arguments`` result for that call:
    it never runs, and the other calls and the loop carry on."""
    ran: list[str] = []

    def owner(args: Mapping[str, Any]) -> list[str]:
        return [f"users/{args['user']['id']}"]

    @tool(reads=["repo/{where[path]}"])
    async def peek(where: dict[str, str] | None = None) -> str:
        ran.append("peek")
        return "seen"

    @tool(reads=[owner])
    async def profile(user: dict[str, str]) -> str:
        ran.append("profile")
        return "profile"

    @tool(reads=[lambda args: None])  # type: ignore[arg-type,return-value]
    async def broken() -> str:
        ran.append("broken")
        return "never"

    @tool(pure=True)
    def square(n: int) -> int:
        return n * n

    scenario = script(
        Turn(
            calls=(
                call("peek"),
                call("profile", user={"name": "ada"}),
                call("broken"),
                call("square", n=4),
            )
        ),
    )
    async with serve(scenario) as client:
        agent = Agent(MODEL, tools=[peek, profile, broken, square])
        result = await Runner.run(agent, "go", client=client)

    assert result.final_output == FINAL
    peeked, profiled, broke, good = outputs(result)
    for output, name, problem in (
        (peeked, "peek", "TypeError: 'NoneType' object is not subscriptable"),
        (profiled, "profile", "KeyError: 'id'"),
        (broke, "broken", "TypeError: 'NoneType' object is not iterable"),
    ):
        assert error_of(output) == {
            "type": "invalid_arguments",
            "message": f"the resources of {name} cannot be worked out from these arguments: "
            + problem,
        }
    assert good.output == "16" and ran == []


# -- cancellation -------------------------------------------------------------------------


class Sleeper:
    """A tool that sleeps until cancelled, and reports when it started and was cancelled."""

    def __init__(self, name: str = "sleep", *, exclusive: bool = False) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.runs = 0

        async def sleep(tag: int = 0) -> str:
            self.runs += 1
            self.started.set()
            try:
                await asyncio.sleep(GUARD)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return "woke up"

        self.tool = tool(name=name)(sleep) if exclusive else tool(name=name, pure=True)(sleep)


async def test_cancelling_a_run_cancels_its_tools(serve: Any) -> None:
    sleeper = Sleeper()
    async with serve(script(Turn(calls=(call("sleep"),)))) as client:
        run = asyncio.create_task(
            Runner.run(Agent(MODEL, tools=[sleeper.tool]), "go", client=client)
        )
        await asyncio.wait_for(sleeper.started.wait(), GUARD)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.wait_for(sleeper.cancelled.wait(), GUARD)


async def test_cancelling_a_run_mid_stream_cancels_eagerly_started_tools(serve: Any) -> None:
    # The tool starts while the turn still streams a long second call; the run is cancelled
    # before the turn's terminal event arrived.
    sleeper = Sleeper()
    log: list[str] = []

    @tool(pure=True)
    async def note(text: str) -> str:
        return text

    scenario = script(Turn(calls=(call("sleep"), call("note", text="x" * 400))))
    async with serve(scenario, profile=SLOW) as inner:
        client = Recording(inner, log)
        agent = Agent(MODEL, tools=[sleeper.tool, note])
        run = asyncio.create_task(Runner.run(agent, "go", client=client))
        await asyncio.wait_for(sleeper.started.wait(), GUARD)
        assert "response.completed" not in log
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.wait_for(sleeper.cancelled.wait(), GUARD)


async def test_cancelling_a_run_never_starts_its_waiting_tools(serve: Any) -> None:
    # Two exclusive calls: the second waits for the first. Cancelling the run while the first
    # runs must not let the second start once the first is gone.
    first, second = Sleeper("first", exclusive=True), Sleeper("second", exclusive=True)
    scenario = script(Turn(calls=(call("first"), call("second"))))
    async with serve(scenario) as client:
        agent = Agent(MODEL, tools=[first.tool, second.tool])
        run = asyncio.create_task(Runner.run(agent, "go", client=client))
        await asyncio.wait_for(first.started.wait(), GUARD)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.wait_for(first.cancelled.wait(), GUARD)
        for _ in range(10):
            await asyncio.sleep(0)
    assert second.runs == 0


async def test_leaving_run_stream_early_cancels_the_run(serve: Any) -> None:
    sleeper = Sleeper()
    async with serve(script(Turn(calls=(call("sleep"),)))) as client:
        agent = Agent(MODEL, tools=[sleeper.tool])
        seen: list[RunEvent] = []
        async with contextlib.aclosing(Runner.run_stream(agent, "go", client=client)) as events:
            async for event in events:
                seen.append(event)
                if isinstance(event, ToolCallStarted):
                    break
        await asyncio.wait_for(sleeper.cancelled.wait(), GUARD)
    assert isinstance(seen[-1], ToolCallStarted)
    assert not any(isinstance(event, RunFinished) for event in seen)


# -- turns and conversations --------------------------------------------------------------


async def test_max_turns_raises(gateway: GatewayServer) -> None:
    client = connect(gateway.base_url)
    try:
        with pytest.raises(MaxTurnsExceeded, match="max_turns=3") as caught:
            await Runner.run(weather_agent(), "go", client=client, max_turns=3)
        assert caught.value.max_turns == 3
        assert sum(isinstance(item, FunctionCallOutput) for item in caught.value.items) == 3
        with pytest.raises(MaxTurnsExceeded, match="max_turns=2"):
            await Runner.run(weather_agent(max_turns=2), "go", client=client)
    finally:
        await client.close()


async def test_a_second_run_continues_the_conversation(gateway: GatewayServer) -> None:
    client = connect(gateway.base_url)
    try:
        first = await Runner.run(weather_agent(), "Check the weather.", client=client)
        assert client.stats.requests == 10
        assert client.stats.full_resends == 1
        assert client.stats.incremental_requests == 9

        second = await Runner.run(weather_agent(), "And tomorrow?", client=client, previous=first)
    finally:
        await client.close()

    # Only the new user message went out, on top of the first run's last response.
    assert client.stats.requests == 11
    assert client.stats.incremental_requests == 10
    assert client.stats.full_resends == 1
    assert client.stats.connections_opened == 1
    assert second.final_output == "Understood. (Simulated reply to: 'And tomorrow?'.)"
    assert second.items[: len(first.items)] == first.items
    new = second.items[len(first.items) :]
    assert [type(item) for item in new] == [Message, Message]
    assert [item.role for item in new if isinstance(item, Message)] == ["user", "assistant"]
    assert second.turns == 1


async def test_multi_turn_items_hold_the_whole_history(gateway: GatewayServer) -> None:
    client = connect(gateway.base_url)
    try:
        result = await Runner.run(weather_agent(), "Check the weather.", client=client)
    finally:
        await client.close()

    assert result.final_output == "All ten steps are done: the weather is fine everywhere."
    assert result.turns == 10
    assert result.tool_calls == 10
    kinds = [item.type for item in result.items]
    expected = ["message"]
    for turn in range(9):
        calls = 2 if turn == 3 else 1
        expected += ["message", *["function_call"] * calls, *["function_call_output"] * calls]
    expected.append("message")
    assert kinds == expected
    cities = [json.loads(c.arguments)["city"] for c in result.function_calls]
    assert cities == [*CITIES[:4], "Tokyo", *CITIES[4:9]]
    assert [o.output for o in outputs(result)] == [f"Sunny in {city}." for city in cities]
    assert result.usage.output_tokens == sum(
        step.usage.output_tokens for step in result.steps if step.usage is not None
    )
    assert result.last_response_id == result.steps[-1].response_id


# -- streaming and sync -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_run_skips_streamed_text_and_loses_nothing(serve: Any, transport: str) -> None:
    # Text before a call, then a plain answer: every kind of item, on a paced profile.
    scenario = script(Turn(text="Let me look at that.", calls=(call("look", path="a.py"),)))
    log: list[str] = []
    async with serve(scenario, profile=SLOW, transport=transport) as client:
        ran = await Runner.run(Agent(MODEL, tools=gated_tools(log)), "go", client=client)
        run_skips = set(client.skips)
        client.skips.clear()
        streamed = [
            event
            async for event in Runner.run_stream(
                Agent(MODEL, tools=gated_tools(log)), "go", client=client
            )
        ]
        stream_skips = set(client.skips)
    assert run_skips == {REDUNDANT_EVENTS | STREAMED_TEXT_EVENTS}
    assert stream_skips == {REDUNDANT_EVENTS}  # text deltas are streamed to the caller
    final = streamed[-1]
    assert isinstance(final, RunFinished)
    assert "".join(e.delta for e in streamed if isinstance(e, TextDelta) and e.turn == 1) == (
        "Let me look at that."
    )
    # The same answer and the same history, with or without the skipped events.
    assert ran.final_output == final.result.final_output == FINAL
    assert normalized(ran.items) == normalized(final.result.items)
    for result in (ran, final.result):
        for step in result.steps:
            # The first token is the first output item's: after the response began, never
            # after the response ended, and before any call of the turn was ready.
            assert step.first_event_ns is not None and step.first_token_ns is not None
            assert step.response_done_ns is not None
            assert step.first_event_ns <= step.first_token_ns <= step.response_done_ns
            assert all(step.first_token_ns <= tool.args_complete_ns for tool in step.tools)


async def test_run_stream_yields_events_in_order(gateway: GatewayServer) -> None:
    client = connect(gateway.base_url)
    try:
        events = [event async for event in Runner.run_stream(weather_agent(), "go", client=client)]
    finally:
        await client.close()

    assert isinstance(events[-1], RunFinished)
    assert sum(isinstance(event, RunFinished) for event in events) == 1
    result = events[-1].result
    assert result.turns == 10

    turn_ends = [e for e in events if isinstance(e, ModelTurnFinished)]
    assert [e.turn for e in turn_ends] == list(range(1, 11))
    assert [e.tool_calls for e in turn_ends] == [1, 1, 1, 2, 1, 1, 1, 1, 1, 0]
    assert [e.response_id for e in turn_ends] == [s.response_id for s in result.steps]

    text = "".join(e.delta for e in events if isinstance(e, TextDelta) and e.turn == 10)
    assert text == result.final_output

    position = {id(event): index for index, event in enumerate(events)}
    for turn in range(1, 11):
        end = position[id(turn_ends[turn - 1])]
        of_turn = [e for e in events if getattr(e, "turn", None) == turn]
        # Text of a turn streams before its end; every tool finishes before the next turn.
        assert all(position[id(e)] < end for e in of_turn if isinstance(e, TextDelta))
        if turn < 10:
            next_start = min(
                position[id(e)] for e in events if getattr(e, "turn", None) == turn + 1
            )
            assert all(position[id(e)] < next_start for e in of_turn)
    started = {e.call_id: position[id(e)] for e in events if isinstance(e, ToolCallStarted)}
    finished = {e.call_id: position[id(e)] for e in events if isinstance(e, ToolCallFinished)}
    assert started.keys() == finished.keys() == {c.call_id for c in result.function_calls}
    assert all(started[call_id] < finished[call_id] for call_id in started)
    for event in events:
        if isinstance(event, ToolCallFinished):
            assert event.error is None
            assert event.output.startswith("Sunny in ")
            # Results are reported after the model turn that made the call ended.
            assert position[id(turn_ends[event.turn - 1])] < position[id(event)]


async def test_run_sync_works_from_sync_code(gateway: GatewayServer) -> None:
    @tool(reads=["weather:{city}"])
    def get_weather(city: str) -> str:  # a sync tool in a sync program
        return f"Sunny in {city}."

    agent = Agent(MODEL, "You check the weather.", [get_weather])
    result = await asyncio.to_thread(Runner.run_sync, agent, "go", base_url=gateway.base_url)
    assert result.final_output == "All ten steps are done: the weather is fine everywhere."
    assert result.turns == 10


# -- transports ---------------------------------------------------------------------------

TRANSPORTS: list[tuple[TransportName, dict[str, Any]]] = [
    ("websocket", {}),
    ("http", {"incremental": False}),
    ("http", {"incremental": True}),
    ("chat", {}),
]


async def test_all_transports_give_the_same_run(gateway: GatewayServer) -> None:
    runs: list[tuple[str, list[tuple[str, str]], list[Any], TransportStats]] = []
    for name, options in TRANSPORTS:
        client = connect(gateway.base_url, transport=name, **options)
        try:
            result = await Runner.run(weather_agent(), "Check the weather.", client=client)
        finally:
            await client.close()
        sequence = [(c.name, c.arguments) for c in result.function_calls]
        runs.append(
            (result.final_output, sequence, [o.output for o in outputs(result)], client.stats)
        )

    reference = runs[0]
    assert len(reference[1]) == 10
    for final_output, sequence, results, stats in runs:
        assert final_output == reference[0]
        assert sequence == reference[1]
        assert results == reference[2]
        assert stats.requests == 10
    websocket, stateless, incremental, chat = (run[3] for run in runs)
    assert (websocket.incremental_requests, websocket.full_resends) == (9, 1)
    assert (stateless.incremental_requests, stateless.full_resends) == (0, 10)
    assert (incremental.incremental_requests, incremental.full_resends) == (9, 1)
    assert (chat.incremental_requests, chat.full_resends) == (0, 10)
    # Full resends cost more bytes than incremental turns.
    assert websocket.bytes_sent < stateless.bytes_sent


async def test_concurrent_runs_share_one_websocket(gateway_factory: GatewayFactory) -> None:
    log: list[str] = []
    async with gateway_factory(profile=SLOW) as server:
        inner = connect(server.base_url)
        try:
            clients = [Recording(inner, log, label=f"{lane}:") for lane in "ab"]
            first, second = await asyncio.gather(
                *(Runner.run(weather_agent(), "go", client=client) for client in clients)
            )
        finally:
            await inner.close()

    assert first.final_output == second.final_output
    assert [c.arguments for c in first.function_calls] == [
        c.arguments for c in second.function_calls
    ]
    assert first.last_response_id != second.last_response_id
    assert inner.stats.connections_opened == 1
    assert inner.stats.requests == 20
    assert inner.stats.incremental_requests == 18
    # The two runs' streams interleave on the one socket.
    a_first = log.index("a:response.created")
    a_done = log.index("a:response.completed")
    b_first = log.index("b:response.created")
    b_done = log.index("b:response.completed")
    assert a_first < b_done and b_first < a_done


# -- the step record ----------------------------------------------------------------------


async def test_step_records_are_coherent(gateway: GatewayServer) -> None:
    client = connect(gateway.base_url)
    try:
        result = await Runner.run(weather_agent(), "go", client=client)
    finally:
        await client.close()

    assert [step.turn for step in result.steps] == list(range(1, 11))
    previous_end = 0
    for step in result.steps:
        assert step.attempts == 1
        assert step.response_id is not None
        assert step.first_event_ns is not None and step.first_token_ns is not None
        assert step.response_done_ns is not None
        assert previous_end <= step.request_sent_ns <= step.first_event_ns
        assert step.first_event_ns <= step.first_token_ns <= step.response_done_ns
        for record in step.tools:
            assert record.started_ns is not None and record.finished_ns is not None
            assert step.request_sent_ns <= record.args_complete_ns <= record.started_ns
            assert record.started_ns <= record.finished_ns
            assert record.error is None and not record.reused
        if step.tools:
            assert step.tools_done_ns is not None
            assert step.response_done_ns <= step.tools_done_ns
            assert max(r.finished_ns or 0 for r in step.tools) <= step.tools_done_ns
            previous_end = step.tools_done_ns
        else:
            assert step.tools_done_ns is None
    assert [len(step.tools) for step in result.steps] == [1, 1, 1, 2, 1, 1, 1, 1, 1, 0]
    assert result.steps[-1].response_done_ns is not None
    assert result.steps[-1].response_done_ns <= result.wall_ns
