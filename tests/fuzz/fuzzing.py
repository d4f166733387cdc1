"""Fuzzing the gateway: input strategies, and one oracle shared by the fast tests and the long run.

Three kinds of input are generated with Hypothesis:

* ``ws``: groups of WebSocket frames sent to ``/v1/responses`` in WebSocket mode, pipelined on
  one socket (creates, steers and cancels, valid, mutated or raw);
* ``http``: bodies POSTed to ``/v1/responses`` (JSON and SSE) and ``/v1/chat/completions``
  (JSON and streaming), plus a few raw, malformed HTTP requests;
* ``decoder``: SSE and Chat Completions chunk streams fed to the client-side decoders
  (:class:`~hotloop.protocol.sse.ResponsesSSEDecoder`,
  :class:`~hotloop.protocol.chat_stream.ChatStreamDecoder`).

Each kind mixes random bytes and JSON with *structure-aware* mutations of valid requests:
fields replaced by wrong types, huge, deep or unusual unicode values, unknown keys, bad
``previous_response_id`` values, bad tools and schemas, ``tool_choice`` forcing a tool with an
odd schema. The decoders get real streams recorded from the gateway, cut at random places and
mutated.

The oracle (:class:`Fuzzer`) checks every input against a live gateway and counts what it saw
in :class:`Outcomes`:

* a reply comes within :data:`REPLY_TIMEOUT` (else a *hang*): for a WebSocket frame an
  ``error`` event or a terminal ``response.*`` event (a cancel of a valid lane has none of its
  own: the response it stops ends as its create's); for HTTP an OpenAI error body with a
  specific ``code``, or a 200 whose stream ends with a terminal event;
* every error code is documented in ``docs/gateway.md`` (else *undocumented*);
* nothing is a server failure: no ``server_error``, no 5xx, no unexpectedly dropped
  connection, no exception logged by the gateway (else a *crash*);
* no message exposes Python exception text (a *leak* of internals, counted as a crash);
* after a group of frames, a normal create on the same socket completes;
* after a batch, the gateway's gauges are back at their baseline (else *leaked sessions*) and
  a bystander conversation, open since before the batch, completes a turn and continues it
  (else a *bystander failure*).

The decoders must turn any input into events or a :class:`~hotloop.errors.HotloopError`,
never another exception, and decode every unmutated stream to its terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hotloop.backends.sim import SimBackend
from hotloop.errors import HotloopError
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.protocol.chat_stream import ChatStreamDecoder
from hotloop.protocol.sse import ResponsesSSEDecoder, SSEDecoder
from hotloop.wire import codec
from support import WEATHER_FUNCTION as WEATHER
from support import ten_turn_scenario

MODEL = "hotloop-sim"
#: The bound on any single reply; a reply that takes longer is a hang.
REPLY_TIMEOUT = 10.0
#: The fuzzed gateway's frame and body limit: small, so that huge values reach it cheaply.
MAX_MESSAGE_BYTES = 256 * 1024
#: The largest string a mutation puts in a frame (frames stay below twice the limit, beyond
#: which the transport closes the socket by design).
HUGE = 300 * 1024

#: Events that end the answer to one WebSocket frame.
WS_FINAL = frozenset(
    {
        "error",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.steer.failed",
    }
)
SSE_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})

#: Text that only a Python exception puts in a message.
LEAK_MARKERS = (
    "Traceback",
    "object has no attribute",
    "NoneType",
    "KeyError",
    "TypeError",
    "AttributeError",
    "IndexError",
    "ValueError",
    "RecursionError",
    "not subscriptable",
    "unhashable type",
    "object at 0x",
    'File "',
)

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"


def documented_codes(path: Path = _DOCS) -> frozenset[str]:
    """The error codes of the table in the "Errors" section of ``docs/gateway.md``."""
    text = path.read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    return frozenset(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


#: What a client may see; ``server_error`` is documented but is a crash for the fuzzer.
DOCUMENTED_CODES = documented_codes()


# -- outcomes -------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What the fuzzer saw. :attr:`failures` keeps a few examples of each kind of failure."""

    inputs: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    hangs: int = 0
    undocumented: Counter[str] = field(default_factory=Counter)
    leaked_sessions: int = 0
    bystander_failures: int = 0
    failures: list[str] = field(default_factory=list)
    #: The same failures with their whole input, for reproducing them.
    inputs_failed: list[str] = field(default_factory=list)
    distinct: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return (
            self.crashes
            + self.hangs
            + sum(self.undocumented.values())
            + self.leaked_sessions
            + self.bystander_failures
        )

    def note(self, kind: str, where: str, what: str) -> None:
        """Keep an example of a failure: two of each distinct one, the input in full."""
        key = f"{kind}: {what[:60]}"
        self.distinct[key] += 1
        if self.distinct[key] <= 2 and len(self.failures) < 40:
            self.failures.append(f"{kind}: {what[:400]} <- {where[:300]}")
            self.inputs_failed.append(f"{kind}: {what}\n  input: {where}")

    def crash(self, where: str, what: str) -> None:
        self.crashes += 1
        self.note("crash", where, what)

    def hang(self, where: str, what: str) -> None:
        self.hangs += 1
        self.note("hang", where, what)

    def summary(self) -> str:
        lines = [
            "inputs:            "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items()))
            + f" (total {sum(self.inputs.values())})",
            f"crashes:           {self.crashes}",
            f"hangs:             {self.hangs}",
            f"undocumented codes: {sum(self.undocumented.values())} {dict(self.undocumented)}",
            f"leaked sessions:   {self.leaked_sessions}",
            f"bystander failures: {self.bystander_failures}",
            "replies:           " + ", ".join(f"{k} {v}" for k, v in self.replies.most_common(40)),
        ]
        lines.extend(f"  {failure}" for failure in self.failures)
        return "\n".join(lines)


class ErrorLog(logging.Handler):
    """Counts what the gateway logs at ERROR or with a traceback: a server exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.records.append(f"{record.name}: {text}")


# -- strategies -----------------------------------------------------------------------------

#: Replaced by a real response id when the frame is sent (see :meth:`Fuzzer.resolve`).
LAST_ID, STORED_ID, FOREIGN_ID = "$last$", "$stored$", "$foreign$"


unicode_text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["", "\x00", "\u202e", "€" * 50, "😀" * 30, "\ud800", "\udfff", "a\nb"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 2**70]),
    st.floats(allow_nan=False, allow_infinity=False),
    unicode_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """A value nested around the gateway's 64-level limit."""
    levels = draw(st.integers(1, 130))
    value: Any = draw(scalars)
    for _ in range(levels):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


@st.composite
def huge_values(draw: st.DrawFn) -> Any:
    size = draw(st.sampled_from([1024, 64 * 1024, HUGE]))
    char = draw(st.sampled_from(["x", "é", "€", "😀"]))
    string = char * (size // len(char.encode()))
    return draw(st.sampled_from([string, [string], {"text": string}, list(range(size // 8))]))


odd_values = st.one_of(
    json_values,
    json_values,
    json_values,
    deep_values(),
    huge_values(),
    st.sampled_from(["", [], {}, 0, -1, True, None, "resp_", LAST_ID, STORED_ID, FOREIGN_ID]),
)

schema_keywords = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "required",
        "enum",
        "const",
        "default",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "anyOf",
        "oneOf",
        "allOf",
        "additionalProperties",
        "$ref",
        "format",
        "pattern",
    ]
)
schema_types = st.sampled_from(
    ["object", "array", "string", "integer", "number", "boolean", "null", "nope"]
)


def odd_schemas() -> st.SearchStrategy[Any]:
    """JSON schemas with odd keywords: wrong types, huge bounds, recursion, nonsense."""
    keyword_value = st.one_of(
        schema_types,
        st.lists(schema_types, max_size=3),
        st.integers(-5, 10**12),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        json_values,
    )
    return st.recursive(
        st.dictionaries(schema_keywords, keyword_value, max_size=4),
        lambda inner: st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("object"), "properties": st.dictionaries(unicode_text, inner)}
            ),
            st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
            st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
            st.dictionaries(schema_keywords, st.one_of(inner, keyword_value), max_size=4),
        ),
        max_leaves=8,
    )


def input_items() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "developer", "assistant"]),
            "content": st.one_of(
                unicode_text,
                st.lists(
                    st.fixed_dictionaries({"type": st.just("input_text"), "text": unicode_text}),
                    max_size=2,
                ),
            ),
        },
        optional={"type": st.just("message")},
    )
    call = st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": st.sampled_from(["call_1", "call_2"]),
            "name": st.sampled_from(["get_weather", "other"]),
            "arguments": st.sampled_from(['{"city": "Paris"}', "{}", "not json"]),
        }
    )
    output = st.fixed_dictionaries(
        {
            "type": st.just("function_call_output"),
            "call_id": st.sampled_from(["call_1", "call_2", "call_unknown"]),
            "output": st.one_of(unicode_text, st.just('{"temp": 21}')),
        }
    )
    other = st.fixed_dictionaries(
        {"type": st.sampled_from(["item_reference", "reasoning", "web_search_call", "nope"])},
        optional={"id": st.text(max_size=8), "summary": st.just([])},
    )
    return st.one_of(
        unicode_text,
        st.lists(st.one_of(message, message, call, output, other), min_size=1, max_size=4),
    )


@st.composite
def valid_creates(draw: st.DrawFn, *, websocket: bool) -> dict[str, Any]:
    """A valid create body (it may still be refused, e.g. a call output without its call)."""
    body: dict[str, Any] = {"model": MODEL, "input": draw(input_items())}
    if websocket:
        body = {"type": "response.create", **body}
    if draw(st.booleans()):
        body["store"] = draw(st.booleans())
    if draw(st.booleans()):
        body["tools"] = [WEATHER]
        body["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "none", "required", {"type": "function", "name": "get_weather"}]
            )
        )
    if draw(st.integers(0, 3)) == 0:
        body["max_output_tokens"] = draw(st.integers(1, 64))
    if draw(st.integers(0, 3)) == 0:
        body["instructions"] = draw(unicode_text)
    if draw(st.integers(0, 3)) == 0:
        body["previous_response_id"] = draw(st.sampled_from([LAST_ID, STORED_ID]))
    if websocket and draw(st.integers(0, 3)) == 0:
        body["stream_id"] = draw(st.sampled_from(["a", "b", "lane-1", "x" * 256]))
    if websocket and draw(st.integers(0, 7)) == 0:
        body["generate"] = False
    return body


#: Fields a mutation targets (top level of a create).
CREATE_FIELDS = (
    "type",
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "previous_response_id",
    "max_output_tokens",
    "stream",
    "stream_id",
    "generate",
    "background",
    "temperature",
    "metadata",
    "reasoning",
    "text",
    "include",
    "truncation",
)


@st.composite
def odd_tools(draw: st.DrawFn) -> dict[str, Any]:
    """Tools with odd schemas (or odd shapes), often forced by ``tool_choice``."""
    name = draw(st.one_of(st.just("f"), unicode_text, st.just("get_weather")))
    tool: dict[str, Any] = {"type": "function", "name": name, "parameters": draw(odd_schemas())}
    if draw(st.integers(0, 4)) == 0:
        tool = draw(st.dictionaries(st.sampled_from(["type", "name", "parameters"]), odd_values))
    choice = draw(
        st.one_of(
            st.just({"type": "function", "name": name}),
            st.just("required"),
            st.just("auto"),
            odd_values,
            st.fixed_dictionaries({"type": st.just("function"), "name": odd_values}),
        )
    )
    return {"tools": draw(st.lists(st.just(tool), min_size=1, max_size=2)), "tool_choice": choice}


@st.composite
def mutated_creates(draw: st.DrawFn, *, websocket: bool) -> dict[str, Any]:
    """A valid create with one to four structure-aware mutations."""
    body = draw(valid_creates(websocket=websocket))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 9))
        key = draw(st.sampled_from(CREATE_FIELDS))
        if op <= 3:  # a field replaced by anything
            body[key] = draw(odd_values)
        elif op == 4:  # a field removed
            body.pop(key, None)
        elif op == 5:  # unknown keys
            body.update(draw(st.dictionaries(unicode_text, odd_values, min_size=1, max_size=3)))
        elif op == 6:  # tools with odd schemas, often forced
            body.update(draw(odd_tools()))
        elif op == 7:  # bad or foreign parents
            body["previous_response_id"] = draw(
                st.one_of(
                    st.sampled_from([LAST_ID, STORED_ID, FOREIGN_ID, "resp_nope", "", " "]),
                    unicode_text,
                    json_values,
                )
            )
        elif op == 8:  # one input item mutated
            items = body.get("input")
            if isinstance(items, list) and items and isinstance(items[0], dict):
                item = dict(items[0])
                item[draw(st.sampled_from(["type", "role", "content", "call_id", "output"]))] = (
                    draw(odd_values)
                )
                body["input"] = [item, *items[1:]]
            else:
                body["input"] = draw(odd_values)
        else:  # lanes
            body["stream_id"] = draw(st.one_of(st.text(max_size=300), json_values))
    return body


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON text of ``value`` (lone surrogates stay escaped)."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode()
    except UnicodeEncodeError:
        return json.dumps(value).encode()


raw_json_texts = st.one_of(
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"type": NaN}',
            b'{"a": 1e999}',
            b'{"type": "response.create", "model": "hotloop-sim", "input": "\xff"}',
            b'{"model": "hotloop-sim", "input": "hi", "model": 3}',
            b"\xef\xbb\xbf{}",
            b"[" * 100_000,
        ]
    ),
    st.binary(max_size=64),
)


@dataclass(frozen=True)
class Frame:
    """One WebSocket frame: ``data`` is JSON text (with placeholders) or raw bytes/text."""

    data: Any
    binary: bool = False
    ascii_only: bool = True


@st.composite
def ws_frames(draw: st.DrawFn) -> Frame:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return Frame(draw(raw_json_texts), binary=draw(st.booleans()))
    if choice == 1:
        return Frame(draw(st.text(max_size=64)).encode("utf-8", "replace"))
    if choice == 2:
        return Frame(draw(json_values))
    if choice == 3:
        return Frame(draw(valid_creates(websocket=True)))
    if choice == 4:
        steer = {"type": "response.steer", "previous_response_id": LAST_ID, "input": "x"}
        steer.update(draw(st.dictionaries(st.sampled_from(["input", "type"]), odd_values)))
        return Frame(steer)
    if choice == 5:
        # A cancel of a lane the group's creates use (the default lane without stream_id),
        # or of an odd one.
        cancel: dict[str, Any] = {"type": "response.cancel"}
        lane = draw(st.one_of(st.sampled_from(["a", "b", "lane-1", None, "x" * 257]), odd_values))
        if lane is not None or draw(st.booleans()):
            cancel["stream_id"] = lane
        return Frame(cancel)
    return Frame(draw(mutated_creates(websocket=True)), ascii_only=draw(st.booleans()))


#: A valid ``stream_id``, as docs/gateway.md gives it (the default lane: none, or null).
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")


def silent_cancel(data: Any) -> bool:
    """Whether a frame is a ``response.cancel`` of a valid lane: the gateway sends nothing
    back for it (stopping a response or not), so it has no final event of its own."""
    if not isinstance(data, dict) or data.get("type") != "response.cancel":
        return False
    lane = data.get("stream_id")
    return lane is None or (isinstance(lane, str) and _STREAM_ID.fullmatch(lane) is not None)


#: A group of frames pipelined on one socket.
ws_groups = st.lists(ws_frames(), min_size=1, max_size=6)


@dataclass(frozen=True)
class HTTPInput:
    """One request: a POST of ``body`` to ``path``, or ``raw`` bytes on a fresh connection."""

    path: str = "/v1/responses"
    body: Any = None
    content: bytes | None = None
    content_type: str = "application/json"
    raw: bytes | None = None


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]),
            "content": st.one_of(unicode_text, st.none()),
        },
        optional={
            "tool_call_id": st.sampled_from(["call_1", "x"]),
            "tool_calls": st.just(
                [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    }
                ]
            ),
        },
    )
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": draw(st.lists(message, min_size=1, max_size=3)),
        "stream": draw(st.booleans()),
    }
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": WEATHER | {"type": None}}]
        body["tools"][0]["function"].pop("type")
        body["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
            )
        )
    if draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 3))
        key = draw(
            st.sampled_from(
                [
                    "model",
                    "messages",
                    "tools",
                    "tool_choice",
                    "stream",
                    "stream_options",
                    "max_tokens",
                    "max_completion_tokens",
                    "parallel_tool_calls",
                    "n",
                    "temperature",
                ]
            )
        )
        if op <= 1:
            body[key] = draw(odd_values)
        elif op == 2:
            body.pop(key, None)
        elif (
            isinstance(body.get("messages"), list)
            and body["messages"]
            and isinstance(body["messages"][0], dict)
        ):
            first = dict(body["messages"][0])
            first[draw(st.sampled_from(["role", "content", "tool_calls", "name"]))] = draw(
                odd_values
            )
            body["messages"] = [first, *body["messages"][1:]]
    if draw(st.integers(0, 5)) == 0:
        tools = draw(odd_tools())
        body["tools"] = [
            {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            if isinstance(t, dict)
            else t
            for t in tools["tools"]
        ]
        body["tool_choice"] = draw(
            st.one_of(
                st.just("required"),
                st.just({"type": "function", "function": {"name": tools["tools"][0].get("name")}}),
            )
        )
    return body


raw_http = st.one_of(
    st.binary(max_size=200).map(lambda b: b + b"\r\n\r\n"),
    st.sampled_from(
        [
            b"GARBAGE\r\n\r\n",
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ]
    ),
)


@st.composite
def http_inputs(draw: st.DrawFn) -> HTTPInput:
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return HTTPInput(raw=draw(raw_http))
    if choice <= 2:
        return HTTPInput(
            path=draw(st.sampled_from(["/v1/responses", "/v1/chat/completions"])),
            content=draw(raw_json_texts),
            content_type=draw(st.sampled_from(["application/json", "text/plain", ""])),
        )
    if choice <= 6:
        return HTTPInput(path="/v1/chat/completions", body=draw(chat_bodies()))
    body = draw(
        st.one_of(
            valid_creates(websocket=False),
            mutated_creates(websocket=False),
            mutated_creates(websocket=False),
        )
    )
    if draw(st.booleans()):
        body["stream"] = True
    return HTTPInput(body=body)


@dataclass(frozen=True)
class StreamInput:
    """A recorded stream (``responses`` SSE or ``chat`` SSE), mutated and cut into chunks."""

    kind: str
    base: int
    mutations: tuple[tuple[int, int, bytes], ...]
    cuts: tuple[int, ...]
    random: bytes | None = None


@st.composite
def stream_inputs(draw: st.DrawFn) -> StreamInput:
    kind = draw(st.sampled_from(["responses", "chat"]))
    if draw(st.integers(0, 5)) == 0:
        data = draw(st.binary(max_size=256))
        return StreamInput(kind, 0, (), tuple(draw(st.lists(st.integers(0, 256)))), data)
    mutation = st.tuples(
        st.integers(0, 2**16),  # where (modulo the length)
        st.integers(0, 40),  # how many bytes it replaces
        st.one_of(
            st.binary(max_size=12),
            st.sampled_from(
                [
                    b"\n\n",
                    b"\r",
                    b"data: [DONE]\n\n",
                    b"data: {}\n\n",
                    b'"type":"error"',
                    b'"type":"response.completed"',
                    b"null",
                    b"[]",
                    b"\xff",
                    b": comment\n",
                    b"retry: x\n",
                    b"id: \x00\n",
                    b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":9}]}}]',
                    b'"finish_reason":7',
                    b"{" * 80,
                ]
            ),
        ),
    )
    return StreamInput(
        kind,
        draw(st.integers(0, 2**16)),
        tuple(draw(st.lists(mutation, max_size=4))),
        tuple(draw(st.lists(st.integers(0, 2**16), max_size=8))),
    )


def draw_many(strategy: st.SearchStrategy[Any], count: int, *, seed_value: int) -> list[Any]:
    """``count`` examples of ``strategy`` (the long run's generator; no shrinking, no database)."""
    out: list[Any] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


# -- the oracle -----------------------------------------------------------------------------


def _leaks(text: str) -> str | None:
    for marker in LEAK_MARKERS:
        if marker in text:
            return marker
    return None


def check_error_body(
    error: Any,
    out: Outcomes,
    where: str,
    *,
    status: int | None,
    keys: Sequence[str] = ("message", "type", "param", "code"),
) -> str | None:
    """Check an error object (OpenAI's, with exactly ``keys``, and ``headers`` when it says
    when to try again); return its code when it is a client error."""
    if isinstance(error, dict) and "headers" in error:
        headers = error["headers"]
        if not isinstance(headers, dict) or set(headers) != {"retry-after"}:
            out.crash(where, f"malformed error headers {error!r}")
            return None
        error = {key: value for key, value in error.items() if key != "headers"}
    if not isinstance(error, dict) or set(error) != set(keys):
        out.crash(where, f"malformed error object {error!r}")
        return None
    code, message = error["code"], error["message"]
    out.replies[f"error:{code}"] += 1
    if not isinstance(message, str) or not message:
        out.crash(where, f"error without a message {error!r}")
    elif (marker := _leaks(message)) is not None:
        out.crash(where, f"message leaks {marker!r}: {message[:300]}")
    if code == "server_error" or (status is not None and status >= 500):
        out.crash(where, f"server error {error!r}")
        return None
    if not isinstance(code, str) or code not in DOCUMENTED_CODES:
        out.undocumented[str(code)] += 1
        out.note("undocumented", where, f"{error!r}")
        return None
    return code


class Fuzzer:
    """Runs inputs against a live gateway at ``base`` (``http://host:port``) and counts them.

    ``errors`` is the gateway's :class:`ErrorLog` when it runs in this process.
    """

    def __init__(self, host: str, port: int, errors: ErrorLog | None = None) -> None:
        self.base = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}/v1/responses"
        self.host, self.port = host, port
        self.errors = errors
        self.out = Outcomes()
        self.http = httpx.AsyncClient(
            base_url=self.base,
            timeout=REPLY_TIMEOUT,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.stored_id = "resp_none_yet"
        self.foreign_id = "resp_none_yet"
        self.streams: dict[str, list[bytes]] = {}
        self._bystander: ClientConnection | None = None
        self._baseline: dict[str, float] = {}
        self._logged = 0

    async def aclose(self) -> None:
        if self._bystander is not None:
            await self._bystander.close()
        await self.http.aclose()

    # -- set-up and batches --------------------------------------------------------------

    async def prepare(self) -> None:
        """Record real streams for the decoder inputs and the ids the placeholders stand for."""
        stored = await self.http.post(
            "/v1/responses", json={"model": MODEL, "input": "hi", "store": True}
        )
        self.stored_id = stored.json()["id"]
        async with connect(self.ws_url, max_size=None) as other:
            response = await self._turn(other, input="a response of another socket", store=False)
            self.foreign_id = response["id"]
        recorded: dict[str, list[bytes]] = {"responses": [], "chat": []}
        tools_body: dict[str, Any] = {"tools": [WEATHER]}
        for extra in ({}, tools_body, {**tools_body, "tool_choice": "required"}):
            body = {"model": MODEL, "input": "hi", "stream": True, **extra}
            recorded["responses"].append((await self.http.post("/v1/responses", json=body)).content)
            chat: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if extra:
                chat["tools"] = [
                    {
                        "type": "function",
                        "function": {k: v for k, v in WEATHER.items() if k != "type"},
                    }
                ]
            recorded["chat"].append(
                (await self.http.post("/v1/chat/completions", json=chat)).content
            )
        self.streams = recorded

    async def begin_batch(self) -> None:
        """Open the bystander (once) and take the gauges' baseline."""
        if self._bystander is None:
            self._bystander = await connect(self.ws_url, max_size=None)
        self._baseline = await self.gauges()
        if self.errors is not None:
            self._logged = len(self.errors.records)

    async def end_batch(self) -> None:
        """The batch left nothing behind, and the bystander still converses."""
        assert self._bystander is not None
        try:
            first = await self._turn(self._bystander, input="still there?", store=False)
            await self._turn(
                self._bystander, input="and again", store=False, previous_response_id=first["id"]
            )
        except Exception as exc:
            self.out.bystander_failures += 1
            self.out.note("bystander", "bystander", repr(exc))
            with contextlib.suppress(Exception):
                await self._bystander.close()
            self._bystander = await connect(self.ws_url, max_size=None)
        deadline = time.monotonic() + REPLY_TIMEOUT
        gauges = await self.gauges()
        while gauges != self._baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            gauges = await self.gauges()
        if gauges != self._baseline:
            self.out.leaked_sessions += 1
            self.out.note(
                "leak", "gauges", f"gauges {gauges} after the batch, {self._baseline} before"
            )
            self._baseline = gauges
        if self.errors is not None:
            for record in self.errors.records[self._logged :]:
                self.out.crash("gateway log", record)
            self._logged = len(self.errors.records)

    async def gauges(self) -> dict[str, float]:
        text = (await self.http.get("/metrics")).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("hotloop_active_responses", "hotloop_websocket_connections"):
                values[name] = float(value)
        return values

    async def _turn(self, ws: ClientConnection, **fields: Any) -> dict[str, Any]:
        """One normal create; its response, or an AssertionError saying what came instead."""
        await ws.send(encode({"type": "response.create", "model": MODEL, **fields}))
        async with asyncio.timeout(REPLY_TIMEOUT):
            while True:
                event = orjson.loads(await ws.recv())
                if event["type"] in WS_FINAL:
                    break
        assert event["type"] == "response.completed", event
        response: dict[str, Any] = event["response"]
        return response

    # -- WebSocket frames ----------------------------------------------------------------

    def resolve(self, value: Any, last: str) -> Any:
        if value == LAST_ID:
            return last
        if value == STORED_ID:
            return self.stored_id
        if value == FOREIGN_ID:
            return self.foreign_id
        return value

    def resolved(self, frame: Frame, last: str) -> Any:
        """The frame's data with its placeholders replaced."""
        data = frame.data
        if isinstance(data, dict):
            data = {k: self.resolve(v, last) for k, v in data.items()}
        return data

    def frame_bytes(self, frame: Frame, last: str) -> str | bytes:
        data = self.resolved(frame, last)
        if isinstance(data, bytes):
            return data if frame.binary else data.decode("utf-8", "replace")
        text = encode(data, frame.ascii_only)
        return text if frame.binary else text.decode()

    async def ws_socket(self) -> ClientConnection:
        return await connect(self.ws_url, max_size=None, ping_interval=None)

    async def ws_group(self, ws: ClientConnection, frames: Sequence[Frame]) -> ClientConnection:
        """Pipeline ``frames`` on ``ws``, expect one final event per frame, then prove the
        socket serves a normal create. Returns the socket to use next (a new one if it died)."""
        out = self.out
        out.inputs["ws"] += len(frames)
        last = getattr(ws, "fuzz_last", self.foreign_id)
        where = "ws " + repr([f.data for f in frames])
        finals = 0
        data = [self.frame_bytes(frame, last) for frame in frames]
        # A cancel of a valid lane is answered by nothing of its own (a response it stops
        # ends with response.failed, the final event of that response's create).
        expected = sum(1 for frame in frames if not silent_cancel(self.resolved(frame, last)))
        # Beyond twice the limit the transport closes the socket with 1009, by design.
        oversized = any(
            len(d.encode() if isinstance(d, str) else d) > 2 * MAX_MESSAGE_BYTES for d in data
        )
        try:
            for item in data:
                await ws.send(item)
            async with asyncio.timeout(REPLY_TIMEOUT):
                while finals < expected:
                    message = await ws.recv()
                    if not self._ws_event(message, where):
                        continue
                    finals += 1
        except TimeoutError:
            out.hang(where, f"{finals} of {expected} frames answered")
            return await self._replace(ws)
        except ConnectionClosed as exc:
            if oversized:
                # Closed with 1009, or reset while the client still wrote the frame.
                out.replies["ws closed (oversized frame)"] += 1
            else:
                out.crash(where, f"the socket was closed: {exc!r}")
            return await self._replace(ws)
        try:
            response = await self._turn(ws, input="a normal turn", store=False)
            ws.fuzz_last = response["id"]  # type: ignore[attr-defined]
        except TimeoutError:
            out.hang(where, "the normal create after it never finished")
            return await self._replace(ws)
        except (ConnectionClosed, AssertionError) as exc:
            out.crash(where, f"the socket stopped serving: {exc!r}")
            return await self._replace(ws)
        return ws

    async def _replace(self, ws: ClientConnection) -> ClientConnection:
        ws.transport.abort()
        return await self.ws_socket()

    def _ws_event(self, message: str | bytes, where: str) -> bool:
        """Check one event; True when it is the final event of a frame."""
        out = self.out
        try:
            event = orjson.loads(message)
            kind = event["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            out.crash(where, f"unreadable event {message[:200]!r}")
            return False
        if kind not in WS_FINAL:
            return False
        out.replies[kind] += 1
        if kind == "error":
            status = event.get("status")
            if not isinstance(status, int):
                out.crash(where, f"error event without a status: {event}")
            check_error_body(event.get("error"), out, where, status=status)
        elif kind == "response.failed":
            # A response's ``error`` is OpenAI's ``{code, message}``: no type, no param.
            check_error_body(
                event["response"].get("error"), out, where, status=None, keys=("code", "message")
            )
        elif kind == "response.steer.failed":
            # A steer is answered in the shape of the steering protocol: no ``param``.
            check_error_body(
                event.get("error"), out, where, status=None, keys=("message", "type", "code")
            )
        return True

    # -- HTTP ------------------------------------------------------------------------------

    async def http_input(self, item: HTTPInput) -> None:
        out = self.out
        out.inputs["http"] += 1
        if item.raw is not None:
            await self._raw_http(item.raw)
            return
        if item.body is not None:
            body = item.body
            if isinstance(body, dict):
                body = {k: self.resolve(v, self.foreign_id) for k, v in body.items()}
            content = encode(body)
        else:
            content = item.content or b""
        headers = {"content-type": item.content_type} if item.content_type else {}
        where = f"POST {item.path} {content!r}"
        try:
            reply = await self.http.post(item.path, content=content, headers=headers)
        except httpx.TimeoutException:
            out.hang(where, "no reply in time")
            return
        except httpx.TransportError as exc:
            out.crash(where, f"connection dropped: {exc!r}")
            return
        self.check_http_reply(reply, where)

    def check_http_reply(self, reply: httpx.Response, where: str) -> None:
        out = self.out
        if reply.status_code != 200:
            out.replies[f"http {reply.status_code}"] += 1
            try:
                body = reply.json()
            except ValueError:
                out.crash(where, f"{reply.status_code} without a JSON body: {reply.text[:200]}")
                return
            if not isinstance(body, dict) or set(body) != {"error"}:
                out.crash(where, f"not an OpenAI error body: {body!r}")
                return
            check_error_body(body["error"], out, where, status=reply.status_code)
            return
        content_type = reply.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            kind = "chat" if "chat/completions" in where else "responses"
            final = self.decode_stream(kind, [reply.content], where)
            if final is None:
                out.crash(where, "the stream did not end with a terminal event")
            return
        body = reply.json()
        status = body.get("status") if "choices" not in body else "chat"
        out.replies[f"http 200 {status}"] += 1
        if status not in ("completed", "incomplete", "chat"):
            out.crash(where, f"a 200 with status {status!r}")
        if status != "chat" and body.get("store") and isinstance(body.get("id"), str):
            self.stored_id = body["id"]

    async def _raw_http(self, raw: bytes) -> None:
        """Malformed framing on a fresh connection: a reply (not 5xx) or a close, in time."""
        where = f"raw {raw[:200]!r}"
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(raw)
                    await writer.drain()
                    head = await reader.read(64)
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
        except TimeoutError:
            self.out.hang(where, "no reply in time")
            return
        except ConnectionError:
            self.out.replies["raw reset"] += 1
            return
        status = head[9:12]
        self.out.replies[f"raw {status.decode(errors='replace') or 'closed'}"] += 1
        if status.startswith(b"5"):
            self.out.crash(where, f"{head!r}")

    # -- decoders ------------------------------------------------------------------------

    def stream_chunks(self, item: StreamInput) -> tuple[list[bytes], bool]:
        """The chunks of ``item``, and whether they are an unmutated recorded stream."""
        if item.random is not None:
            data = item.random
        else:
            streams = self.streams[item.kind]
            data = streams[item.base % len(streams)]
            for where, length, new in item.mutations:
                at = where % (len(data) + 1)
                data = data[:at] + new + data[at + length :]
        cuts = sorted({c % (len(data) + 1) for c in item.cuts})
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        return chunks, item.random is None and not item.mutations

    def decoder_input(self, item: StreamInput) -> None:
        self.out.inputs["decoder"] += 1
        chunks, pristine = self.stream_chunks(item)
        where = f"decode {item.kind} {b''.join(chunks)[:400]!r}"
        start = time.monotonic()
        final = self.decode_stream(item.kind, chunks, where, strict=False)
        if time.monotonic() - start > REPLY_TIMEOUT:
            self.out.hang(where, "no reply in time")
        if pristine and final is None:
            self.out.crash(where, "a recorded stream decoded without a terminal event")

    def decode_stream(
        self, kind: str, chunks: Iterable[bytes], where: str, *, strict: bool = True
    ) -> str | None:
        """Decode a stream; return its terminal event type, or None.

        A :class:`HotloopError` is a refusal (a failure when ``strict``: the gateway's own
        streams must decode); any other exception is a crash of the decoder.
        """
        try:
            if kind == "responses":
                final = self._decode_responses(chunks, where)
            else:
                final = self._decode_chat(chunks, where)
        except HotloopError as exc:
            self.out.replies[f"decoder refused: {type(exc).__name__}"] += 1
            if strict:
                self.out.crash(where, f"the gateway's stream does not decode: {exc!r}")
            return None
        except Exception as exc:
            self.out.crash(where, f"the decoder raised {exc!r}")
            return None
        self.out.replies[f"decoded {kind}: {final}"] += 1
        return final

    def _decode_responses(self, chunks: Iterable[bytes], where: str) -> str | None:
        decoder = ResponsesSSEDecoder()
        final = None
        events = [event for chunk in chunks for event in decoder.feed(chunk)]
        events.extend(decoder.close())
        for event in events:
            if event.type in SSE_TERMINAL:
                final = event.type
                if event.type == "error":
                    self._stream_error(getattr(event, "code", None), where)
                elif event.type == "response.failed":
                    error = getattr(getattr(event, "response", None), "error", None) or {}
                    self._stream_error(error.get("code"), where)
        return final

    def _decode_chat(self, chunks: Iterable[bytes], where: str) -> str | None:
        sse = SSEDecoder()
        decoder = ChatStreamDecoder("resp_fuzz", MODEL)
        events = []
        done = False
        messages = [m for chunk in chunks for m in sse.feed(chunk)]
        messages.extend(sse.close())
        for message in messages:
            if message.data == "[DONE]":
                done = True
                break
            events.extend(decoder.feed(codec.decode_object(message.data)))
            if decoder.done:
                break
        events.extend(decoder.close())
        final = events[-1].type if events else None
        for event in events:
            if event.type == "error":
                self._stream_error(getattr(event, "code", None), where)
        if not done and final != "error":
            return None
        return final

    def _stream_error(self, code: Any, where: str) -> None:
        if "decode" in where:
            return  # a mutated stream's error event says nothing about the gateway
        if code == "server_error" or code not in DOCUMENTED_CODES:
            self.out.crash(where, f"the stream ended with error code {code!r}")


async def run_concurrently(
    items: Sequence[Any], workers: int, handle: Callable[[int, Any], Any]
) -> None:
    """Run ``handle(worker, item)`` over ``items`` with ``workers`` tasks."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(index: int) -> None:
        while not queue.empty():
            await handle(index, queue.get_nowait())

    await asyncio.gather(*(worker(i) for i in range(workers)))


@asynccontextmanager
async def live_gateway() -> AsyncIterator[Fuzzer]:
    """A gateway on the real sim engine on a loopback port, and a fuzzer pointed at it."""
    errors = ErrorLog()
    backend = SimBackend(ten_turn_scenario(), "zero")
    config = GatewayConfig(
        max_message_bytes=MAX_MESSAGE_BYTES,
        # Unfinished requests are answered (408) well within the bound on a reply.
        header_timeout=REPLY_TIMEOUT / 4,
        body_timeout=REPLY_TIMEOUT / 4,
    )
    server = GatewayServer(backend, config)
    # After the server's uvicorn config, which sets up uvicorn's loggers (not propagating).
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        async with server:
            fuzzer = Fuzzer(server.host, server.port, errors)
            try:
                await fuzzer.prepare()
                yield fuzzer
            finally:
                await fuzzer.aclose()
    finally:
        for logger in loggers:
            logger.removeHandler(errors)


async def run_batch(
    fuzzer: Fuzzer,
    groups: Sequence[Sequence[Frame]] = (),
    requests: Sequence[HTTPInput] = (),
    streams: Sequence[StreamInput] = (),
    *,
    workers: int = 8,
) -> None:
    """One batch: frames on ``workers`` sockets and requests on ``workers`` connections at
    once, the decoder inputs, then the bystander and gauge checks."""
    await fuzzer.begin_batch()
    sockets = [await fuzzer.ws_socket() for _ in range(workers if groups else 0)]

    async def frames(index: int, group: Sequence[Frame]) -> None:
        sockets[index] = await fuzzer.ws_group(sockets[index], group)

    async def request(index: int, item: HTTPInput) -> None:
        await fuzzer.http_input(item)

    await asyncio.gather(
        run_concurrently(groups, workers, frames), run_concurrently(requests, workers, request)
    )
    for socket in sockets:
        await socket.close()
    for item in streams:
        fuzzer.decoder_input(item)
    await fuzzer.end_batch()
