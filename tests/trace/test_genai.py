"""Spans under the OpenTelemetry GenAI semantic conventions, content capture, old traces.

Real runs of the ten-turn scenario over a loopback gateway, exported through ``OTelSink`` to the
SDK's in-memory exporter: span names, operation names and the key attributes of the agent run
(``invoke_agent``), a model call (``chat``) and a tool execution (``execute_tool``); content only
when asked for; and a trace in the format written before these attributes still reads back.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hotloop.backends.sim import DEFAULT_MODEL
from hotloop.gateway import GatewayServer
from hotloop.runtime import Agent, Runner, RunResult
from hotloop.trace import (
    GENAI_SPANS,
    MemorySink,
    Span,
    Tracer,
    read_spans,
    span_kind,
    spans_from_result,
    steps_from_spans,
    timeline_from_result,
    timeline_from_spans,
)
from hotloop.trace.otel import OTelSink
from hotloop.trace.sinks import CAPTURE_CONTENT_ENV
from hotloop.trace.spans import exported_name
from hotloop.transport import connect
from support import ten_turn_scenario, weather_failing_in

RunTen = Callable[..., Awaitable[RunResult]]
SCENARIO = ten_turn_scenario()
MODEL = f"{DEFAULT_MODEL}:{SCENARIO.name}"
CONTENT = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
)


def exported(spans: Sequence[Span]) -> tuple[InMemorySpanExporter, TracerProvider]:
    """``spans`` exported through an ``OTelSink`` into an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OTelSink(provider).export(spans)
    return exporter, provider


def attributes(span: ReadableSpan) -> dict[str, object]:
    assert span.attributes is not None
    return dict(span.attributes)


def of_kind(spans: Sequence[ReadableSpan], kind: str) -> list[ReadableSpan]:
    return [span for span in spans if attributes(span)["hotloop.span"] == kind]


async def test_spans_follow_the_genai_conventions(run_ten: RunTen) -> None:
    result = await run_ten("websocket")
    spans = spans_from_result(result)
    exporter, provider = exported(spans)
    finished = exporter.get_finished_spans()
    provider.shutdown()

    (run,) = [span for span in finished if span.parent is None]
    assert run.name == "invoke_agent agent"
    assert run.kind is SpanKind.INTERNAL
    root = attributes(run)
    assert root["gen_ai.operation.name"] == "invoke_agent"
    assert root["gen_ai.provider.name"] == "openai"
    assert root["gen_ai.agent.name"] == "agent"
    assert root["gen_ai.request.model"] == MODEL
    assert root["gen_ai.usage.input_tokens"] == result.usage.input_tokens

    chats = of_kind(finished, "model.request")
    assert len(chats) == len(result.steps) == len(SCENARIO.turns)
    for chat, step in zip(chats, result.steps, strict=True):
        assert chat.name == f"chat {MODEL}"
        assert chat.kind is SpanKind.CLIENT
        found = attributes(chat)
        assert found["gen_ai.operation.name"] == "chat"
        assert found["gen_ai.provider.name"] == "openai"
        assert found["gen_ai.request.model"] == MODEL
        assert found["gen_ai.response.model"] == step.response_model
        assert isinstance(found["gen_ai.response.model"], str)
        assert found["gen_ai.response.id"] == step.response_id
        assert step.usage is not None
        assert found["gen_ai.usage.input_tokens"] == step.usage.input_tokens
        assert found["gen_ai.usage.output_tokens"] == step.usage.output_tokens
        assert found["server.address"] == "127.0.0.1"
        assert isinstance(found["server.port"], int) and found["server.port"] > 0
        assert "error.type" not in found

    tools = of_kind(finished, "tool.call")
    assert len(tools) == SCENARIO.total_calls
    records = [record for step in result.steps for record in step.tools]
    for span, record in zip(tools, records, strict=True):
        assert span.name == "execute_tool get_weather"
        assert span.kind is SpanKind.INTERNAL
        found = attributes(span)
        assert found["gen_ai.operation.name"] == "execute_tool"
        assert found["gen_ai.tool.name"] == "get_weather"
        assert found["gen_ai.tool.call.id"] == record.call_id
        assert found["gen_ai.tool.type"] == "function"
        assert span.status.status_code is StatusCode.UNSET

    # The other spans keep our names; every span has its own name as hotloop.span.
    for span in finished:
        if attributes(span)["hotloop.span"] not in GENAI_SPANS:
            assert span.name == attributes(span)["hotloop.span"]
            assert "gen_ai.operation.name" not in attributes(span)
    # Nothing of the conversation without opting in.
    assert not [key for span in finished for key in attributes(span) if key in CONTENT]
    assert not [key for span in spans for key in span.attributes if key in CONTENT]


async def test_content_is_captured_only_when_asked_for(
    run_ten: RunTen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    off, on, env = MemorySink(), MemorySink(), MemorySink()
    with Tracer([off]) as tracer:
        assert tracer.capture_content is False
        await run_ten("websocket", trace=tracer)
    with Tracer([on], capture_content=True) as tracer:
        result = await run_ten("websocket", trace=tracer)
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "True")
    with Tracer([env]) as tracer:
        assert tracer.capture_content is True
        await run_ten("websocket", trace=tracer)

    assert not [key for span in off.spans for key in span.attributes if key in CONTENT]
    for spans in (on.spans, env.spans):
        assert all(
            key in span.attributes
            for span in spans
            if span.name == "model.request"
            for key in ("gen_ai.input.messages", "gen_ai.output.messages")
        )

    requests = [span for span in on.spans if span.name == "model.request"]
    first_in = json.loads(str(requests[0].attributes["gen_ai.input.messages"]))
    assert first_in == [{"role": "user", "parts": [{"type": "text", "content": SCENARIO.task}]}]
    (first_out,) = json.loads(str(requests[0].attributes["gen_ai.output.messages"]))
    assert first_out["role"] == "assistant" and first_out["finish_reason"] == "tool_call"
    call_parts = [part for part in first_out["parts"] if part["type"] == "tool_call"]
    first_calls = result.steps[0].tools
    assert [part["id"] for part in call_parts] == [record.call_id for record in first_calls]
    assert call_parts[0]["name"] == "get_weather"
    assert isinstance(call_parts[0]["arguments"], dict)  # parsed, as the conventions ask
    # Turn 2's new input is turn 1's tool results.
    second_in = json.loads(str(requests[1].attributes["gen_ai.input.messages"]))
    assert [message["role"] for message in second_in] == ["tool"]
    responses = [part for part in second_in[0]["parts"] if part["type"] == "tool_call_response"]
    assert [part["id"] for part in responses] == [record.call_id for record in first_calls]
    # The last turn answers.
    (last_out,) = json.loads(str(requests[-1].attributes["gen_ai.output.messages"]))
    assert last_out["finish_reason"] == "stop"
    assert last_out["parts"] == [{"type": "text", "content": result.final_output}]

    calls = [span for span in on.spans if span.name == "tool.call"]
    assert calls[0].attributes["gen_ai.tool.call.arguments"] == first_calls[0].arguments
    assert calls[0].attributes["gen_ai.tool.call.result"] == responses[0]["response"]

    # The exported spans carry the same content.
    exporter, provider = exported(on.spans)
    chat = next(span for span in exporter.get_finished_spans() if span.name.startswith("chat "))
    assert (
        attributes(chat)["gen_ai.input.messages"] == requests[0].attributes["gen_ai.input.messages"]
    )
    provider.shutdown()


async def test_a_failed_tool_call_has_an_error_type(gateway: GatewayServer) -> None:
    get_weather = weather_failing_in("Rome")
    agent = Agent(MODEL, SCENARIO.instructions, [get_weather], name="forecaster")
    client = connect(gateway.base_url, transport="http")
    try:
        result = await Runner.run(agent, SCENARIO.task, client=client)
    finally:
        await client.close()
    exporter, provider = exported(spans_from_result(result, capture_content=True))
    finished = exporter.get_finished_spans()
    provider.shutdown()
    (run,) = [span for span in finished if span.parent is None]
    assert run.name == "invoke_agent forecaster"
    failed = [span for span in of_kind(finished, "tool.call") if "error.type" in attributes(span)]
    assert len(failed) == 1
    assert attributes(failed[0])["error.type"] == "LookupError"
    assert failed[0].status.status_code is StatusCode.ERROR
    # A failed call has no result, only its arguments.
    assert "gen_ai.tool.call.result" not in attributes(failed[0])
    assert "Rome" in str(attributes(failed[0])["gen_ai.tool.call.arguments"])
    # The model calls say where they went (the HTTP transport's base URL).
    chats = of_kind(finished, "model.request")
    assert chats and all(attributes(span)["server.address"] == "127.0.0.1" for span in chats)
    assert all(attributes(span)["server.port"] == gateway.port for span in chats)


#: A trace as hotloop wrote it before the spans carried GenAI attributes: one turn, one call.
OLD_TRACE = """\
{"name":"run","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a1","parent_id":null,"start_ns":1000000,"end_ns":9000000,"attributes":{"hotloop.run.name":"run","hotloop.run.turns":1,"hotloop.run.tool_calls":1,"gen_ai.usage.input_tokens":10,"gen_ai.usage.output_tokens":5}}
{"name":"turn","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a2","parent_id":"00000000000000a1","start_ns":1100000,"end_ns":8000000,"attributes":{"hotloop.turn":1,"hotloop.tool_calls":1}}
{"name":"model.request","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a3","parent_id":"00000000000000a2","start_ns":1100000,"end_ns":5000000,"attributes":{"hotloop.turn":1,"hotloop.attempts":1,"hotloop.request.bytes":300,"hotloop.request.incremental":false,"gen_ai.response.id":"resp_1","gen_ai.usage.input_tokens":10,"gen_ai.usage.output_tokens":5,"hotloop.usage.cached_tokens":0}}
{"name":"model.encode","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a4","parent_id":"00000000000000a3","start_ns":1100000,"end_ns":1200000,"attributes":{}}
{"name":"model.send","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a5","parent_id":"00000000000000a3","start_ns":1200000,"end_ns":1300000,"attributes":{"hotloop.bytes":300}}
{"name":"model.first_event","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a6","parent_id":"00000000000000a3","start_ns":1300000,"end_ns":2000000,"attributes":{"hotloop.ttfe_ns":900000}}
{"name":"model.first_token","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a7","parent_id":"00000000000000a3","start_ns":2000000,"end_ns":2500000,"attributes":{"hotloop.ttft_ns":1400000}}
{"name":"model.generation","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a8","parent_id":"00000000000000a3","start_ns":2500000,"end_ns":5000000,"attributes":{}}
{"name":"tool.call","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000a9","parent_id":"00000000000000a2","start_ns":3000000,"end_ns":8000000,"attributes":{"hotloop.turn":1,"gen_ai.tool.name":"get_weather","gen_ai.tool.call.id":"call_1","hotloop.tool.reused":false}}
{"name":"tool.wait","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000aa","parent_id":"00000000000000a9","start_ns":3000000,"end_ns":3500000,"attributes":{}}
{"name":"tool.run","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"00000000000000ab","parent_id":"00000000000000a9","start_ns":3500000,"end_ns":8000000,"attributes":{}}
"""


def test_a_trace_in_the_old_format_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(OLD_TRACE)
    spans = read_spans(path)
    (step,) = steps_from_spans(spans)
    assert step.turn == 1 and step.response_id == "resp_1" and step.response_model is None
    # Times relative to the run span: request sent at 0.1 ms, written at 0.3 ms, ...
    assert step.request_sent_ns == 100_000
    assert step.request_written_ns == 300_000
    assert step.first_event_ns == 1_000_000
    assert step.first_token_ns == 1_500_000
    assert step.response_done_ns == 4_000_000
    (call,) = step.tools
    assert (call.call_id, call.name) == ("call_1", "get_weather")
    assert (call.args_complete_ns, call.started_ns, call.finished_ns) == (
        2_000_000,
        2_500_000,
        7_000_000,
    )
    bars = timeline_from_spans(spans)
    assert bars and {bar.turn for bar in bars} == {1}

    # Exported, an old trace gets the GenAI operations too (no model: just the operation).
    exporter, provider = exported(spans)
    names = sorted(span.name for span in exporter.get_finished_spans())
    provider.shutdown()
    assert "invoke_agent" in names and "chat" in names
    assert "execute_tool get_weather" in names
    assert "model.generation" in names


async def test_spans_named_by_the_conventions_read_back(run_ten: RunTen) -> None:
    """A trace stored with the exported names (``hotloop.span`` set) reads as ours does."""
    result = await run_ten("websocket")
    spans = spans_from_result(result)
    renamed = [
        Span(
            exported_name(span),
            span.trace_id,
            span.span_id,
            span.parent_id,
            span.start_ns,
            span.end_ns,
            {**span.attributes, "hotloop.span": span.name},
        )
        for span in spans
    ]
    assert [span_kind(span) for span in renamed] == [span.name for span in spans]
    assert timeline_from_spans(renamed) == timeline_from_result(result)
    assert steps_from_spans(renamed)[0].response_model == result.steps[0].response_model
