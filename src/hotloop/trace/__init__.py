"""Traces of runs: timelines (waterfalls), spans and their sinks.

* :mod:`~hotloop.trace.timeline` — a run as bars, the data of every waterfall;
* :mod:`~hotloop.trace.spans` — a run as one trace of nested spans, and back;
* :mod:`~hotloop.trace.sinks` — :class:`Tracer` (the runner's ``trace`` hook) and the memory
  and JSONL sinks; :mod:`hotloop.trace.otel` — OpenTelemetry (the ``otel`` extra);
* :mod:`~hotloop.trace.render` — waterfalls in the terminal.
"""

from hotloop.trace.render import format_ns, render_trace, render_waterfall
from hotloop.trace.sinks import JSONLSink, MemorySink, SpanSink, Tracer, read_spans
from hotloop.trace.spans import (
    GENAI_SPANS,
    AttributeValue,
    GenAIOperation,
    Span,
    group_traces,
    span_from_dict,
    span_kind,
    span_to_dict,
    spans_from_result,
    steps_from_spans,
    timeline_from_spans,
)
from hotloop.trace.timeline import (
    PHASES,
    Bar,
    phase_totals,
    timeline_from_result,
    timeline_from_steps,
)

__all__ = [
    "GENAI_SPANS",
    "PHASES",
    "AttributeValue",
    "Bar",
    "GenAIOperation",
    "JSONLSink",
    "MemorySink",
    "Span",
    "SpanSink",
    "Tracer",
    "format_ns",
    "group_traces",
    "phase_totals",
    "read_spans",
    "render_trace",
    "render_waterfall",
    "span_from_dict",
    "span_kind",
    "span_to_dict",
    "spans_from_result",
    "steps_from_spans",
    "timeline_from_result",
    "timeline_from_spans",
    "timeline_from_steps",
]
