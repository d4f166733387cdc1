"""OpenTelemetry export: each run becomes one OTel trace, its spans nested as ours are.

Needs the ``otel`` extra (``pip install 'hotloop[otel]'``); nothing else in hotloop imports this
module, so hotloop works without it::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from hotloop.trace import Tracer
    from hotloop.trace.otel import OTelSink

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))   # OTLP, console, ...
    with Tracer([OTelSink(provider)]) as tracer:
        await Runner.run(agent, task, client=client, trace=tracer)

Spans are named as the OpenTelemetry GenAI semantic conventions name them
(:data:`~hotloop.trace.spans.GENAI_SPANS`): ``invoke_agent {agent}``, ``chat {model}`` (kind
``CLIENT``), ``execute_tool {tool}``; the others keep our names. Every span carries our name as
``hotloop.span``, and a failed tool call (``error.type``) has status ``ERROR``.

OTel assigns its own trace and span ids; ours are kept as ``hotloop.trace_id`` on the root span.
Our times are monotonic (``perf_counter_ns``); OTel wants wall-clock nanoseconds, so one
offset, taken when the sink is made, converts them all (durations stay exact).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

from hotloop.trace.spans import (
    GENAI_SPANS,
    SPAN_KIND_ATTRIBUTE,
    Span,
    exported_name,
    span_kind,
)

__all__ = ["OTelSink"]


def _depth(span: Span, parents: dict[str, str | None]) -> int:
    depth = 0
    parent = span.parent_id
    while parent is not None and depth < 64:
        depth += 1
        parent = parents.get(parent)
    return depth


class OTelSink:
    """Exports traces through ``tracer_provider`` (default: the global provider)."""

    def __init__(self, tracer_provider: otel.TracerProvider | None = None) -> None:
        self.provider = tracer_provider or otel.get_tracer_provider()
        self._tracer = self.provider.get_tracer("hotloop")
        self.epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        self.exported = 0

    def export(self, spans: Sequence[Span]) -> None:
        # Parents must exist before their children: ours come in that order, but sort by
        # depth anyway so any order of one trace works.
        parents = {span.span_id: span.parent_id for span in spans}
        ordered = sorted(spans, key=lambda span: _depth(span, parents))
        created: dict[str, otel.Span] = {}
        offset = self.epoch_offset_ns
        for span in ordered:
            parent = created.get(span.parent_id) if span.parent_id is not None else None
            # An empty context, not the current one: every run is a trace of its own.
            context = otel.set_span_in_context(parent) if parent is not None else Context()
            kind = span_kind(span)
            operation = GENAI_SPANS.get(kind)
            attributes = dict(span.attributes)
            attributes[SPAN_KIND_ATTRIBUTE] = kind
            if operation is not None:
                # Traces written before the spans carried it still get the operation.
                attributes.setdefault("gen_ai.operation.name", operation.operation)
            if span.parent_id is None:
                attributes["hotloop.trace_id"] = span.trace_id
            client = operation is not None and operation.client
            created[span.span_id] = started = self._tracer.start_span(
                exported_name(span),
                context=context,
                kind=otel.SpanKind.CLIENT if client else otel.SpanKind.INTERNAL,
                attributes=attributes,
                start_time=span.start_ns + offset,
            )
            error = attributes.get("error.type")
            if error is not None:
                started.set_status(Status(StatusCode.ERROR, str(error)))
            started.end(end_time=span.end_ns + offset)
        self.exported += len(ordered)

    def flush(self, timeout: float | None = None) -> bool:
        force_flush = getattr(self.provider, "force_flush", None)
        if force_flush is None:
            return True
        millis = 30_000 if timeout is None else int(timeout * 1000)
        return bool(force_flush(millis))

    def close(self) -> None:
        """Nothing to release: the provider belongs to the caller, who shuts it down."""
