"""Spans of real runs: one trace per run, nested as the phases are, every phase covered.

Runs go over a real gateway on loopback (``zero`` profile) with each client transport. The
tests assert structure and order (which span is whose parent, which phase comes first), never
durations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import httpx
import pytest

from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, RunFinished, Runner, RunResult
from hotloop.testing import scenario_tools
from hotloop.trace import (
    MemorySink,
    Span,
    Tracer,
    group_traces,
    span_from_dict,
    span_to_dict,
    spans_from_result,
    steps_from_spans,
    timeline_from_result,
    timeline_from_spans,
)
from hotloop.transport import (
    HTTPTransport,
    ModelRequest,
    RequestTimings,
    WebSocketTransport,
    connect,
)
from hotloop.wire.items import items_from_input
from support import ten_turn_scenario, weather_failing_in
from wsproxy import WebSocketProxy

RunTen = Callable[..., Awaitable[RunResult]]
TransportName = Literal["websocket", "http", "chat"]
SCENARIO = ten_turn_scenario()
TOOLS = tuple(each.definition() for each in scenario_tools(SCENARIO))

MODEL_PHASES = (
    "model.encode",
    "model.send",
    "model.first_event",
    "model.first_token",
    "model.generation",
)


def children(spans: Sequence[Span], parent: Span) -> list[Span]:
    return [span for span in spans if span.parent_id == parent.span_id]


def named(spans: Sequence[Span], parent: Span, name: str) -> list[Span]:
    return [span for span in children(spans, parent) if span.name == name]


def assert_well_nested(spans: Sequence[Span]) -> Span:
    """One trace, one root, every parent present and enclosing its children; the root."""
    assert len({span.trace_id for span in spans}) == 1
    assert len({span.span_id for span in spans}) == len(spans)
    roots = [span for span in spans if span.parent_id is None]
    assert len(roots) == 1
    by_id = {span.span_id: span for span in spans}
    for index, span in enumerate(spans):
        assert span.start_ns <= span.end_ns, span
        if span.parent_id is None:
            continue
        parent = by_id[span.parent_id]
        assert spans.index(parent) < index, "parents come before their children"
        assert parent.start_ns <= span.start_ns <= span.end_ns <= parent.end_ns, (parent, span)
    return roots[0]


@pytest.mark.parametrize("transport", ["websocket", "http", "chat"])
async def test_spans_nest_and_cover_every_phase(run_ten: RunTen, transport: TransportName) -> None:
    result = await run_ten(transport)
    spans = spans_from_result(result, run_name="ten")

    root = assert_well_nested(spans)
    assert root.name == "run"
    assert root.start_ns == result.started_ns
    assert root.duration_ns == result.wall_ns
    assert root.attributes["hotloop.run.name"] == "ten"
    assert root.attributes["hotloop.run.turns"] == len(SCENARIO.turns)
    assert root.attributes["hotloop.run.tool_calls"] == SCENARIO.total_calls

    turns = children(spans, root)
    assert [span.name for span in turns] == ["turn"] * len(SCENARIO.turns)
    assert [span.attributes["hotloop.turn"] for span in turns] == list(range(1, 11))
    for index, turn in enumerate(turns):
        step = result.steps[index]
        (request,) = named(spans, turn, "model.request")
        phases = children(spans, request)
        expected = (("model.connect",) if index == 0 else ()) + MODEL_PHASES
        assert Counter(span.name for span in phases) == Counter(expected)
        by_name = {span.name: span for span in phases}
        # The phases of a request follow each other.
        ends = [by_name[name].end_ns for name in MODEL_PHASES]
        assert ends == sorted(ends)
        assert by_name["model.first_event"].start_ns == by_name["model.send"].end_ns
        assert by_name["model.generation"].end_ns == request.end_ns
        assert request.attributes["hotloop.turn"] == step.turn
        assert request.attributes["gen_ai.response.id"] == step.response_id
        assert request.attributes["hotloop.request.bytes"] == step.request_bytes > 0
        # Every tool call: arguments complete → started → finished.
        calls = named(spans, turn, "tool.call")
        assert len(calls) == len(SCENARIO.turns[index].calls) == len(step.tools)
        for call, record in zip(calls, step.tools, strict=True):
            assert call.attributes["gen_ai.tool.name"] == "get_weather"
            assert call.attributes["gen_ai.tool.call.id"] == record.call_id
            (wait,) = named(spans, call, "tool.wait")
            (run,) = named(spans, call, "tool.run")
            assert wait.start_ns == call.start_ns
            assert wait.end_ns == run.start_ns
            assert run.end_ns == call.end_ns
        # Tool results → the next request, on every turn but the last.
        handoffs = named(spans, turn, "loop.next_request")
        assert len(handoffs) == (1 if index < len(turns) - 1 else 0)
        for handoff in handoffs:
            later = result.steps[index + 1]
            assert step.tools_done_ns is not None and later.request_written_ns is not None
            assert handoff.start_ns == result.started_ns + step.tools_done_ns
            assert handoff.end_ns == turns[index + 1].start_ns
            assert handoff.attributes["hotloop.results_to_sent_ns"] == (
                later.request_written_ns - step.tools_done_ns
            )


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_server_timings_split_network_from_server_time(
    run_ten: RunTen, transport: TransportName
) -> None:
    result = await run_ten(transport)
    spans = spans_from_result(result)
    requests = [span for span in spans if span.name == "model.request"]
    generations = [span for span in spans if span.name == "model.generation"]
    assert len(requests) == len(generations) == len(result.steps)
    for step, request, generation in zip(result.steps, requests, generations, strict=True):
        assert step.server is not None
        for span in (request, generation):
            attributes = span.attributes
            for key in ("queue_ns", "gateway_pre_ns", "first_output_ns", "decode_ns"):
                assert attributes[f"hotloop.server.{key}"] == step.server[key]
            server_ns = attributes["hotloop.server_ns"]
            wait_ns = attributes["hotloop.client_wait_ns"]
            assert isinstance(server_ns, int) and isinstance(wait_ns, int)
            assert attributes["hotloop.network_ns"] == max(0, wait_ns - server_ns)
            assert server_ns > 0


async def test_chat_completions_has_no_server_timings(run_ten: RunTen) -> None:
    result = await run_ten("chat")
    request = next(span for span in spans_from_result(result) if span.name == "model.request")
    assert not any(key.startswith("hotloop.server") for key in request.attributes)
    assert "hotloop.network_ns" not in request.attributes


async def test_request_timings_reach_the_step_records(run_ten: RunTen) -> None:
    result = await run_ten("websocket")
    first, *rest = result.steps
    # Turn 1 opened the socket, then encoded and sent the whole history.
    assert first.connect_start_ns is not None and first.connect_end_ns is not None
    assert first.request_encoded_ns is not None and first.request_written_ns is not None
    assert (
        first.request_sent_ns
        <= first.connect_start_ns
        <= first.connect_end_ns
        <= first.request_encoded_ns
        <= first.request_written_ns
    )
    assert not first.incremental
    for step, earlier in zip(rest, result.steps, strict=False):
        # A warm socket: no connect; only the new items.
        assert step.connect_start_ns is None and step.connect_end_ns is None
        assert step.incremental
        assert step.request_written_ns is not None and earlier.tools_done_ns is not None
        assert earlier.tools_done_ns <= step.request_sent_ns <= step.request_written_ns
        assert step.request_written_ns <= (step.first_event_ns or 0)


async def test_http_timings_come_from_the_connection_pool(run_ten: RunTen) -> None:
    result = await run_ten("http", incremental=True)
    first, *rest = result.steps
    # HTTP encodes first, then the pool opens a connection inside the send.
    assert first.request_encoded_ns is not None and first.connect_start_ns is not None
    assert first.connect_end_ns is not None and first.request_written_ns is not None
    assert first.request_encoded_ns <= first.connect_start_ns <= first.connect_end_ns
    assert first.connect_end_ns <= first.request_written_ns
    assert all(step.connect_start_ns is None for step in rest)  # kept alive
    # Incremental HTTP: the whole history once, then previous_response_id.
    assert [step.incremental for step in result.steps] == [False] + [True] * len(rest)
    spans = spans_from_result(result)
    assert_well_nested(spans)
    assert sum(span.name == "model.connect" for span in spans) == 1


async def test_a_retried_turn_reports_its_last_attempt(gateway: GatewayServer) -> None:
    agent = Agent(
        f"hotloop-sim:{SCENARIO.name}",
        SCENARIO.instructions,
        scenario_tools(SCENARIO, time_scale=0),
    )
    async with WebSocketProxy(gateway.websocket_url) as proxy:
        # The socket drops after three events of turn 2: the runner sends the turn again.
        proxy.drop_client_after(n_events=3, on_turn=2)
        transport = WebSocketTransport(proxy.url)
        try:
            result = await Runner.run(agent, SCENARIO.task, client=transport)
        finally:
            await transport.close()
    retried = result.steps[1]
    assert retried.attempts == 2
    # The second attempt reconnected and sent the whole history.
    assert retried.connect_start_ns is not None
    assert retried.request_sent_ns < retried.connect_start_ns
    assert not retried.incremental
    spans = spans_from_result(result)
    assert_well_nested(spans)
    turn = [span for span in spans if span.name == "turn"][1]
    (request,) = named(spans, turn, "model.request")
    assert request.attributes["hotloop.attempts"] == 2
    assert children(spans, request)[0].name == "model.connect"


async def test_the_runner_calls_the_hook_once_per_run(gateway: GatewayServer) -> None:
    results: list[RunResult] = []
    agent = Agent(
        f"hotloop-sim:{SCENARIO.name}",
        SCENARIO.instructions,
        scenario_tools(SCENARIO, time_scale=0),
    )
    client = connect(gateway.base_url)
    try:
        first = await Runner.run(agent, SCENARIO.task, client=client, trace=results.append)
        events = [
            event
            async for event in Runner.run_stream(
                agent, SCENARIO.task, client=client, trace=results.append
            )
        ]
    finally:
        await client.close()
    final = events[-1]
    assert isinstance(final, RunFinished)
    assert results == [first, final.result]
    assert first.started_ns < final.result.started_ns


async def test_spans_read_back_into_the_same_timeline(run_ten: RunTen) -> None:
    result = await run_ten("websocket")
    spans = spans_from_result(result)
    assert [span_from_dict(span_to_dict(span)) for span in spans] == spans
    assert timeline_from_spans(spans) == timeline_from_result(result)
    steps = steps_from_spans(spans)
    assert [step.turn for step in steps] == [step.turn for step in result.steps]
    for read, step in zip(steps, result.steps, strict=True):
        assert read.request_written_ns == step.request_written_ns
        assert read.connect_start_ns == step.connect_start_ns
        assert read.tools_done_ns == (step.tools_done_ns if step.tools else None)
        assert [t.call_id for t in read.tools] == [t.call_id for t in step.tools]


async def test_a_tracer_with_a_memory_sink(run_ten: RunTen) -> None:
    memory = MemorySink()
    with Tracer([memory], run_name="warm") as tracer:
        await run_ten("websocket", trace=tracer, runs=2)
        await run_ten("http", trace=tracer.named("http"))
        assert tracer.flush(timeout=10)
    assert tracer.recorded == 3 and tracer.dropped == 0 and tracer.errors == 0
    roots = [span for span in memory.spans if span.parent_id is None]
    assert [root.attributes["hotloop.run.name"] for root in roots] == ["warm", "warm", "http"]
    assert len({root.trace_id for root in roots}) == 3
    for root in roots:
        assert isinstance(root.attributes["hotloop.run.start_unix_ns"], int)


def test_a_malformed_span_is_an_error() -> None:
    from hotloop.errors import HotloopError

    with pytest.raises(HotloopError):
        span_from_dict({"name": "run"})
    with pytest.raises(HotloopError):
        span_from_dict(
            {
                "name": "run",
                "trace_id": "a",
                "span_id": "b",
                "start_ns": 0,
                "end_ns": 1,
                "attributes": ["not", "an", "object"],
            }
        )
    with pytest.raises(HotloopError):
        steps_from_spans([Span("turn", "t", "s", "p", 0, 1)])


async def test_a_failed_tool_keeps_its_error(gateway: GatewayServer) -> None:
    get_weather = weather_failing_in("Rome")
    agent = Agent(f"hotloop-sim:{SCENARIO.name}", SCENARIO.instructions, [get_weather])
    client = connect(gateway.base_url)
    memory = MemorySink()
    try:
        with Tracer([memory]) as tracer:
            result = await Runner.run(agent, SCENARIO.task, client=client, trace=tracer)
            tracer.record(result, "again")
    finally:
        await client.close()
    traces = list(group_traces(memory.spans).values())
    assert [trace[0].attributes["hotloop.run.name"] for trace in traces] == ["run", "again"]
    errors = [
        span.attributes["hotloop.tool.error"]
        for span in traces[0]
        if span.name == "tool.call" and "hotloop.tool.error" in span.attributes
    ]
    assert errors == ["LookupError: no station in Rome"]
    assert timeline_from_spans(traces[0]) == timeline_from_result(result)


class UntracedHTTP(httpx.AsyncBaseTransport):
    """An httpx transport that hides the ``trace`` extension, as custom transports may."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {k: v for k, v in request.extensions.items() if k != "trace"}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_http_timings_without_the_trace_extension(gateway: GatewayServer) -> None:
    client = HTTPTransport(gateway.base_url)
    await client._client.aclose()
    client._client = httpx.AsyncClient(base_url=gateway.base_url, transport=UntracedHTTP())
    history = items_from_input(SCENARIO.task)
    model = f"hotloop-sim:{SCENARIO.name}"
    try:
        timings = RequestTimings()
        request = ModelRequest(model, history, tools=TOOLS, timings=timings)
        events = [event async for event in client.stream(request)]
        untimed = [event async for event in client.stream(ModelRequest(model, history))]
    finally:
        await client.close()
    assert events[-1].type == untimed[-1].type == "response.completed"
    # No connect reported; "sent" is when the body was handed to the HTTP client.
    assert timings.connect_start_ns is None and timings.connect_end_ns is None
    assert timings.encoded_ns is not None and timings.encoded_ns == timings.sent_ns
    assert timings.body_bytes > 0 and not timings.incremental
