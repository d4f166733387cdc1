"""A finished run as a trace: one span per phase, nested as the phases are.

:func:`spans_from_result` turns a :class:`~hotloop.runtime.RunResult` into one trace::

    run
    └─ turn                                   request k sent → request k + 1 sent (last: done)
       ├─ model.request                       request sent → response complete
       │  ├─ model.connect                    only when the request opened a connection
       │  ├─ model.encode                     body encoded
       │  ├─ model.send                       body written to the socket / HTTP client
       │  ├─ model.first_event                written → first event back
       │  ├─ model.first_token                first event → first token (first output item)
       │  └─ model.generation                 first token → response complete
       ├─ tool.call                           arguments complete → tool finished
       │  ├─ tool.wait                        arguments complete → started (scheduler)
       │  └─ tool.run                         started → finished
       └─ loop.next_request                   tool results → next request sent
    model.aside (under run)                   a request a policy sent beside the turns
                                              (a Compact summary): sent → response complete
    tool.speculation (under run)              a read run before the model asked (Speculate):
                                              started → finished

The spans keep these names wherever hotloop writes them (memory, JSONL); the three that are
operations of the OpenTelemetry GenAI semantic conventions also carry its attributes
(``gen_ai.operation.name``, ``gen_ai.request.model``, ...). :data:`GENAI_SPANS` is the one table
of that correspondence: :mod:`hotloop.trace.otel` exports ``run`` as
``invoke_agent {gen_ai.agent.name}``, ``model.request`` as ``chat {gen_ai.request.model}`` and
``tool.call`` as ``execute_tool {gen_ai.tool.name}``, each with ``hotloop.span`` = our name, and
:func:`span_kind` reads either form back.

Prompts, completions, tool arguments and results are recorded only when asked for
(``capture_content=True``): ``gen_ai.input.messages`` / ``gen_ai.output.messages`` on
``model.request``, ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result`` on ``tool.call``.

Times are absolute ``time.perf_counter_ns()`` values: the ``run`` span starts at the run's
origin (:attr:`RunResult.started_ns`), so spans of several runs share one time axis. The
gateway's own timings of each response (``hotloop.server.*``) sit on ``model.request`` and
``model.generation`` with ``hotloop.network_ns``: the client's wait minus the server's time.

:func:`steps_from_spans` reads a trace back into step records, and :func:`timeline_from_spans`
into the :mod:`~hotloop.trace.timeline` bars every waterfall is drawn from.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from hotloop.errors import HotloopError
from hotloop.runtime.events import RunResult, SpeculationRecord, StepRecord, ToolRecord
from hotloop.trace.timeline import Bar, aside_bar, speculation_bar, timeline_from_steps
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message, Reasoning

__all__ = [
    "GENAI_PROVIDER",
    "GENAI_SPANS",
    "SPAN_KIND_ATTRIBUTE",
    "AttributeValue",
    "GenAIOperation",
    "Span",
    "exported_name",
    "speculation_effect",
    "span_kind",
    "group_traces",
    "span_from_dict",
    "span_to_dict",
    "spans_from_result",
    "steps_from_spans",
    "timeline_from_spans",
]

AttributeValue: TypeAlias = str | int | float | bool

#: The gateway's timings of a response, as reported in ``response.hotloop``; their sum minus
#: ``queue_ns`` (already part of ``gateway_pre_ns``) is the server's time.
_SERVER_PARTS = ("gateway_pre_ns", "first_output_ns", "decode_ns", "gateway_post_ns")

# Ids need to be unique, not secret: a PRNG seeded from urandom is fast and enough.
_ids = random.Random()
_SPAN_ID_MASK = (1 << 64) - 1


def _trace_id() -> str:
    return f"{_ids.getrandbits(128) or 1:032x}"


# -- the GenAI semantic conventions -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenAIOperation:
    """How one of our spans is an operation of the OpenTelemetry GenAI conventions.

    Exported, the span is named ``{operation} {attributes[name_from]}`` (just ``operation``
    when that attribute is missing) and has kind ``CLIENT`` when ``client`` (a call over the
    network), else ``INTERNAL``.
    """

    operation: str
    name_from: str
    client: bool = False


#: Our span names → their GenAI operation: the one table of the correspondence. Spans not in
#: it (``turn``, the phases, ``loop.next_request``) are exported under their own names.
GENAI_SPANS: Mapping[str, GenAIOperation] = MappingProxyType(
    {
        "run": GenAIOperation("invoke_agent", "gen_ai.agent.name"),
        "model.request": GenAIOperation("chat", "gen_ai.request.model", client=True),
        "tool.call": GenAIOperation("execute_tool", "gen_ai.tool.name"),
    }
)

#: ``gen_ai.provider.name``: hotloop speaks OpenAI's APIs (Responses, Chat Completions),
#: whichever server answers (``server.address`` and the model names tell which one it is).
GENAI_PROVIDER = "openai"

#: The attribute that keeps our span name on a span exported under a GenAI name.
SPAN_KIND_ATTRIBUTE = "hotloop.span"


def span_kind(span: Span) -> str:
    """Our name of ``span`` (``model.request``, ...), whether it is named ours or GenAI's."""
    kind = span.attributes.get(SPAN_KIND_ATTRIBUTE)
    return kind if isinstance(kind, str) else span.name


def exported_name(span: Span) -> str:
    """The span's name under the GenAI conventions: ``chat gpt-4o``, ``execute_tool search``."""
    operation = GENAI_SPANS.get(span_kind(span))
    if operation is None:
        return span.name
    subject = span.attributes.get(operation.name_from)
    return (
        f"{operation.operation} {subject}"
        if isinstance(subject, str) and subject
        else (operation.operation)
    )


def _operation(name: str) -> dict[str, AttributeValue]:
    return {"gen_ai.operation.name": GENAI_SPANS[name].operation}


def _server(url: str | None) -> dict[str, AttributeValue]:
    """``server.address`` and ``server.port`` of the server at ``url``."""
    if not url:
        return {}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return {}
    if not parts.hostname:
        return {}
    if port is None:
        port = 443 if parts.scheme in ("https", "wss") else 80
    return {"server.address": parts.hostname, "server.port": port}


def _json(value: Any) -> str:
    return codec.dumps(value).decode()


def _structured(text: str) -> Any:
    """JSON text as a value (best effort, as the conventions ask); the text itself otherwise."""
    try:
        return codec.loads(text)
    except HotloopError:
        return text


def _parts(item: Item) -> tuple[str, list[dict[str, Any]]]:
    """An item as (role, message parts) of the conventions' input/output messages schema."""
    if isinstance(item, Message):
        if isinstance(item.content, str):
            return item.role, [{"type": "text", "content": item.content}]
        return item.role, [
            {"type": "text", "content": part.text} if part.text is not None else {"type": part.type}
            for part in item.content
        ]
    if isinstance(item, FunctionCall):
        part = {
            "type": "tool_call",
            "id": item.call_id,
            "name": item.name,
            "arguments": _structured(item.arguments),
        }
        return "assistant", [part]
    if isinstance(item, FunctionCallOutput):
        return "tool", [{"type": "tool_call_response", "id": item.call_id, "response": item.text}]
    if isinstance(item, Reasoning):
        summary = "".join(part.text or "" for part in item.summary)
        return "assistant", [{"type": "reasoning", "content": summary}]
    return "user", [{"type": item.type}]


def _messages(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Items as chat messages: consecutive items of one role are one message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        role, parts = _parts(item)
        if messages and messages[-1]["role"] == role:
            messages[-1]["parts"].extend(parts)
        else:
            messages.append({"role": role, "parts": parts})
    return messages


def _output_messages(items: Sequence[Item]) -> list[dict[str, Any]]:
    """A response's output items as its one output message (one response, one choice)."""
    parts = [part for item in items for part in _parts(item)[1]]
    if not parts:
        return []
    calls = any(isinstance(item, FunctionCall) for item in items)
    return [
        {"role": "assistant", "parts": parts, "finish_reason": "tool_call" if calls else "stop"}
    ]


class _Run:
    """What the spans of one run read besides its step records."""

    __slots__ = ("_outputs", "capture", "result")

    def __init__(self, result: RunResult, capture: bool) -> None:
        self.result = result
        self.capture = capture
        self._outputs: dict[str, FunctionCallOutput] | None = None

    def output(self, call_id: str) -> FunctionCallOutput | None:
        """The result the model got for ``call_id``."""
        if self._outputs is None:
            self._outputs = {
                item.call_id: item
                for item in self.result.items
                if isinstance(item, FunctionCallOutput)
            }
        return self._outputs.get(call_id)

    def error_type(self, tool: ToolRecord) -> str:
        """``error.type`` of a failed call: the exception's class for a tool that raised, else
        the kind of error the model was told (``timeout``, ``denied``, ``invalid_arguments``...).
        """
        output = self.output(tool.call_id)
        kind = None
        if output is not None:
            error = _structured(output.text)
            detail = error.get("error") if isinstance(error, dict) else None
            kind = detail.get("type") if isinstance(detail, dict) else None
        if kind == "tool_error" and tool.error is not None:
            name, colon, _ = tool.error.partition(": ")
            if colon and name.replace(".", "").replace("_", "").isalnum():
                return name
        return kind if isinstance(kind, str) and kind else "_OTHER"


@dataclass(frozen=True, slots=True)
class Span:
    """One phase of a run: a named interval in a trace, under its parent (``None``: the root).

    ``trace_id`` (32 hex digits) and ``span_id`` (16) have the sizes OpenTelemetry uses.
    """

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


class _Builder:
    """Collects one trace's spans, parents before children."""

    def __init__(self, trace_id: str, origin: int) -> None:
        self.trace_id = trace_id
        self.origin = origin
        self.spans: list[Span] = []
        # Span ids: one random start per trace, then consecutive (unique within the trace).
        self._next_id = _ids.getrandbits(64)

    def span_id(self) -> str:
        self._next_id = (self._next_id + 1) & _SPAN_ID_MASK or 1
        return f"{self._next_id:016x}"

    def add(
        self,
        name: str,
        parent: str | None,
        start: int,
        end: int,
        attributes: dict[str, AttributeValue] | None = None,
        *,
        span_id: str | None = None,
    ) -> str:
        span_id = span_id or self.span_id()
        self.spans.append(
            Span(
                name,
                self.trace_id,
                span_id,
                parent,
                self.origin + start,
                self.origin + max(start, end),
                attributes or {},
            )
        )
        return span_id


def _server_attributes(step: StepRecord) -> dict[str, AttributeValue]:
    """The server's timings and the network time they leave: client wait - server time."""
    server = step.server
    if not server:
        return {}
    attributes: dict[str, AttributeValue] = {
        f"hotloop.server.{key}": value for key, value in server.items()
    }
    server_ns = sum(server.get(part, 0) for part in _SERVER_PARTS)
    attributes["hotloop.server_ns"] = server_ns
    if step.response_done_ns is not None:
        written = step.request_written_ns
        wait_ns = step.response_done_ns - (written if written is not None else step.request_sent_ns)
        attributes["hotloop.client_wait_ns"] = wait_ns
        # Clamped: the two clocks' boundaries differ by a few microseconds.
        attributes["hotloop.network_ns"] = max(0, wait_ns - server_ns)
    return attributes


def _model_spans(
    trace: _Builder, run: _Run, step: StepRecord, later: StepRecord | None, parent: str
) -> None:
    sent = step.request_sent_ns
    done = step.response_done_ns
    first_event = step.first_event_ns
    first_token = step.first_token_ns if step.first_token_ns is not None else first_event
    end = done if done is not None else (first_token if first_token is not None else sent)
    server = _server_attributes(step)
    result = run.result
    attributes: dict[str, AttributeValue] = {
        **_operation("model.request"),
        "gen_ai.provider.name": GENAI_PROVIDER,
        **_server(result.server_url),
        "hotloop.turn": step.turn,
        "hotloop.attempts": step.attempts,
        "hotloop.request.bytes": step.request_bytes,
        "hotloop.request.incremental": step.incremental,
        **server,
    }
    request_model = step.request_model or result.model
    if request_model:
        attributes["gen_ai.request.model"] = request_model
    if step.response_model:
        attributes["gen_ai.response.model"] = step.response_model
    if step.rerouted_from is not None and step.rerouted_ns is not None:
        # The call given up for another model's: which model, and how long it ran.
        attributes["hotloop.rerouted_from"] = step.rerouted_from
        attributes["hotloop.rerouted_after_ns"] = step.rerouted_ns - sent
    if step.response_id is not None:
        attributes["gen_ai.response.id"] = step.response_id
    if run.capture and step.input_from is not None and step.output_from is not None:
        items = result.items
        output_to = later.input_from if later is not None else None
        attributes["gen_ai.input.messages"] = _json(
            _messages(items[step.input_from : step.output_from])
        )
        attributes["gen_ai.output.messages"] = _json(
            _output_messages(items[step.output_from : output_to])
        )
    if step.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = step.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = step.usage.output_tokens
        attributes["hotloop.usage.cached_tokens"] = step.usage.cached_tokens
    request = trace.add("model.request", parent, sent, end, attributes)
    connected = step.connect_end_ns
    if step.connect_start_ns is not None and connected is not None:
        trace.add("model.connect", request, step.connect_start_ns, connected)
    written = step.request_written_ns
    encoded = step.request_encoded_ns
    if encoded is not None:
        # WebSocket: connect, then encode. HTTP: encode, then connect inside the send.
        encode_from = connected if connected is not None and connected <= encoded else sent
        trace.add("model.encode", request, encode_from, encoded)
        if written is not None:
            trace.add(
                "model.send", request, encoded, written, {"hotloop.bytes": step.request_bytes}
            )
    waiting_from = written if written is not None else sent
    if first_event is not None:
        trace.add(
            "model.first_event",
            request,
            waiting_from,
            first_event,
            {"hotloop.ttfe_ns": first_event - sent},
        )
    if first_token is not None:
        trace.add(
            "model.first_token",
            request,
            first_event if first_event is not None else waiting_from,
            first_token,
            {"hotloop.ttft_ns": first_token - sent},
        )
        if done is not None:
            trace.add("model.generation", request, first_token, done, dict(server))


def _tool_spans(
    trace: _Builder, run: _Run, step: StepRecord, tool: ToolRecord, parent: str
) -> int | None:
    if tool.started_ns is None or tool.finished_ns is None:
        return None  # never ran (the run ended first): no interval to show
    attributes: dict[str, AttributeValue] = {
        **_operation("tool.call"),
        "hotloop.turn": step.turn,
        "gen_ai.tool.name": tool.name,
        "gen_ai.tool.call.id": tool.call_id,
        "gen_ai.tool.type": "function",
        "hotloop.tool.reused": tool.reused,
    }
    if tool.cache is not None:
        attributes["hotloop.tool.cache"] = tool.cache
    if tool.invalidated:
        attributes["hotloop.tool.invalidated"] = tool.invalidated
    if tool.error is not None:
        attributes["hotloop.tool.error"] = tool.error
        attributes["error.type"] = run.error_type(tool)
    if run.capture:
        attributes["gen_ai.tool.call.arguments"] = tool.arguments
        output = run.output(tool.call_id) if tool.error is None else None
        if output is not None:
            attributes["gen_ai.tool.call.result"] = output.text
    if tool.approval is not None:
        attributes["hotloop.tool.approval"] = tool.approval
    call = trace.add("tool.call", parent, tool.args_complete_ns, tool.finished_ns, attributes)
    asked = tool.approval_requested_ns
    if asked is None:
        trace.add("tool.wait", call, tool.args_complete_ns, tool.started_ns)
    else:
        # Admitted, then waiting for a person (or a policy) to approve it.
        trace.add("tool.wait", call, tool.args_complete_ns, asked)
        trace.add("tool.approval", call, asked, tool.started_ns)
    trace.add("tool.run", call, tool.started_ns, tool.finished_ns)
    for subrun in tool.subruns:
        # A sub-agent's run, nested under the call that made it (its times are its own).
        origin = trace.origin
        trace.origin = subrun.started_ns
        try:
            _run_spans(trace, subrun, call, "subrun", capture=run.capture)
        finally:
            trace.origin = origin
    return tool.finished_ns


def spans_from_result(
    result: RunResult,
    *,
    run_name: str = "run",
    trace_id: str | None = None,
    epoch_offset_ns: int | None = None,
    capture_content: bool = False,
) -> list[Span]:
    """The trace of a finished run: its spans, parents before children.

    ``epoch_offset_ns`` (``time.time_ns() - time.perf_counter_ns()``, taken once) adds the
    run's wall-clock start to the root span as ``hotloop.run.start_unix_ns``.
    ``capture_content`` records the messages and tool arguments and results (see the module).
    """
    trace = _Builder(trace_id or _trace_id(), result.started_ns)
    _run_spans(trace, result, None, run_name, epoch_offset_ns, capture=capture_content)
    return trace.spans


def _run_spans(
    trace: _Builder,
    result: RunResult,
    parent: str | None,
    run_name: str,
    epoch_offset_ns: int | None = None,
    *,
    capture: bool = False,
) -> None:
    """The spans of one run, under ``parent`` (``None``: the trace's root), at its origin."""
    run = _Run(result, capture)
    root_attributes: dict[str, AttributeValue] = {
        **_operation("run"),
        "gen_ai.provider.name": GENAI_PROVIDER,
        "hotloop.run.name": run_name,
        "hotloop.run.turns": result.turns,
        "hotloop.run.tool_calls": result.tool_calls,
        "gen_ai.usage.input_tokens": result.usage.input_tokens,
        "gen_ai.usage.output_tokens": result.usage.output_tokens,
    }
    if result.agent_name:
        root_attributes["gen_ai.agent.name"] = result.agent_name
    if result.model:
        root_attributes["gen_ai.request.model"] = result.model
    if epoch_offset_ns is not None:
        root_attributes["hotloop.run.start_unix_ns"] = result.started_ns + epoch_offset_ns
    root = trace.add("run", parent, 0, result.wall_ns, root_attributes)
    steps = result.steps
    for index, step in enumerate(steps):
        later = steps[index + 1] if index + 1 < len(steps) else None
        turn_index = len(trace.spans)
        turn = trace.span_id()
        trace.spans.append(Span("turn", trace.trace_id, turn, root, 0, 0))  # filled in below
        _model_spans(trace, run, step, later, turn)
        end = step.response_done_ns or step.request_sent_ns
        for tool in step.tools:
            finished = _tool_spans(trace, run, step, tool, turn)
            if finished is not None:
                end = max(end, finished)
        if later is not None and step.tools_done_ns is not None:
            written = later.request_written_ns
            trace.add(
                "loop.next_request",
                turn,
                step.tools_done_ns,
                later.request_sent_ns,
                {
                    "hotloop.results_to_sent_ns": (
                        (written if written is not None else later.request_sent_ns)
                        - step.tools_done_ns
                    )
                },
            )
            end = max(end, later.request_sent_ns)
        attributes: dict[str, AttributeValue] = {
            "hotloop.turn": step.turn,
            "hotloop.tool_calls": len(step.tools),
        }
        trace.spans[turn_index] = Span(
            "turn",
            trace.trace_id,
            turn,
            root,
            result.started_ns + step.request_sent_ns,
            result.started_ns + max(end, step.request_sent_ns),
            attributes,
        )
    for aside in result.asides:
        _aside_span(trace, result, aside, root)
    for speculation in result.speculations:
        _speculation_span(trace, result, speculation, root)


def speculation_effect(speculation: SpeculationRecord, wall_ns: int) -> tuple[int, int]:
    """``(saved_ns, wasted_ns)`` of a speculative execution: a used one saved the part of its
    run that came before the model asked (the call would have started then); an unused one
    wasted its whole run (to the run's end, if the run cancelled it)."""
    finished = speculation.finished_ns if speculation.finished_ns is not None else wall_ns
    duration = max(0, finished - speculation.started_ns)
    if speculation.used_ns is None:
        return 0, duration
    return max(0, min(duration, speculation.used_ns - speculation.started_ns)), 0


def _speculation_span(
    trace: _Builder, result: RunResult, speculation: SpeculationRecord, parent: str
) -> None:
    saved, wasted = speculation_effect(speculation, result.wall_ns)
    attributes: dict[str, AttributeValue] = {
        "gen_ai.tool.name": speculation.name,
        "hotloop.speculation.source": speculation.source,
        "hotloop.speculation.used": speculation.used_ns is not None,
        "hotloop.speculation.saved_ns": saved,
        "hotloop.speculation.wasted_ns": wasted,
    }
    if speculation.error is not None:
        attributes["hotloop.tool.error"] = speculation.error
    end = speculation.finished_ns if speculation.finished_ns is not None else result.wall_ns
    trace.add("tool.speculation", parent, speculation.started_ns, end, attributes)


def _aside_span(trace: _Builder, result: RunResult, aside: StepRecord, parent: str) -> None:
    """A request sent beside the turns: from sent to its response's end, or to when it ended
    without one (``hotloop.aside.error`` says why)."""
    done = aside.response_done_ns
    attributes: dict[str, AttributeValue] = {
        "hotloop.turn": aside.turn,
        "hotloop.aside.purpose": aside.purpose or "",
        "hotloop.aside.finished": done is not None and aside.error is None,
        "hotloop.request.bytes": aside.request_bytes,
    }
    if aside.error is not None:
        attributes["hotloop.aside.error"] = aside.error
    if aside.request_model:
        attributes["gen_ai.request.model"] = aside.request_model
    if aside.response_model:
        attributes["gen_ai.response.model"] = aside.response_model
    if aside.response_id is not None:
        attributes["gen_ai.response.id"] = aside.response_id
    if aside.first_token_ns is not None:
        attributes["hotloop.ttft_ns"] = aside.first_token_ns - aside.request_sent_ns
    if aside.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = aside.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = aside.usage.output_tokens
        attributes["hotloop.usage.cached_tokens"] = aside.usage.cached_tokens
    end = done if done is not None else max(aside.request_sent_ns, result.wall_ns)
    trace.add("model.aside", parent, aside.request_sent_ns, end, attributes)


# -- reading traces back ------------------------------------------------------------------


def span_to_dict(span: Span) -> dict[str, Any]:
    """The JSON object of a span (one line of a JSONL trace file)."""
    return {
        "name": span.name,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "attributes": dict(span.attributes),
    }


def span_from_dict(data: Mapping[str, Any]) -> Span:
    """A span from its JSON object; raises :class:`~hotloop.errors.HotloopError` if malformed."""
    try:
        parent = data.get("parent_id")
        attributes = data.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise TypeError("attributes is not an object")
        return Span(
            name=str(data["name"]),
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_id=None if parent is None else str(parent),
            start_ns=int(data["start_ns"]),
            end_ns=int(data["end_ns"]),
            attributes=attributes,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HotloopError(f"not a span: {exc}") from exc


def group_traces(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans by trace id, in the order each trace first appears."""
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    return traces


def _int(attributes: Mapping[str, AttributeValue], key: str, default: int = 0) -> int:
    value = attributes.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def steps_from_spans(spans: Sequence[Span]) -> list[StepRecord]:
    """The step records of one trace (times relative to its ``run`` span), in turn order.

    What a trace does not keep (tool arguments, usage details) stays empty.
    """
    root = next((span for span in spans if span.parent_id is None), None)
    if root is None:
        raise HotloopError("the trace has no root span")
    origin = root.start_ns
    children: dict[str, list[Span]] = {}
    for span in spans:
        if span.parent_id is not None:
            children.setdefault(span.parent_id, []).append(span)
    steps: list[StepRecord] = []
    for turn in (s for s in children.get(root.span_id, []) if span_kind(s) == "turn"):
        step = StepRecord(turn=_int(turn.attributes, "hotloop.turn"), request_sent_ns=0)
        for child in children.get(turn.span_id, []):
            kind = span_kind(child)
            if kind == "model.request":
                _read_model(step, child, children.get(child.span_id, []), origin)
            elif kind == "tool.call":
                step.tools.append(_read_tool(child, children.get(child.span_id, []), origin))
            elif kind == "loop.next_request":
                step.tools_done_ns = child.start_ns - origin
        steps.append(step)
    steps.sort(key=lambda step: step.request_sent_ns)
    return steps


def _read_model(step: StepRecord, request: Span, phases: Sequence[Span], origin: int) -> None:
    attributes = request.attributes
    step.request_sent_ns = request.start_ns - origin
    step.response_done_ns = request.end_ns - origin
    step.attempts = _int(attributes, "hotloop.attempts", 1)
    step.request_bytes = _int(attributes, "hotloop.request.bytes")
    step.incremental = bool(attributes.get("hotloop.request.incremental", False))
    response_id = attributes.get("gen_ai.response.id")
    step.response_id = response_id if isinstance(response_id, str) else None
    request_model = attributes.get("gen_ai.request.model")
    step.request_model = request_model if isinstance(request_model, str) else None
    response_model = attributes.get("gen_ai.response.model")
    step.response_model = response_model if isinstance(response_model, str) else None
    rerouted_from = attributes.get("hotloop.rerouted_from")
    if isinstance(rerouted_from, str):
        step.rerouted_from = rerouted_from
        step.rerouted_ns = step.request_sent_ns + _int(attributes, "hotloop.rerouted_after_ns")
    server = {
        key.removeprefix("hotloop.server."): int(value)
        for key, value in attributes.items()
        if key.startswith("hotloop.server.") and isinstance(value, int)
    }
    step.server = server or None
    for phase in phases:
        start, end = phase.start_ns - origin, phase.end_ns - origin
        kind = span_kind(phase)
        if kind == "model.connect":
            step.connect_start_ns, step.connect_end_ns = start, end
        elif kind == "model.encode":
            step.request_encoded_ns = end
        elif kind == "model.send":
            step.request_written_ns = end
        elif kind == "model.first_event":
            step.first_event_ns = end
        elif kind == "model.first_token":
            step.first_token_ns = end


def _read_tool(call: Span, phases: Sequence[Span], origin: int) -> ToolRecord:
    attributes = call.attributes
    error = attributes.get("hotloop.tool.error")
    record = ToolRecord(
        call_id=str(attributes.get("gen_ai.tool.call.id", "")),
        name=str(attributes.get("gen_ai.tool.name", "tool")),
        arguments="",
        args_complete_ns=call.start_ns - origin,
        finished_ns=call.end_ns - origin,
        error=error if isinstance(error, str) else None,
        reused=bool(attributes.get("hotloop.tool.reused", False)),
    )
    cache = attributes.get("hotloop.tool.cache")
    if isinstance(cache, str):
        record.cache = cache
    invalidated = attributes.get("hotloop.tool.invalidated")
    if isinstance(invalidated, int):
        record.invalidated = invalidated
    for phase in phases:
        if span_kind(phase) == "tool.run":
            record.started_ns = phase.start_ns - origin
            record.finished_ns = phase.end_ns - origin
    if record.started_ns is None:
        record.started_ns = record.args_complete_ns
    return record


def timeline_from_spans(spans: Sequence[Span]) -> list[Bar]:
    """The waterfall bars of one trace: the same bars as the run's own timeline."""
    bars = timeline_from_steps(steps_from_spans(spans))
    root = next(span for span in spans if span.parent_id is None)
    origin = root.start_ns
    for span in spans:
        if span.parent_id != root.span_id:
            continue
        kind = span_kind(span)
        attributes = span.attributes
        if kind == "tool.speculation":
            error = attributes.get("hotloop.tool.error")
            bars.append(
                speculation_bar(
                    str(attributes.get("gen_ai.tool.name", "")),
                    span.start_ns - origin,
                    span.end_ns - origin,
                    attributes.get("hotloop.speculation.used") is True,
                    error if isinstance(error, str) else None,
                )
            )
        elif kind == "model.aside":
            failed = attributes.get("hotloop.aside.error")
            bars.append(
                aside_bar(
                    str(attributes.get("hotloop.aside.purpose") or "aside"),
                    _int(attributes, "hotloop.turn"),
                    span.start_ns - origin,
                    span.end_ns - origin,
                    failed if isinstance(failed, str) else None,
                )
            )
    return bars
