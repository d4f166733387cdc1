"""OpenTelemetry export end to end: real runs → Tracer → OTelSink → the SDK's in-memory exporter.

One OTel trace per run, spans nested as ours are (our names kept as ``hotloop.span``; the GenAI
operations named as the GenAI semantic conventions name them), the attributes carried over, and
monotonic times turned into wall-clock times with one offset.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind

from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.runtime import RunResult
from hotloop.trace import MemorySink, Span, Tracer, group_traces, spans_from_result
from hotloop.trace.otel import OTelSink
from support import ten_turn_scenario

MODEL = f"{DEFAULT_MODEL}:{ten_turn_scenario().name}"

RunTen = Callable[..., Awaitable[RunResult]]


def shape(spans: Sequence[Span]) -> Counter[tuple[str, str | None]]:
    """(name, parent's name) of every span of one of our traces."""
    names = {span.span_id: span.name for span in spans}
    return Counter((span.name, names.get(span.parent_id or "")) for span in spans)


def internal(span: ReadableSpan) -> str:
    """Our name of an exported span."""
    assert span.attributes is not None
    kind = span.attributes["hotloop.span"]
    assert isinstance(kind, str)
    return kind


def otel_shape(spans: Sequence[ReadableSpan]) -> Counter[tuple[str, str | None]]:
    """(our name, parent's) of every exported span."""
    names = {span.context.span_id: internal(span) for span in spans}
    return Counter(
        (internal(span), names.get(span.parent.span_id) if span.parent is not None else None)
        for span in spans
    )


async def test_each_run_is_one_otel_trace_nested_as_ours(run_ten: RunTen) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    memory = MemorySink()
    before = time.time_ns()
    with Tracer([memory, OTelSink(provider)], run_name="hotloop") as tracer:
        await run_ten("websocket", trace=tracer, runs=2)
    after = time.time_ns()
    assert tracer.errors == 0

    exported = exporter.get_finished_spans()
    assert len(exported) == len(memory.spans)
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in exported:
        assert span.context is not None
        by_trace.setdefault(span.context.trace_id, []).append(span)
    ours = list(group_traces(memory.spans).values())
    assert len(by_trace) == len(ours) == 2  # two runs, two traces

    for theirs, mine in zip(by_trace.values(), ours, strict=True):
        ids = {span.context.span_id for span in theirs if span.context is not None}
        roots = [span for span in theirs if span.parent is None]
        assert [root.name for root in roots] == ["invoke_agent agent"]
        root = roots[0]
        assert root.attributes is not None
        assert root.attributes["hotloop.run.name"] == "hotloop"
        assert root.attributes["hotloop.trace_id"] == mine[0].trace_id
        # Every parent is in the same trace, and the tree has our shape.
        for span in theirs:
            if span.parent is not None:
                assert span.parent.span_id in ids
        assert otel_shape(theirs) == shape(mine)
        assert ("model.generation", "model.request") in otel_shape(theirs)
        assert ("tool.run", "tool.call") in otel_shape(theirs)
        assert ("loop.next_request", "turn") in otel_shape(theirs)
        # Times: wall clock, durations exact, children inside their parents.
        by_id = {span.context.span_id: span for span in theirs if span.context is not None}
        assert root.start_time is not None and root.end_time is not None
        assert before - 1_000_000_000 <= root.start_time <= root.end_time <= after + 1_000_000_000
        assert root.end_time - root.start_time == mine[0].duration_ns
        for span in theirs:
            assert span.start_time is not None and span.end_time is not None
            if span.parent is not None:
                parent = by_id[span.parent.span_id]
                assert parent.start_time is not None and parent.end_time is not None
                assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
        # Kinds and attributes.
        requests = [span for span in theirs if internal(span) == "model.request"]
        assert len(requests) == 10
        for request in requests:
            assert request.name == f"chat {MODEL}"
            assert request.kind is SpanKind.CLIENT
            assert request.attributes is not None
            assert isinstance(request.attributes["hotloop.server.decode_ns"], int)
            assert isinstance(request.attributes["hotloop.network_ns"], int)
            assert isinstance(request.attributes["gen_ai.response.id"], str)
        calls = [span for span in theirs if internal(span) == "tool.call"]
        assert len(calls) == 10
        for call in calls:
            assert call.kind is SpanKind.INTERNAL
            assert call.attributes is not None
            assert call.attributes["gen_ai.tool.name"] == "get_weather"
            assert call.name == "execute_tool get_weather"
    provider.shutdown()


async def test_children_before_parents_still_nest(run_ten: RunTen) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = spans_from_result(await run_ten("websocket"))
    sink = OTelSink(provider)
    sink.export(list(reversed(spans)))
    assert sink.flush(timeout=5)
    sink.close()
    exported = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in exported if span.context}) == 1
    assert otel_shape(exported) == shape(spans)
    provider.shutdown()


def test_a_provider_without_force_flush() -> None:
    sink = OTelSink(NoOpTracerProvider())
    sink.export([Span("run", "t" * 32, "s" * 16, None, 0, 10)])
    assert sink.flush() is True
    assert sink.exported == 1
