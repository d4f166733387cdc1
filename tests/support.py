"""Helpers shared by the tests (importable as ``support`` thanks to ``pythonpath``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest
from hotloop.runtime import Tool, tool
from hotloop.runtime.tools import FollowUps
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec, Turn
from hotloop.transport import ModelRequest, OnEvent, PushingTransport, TransportStats
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message
from hotloop.wire.responses import ResponseObject

T = TypeVar("T")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP handler that sends back every byte it gets, until the peer closes."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    writer.close()


class LoopThread:
    """An event loop in a thread of its own, for a server the code under test does not own.

    A gateway served here keeps answering while the test's own thread blocks (``run_sync``
    runs its own loop) or while Hypothesis drives examples synchronously.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class FakeClock:
    """A clock that only moves when the code under test sleeps (``clock=``, ``sleep=``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


WEATHER_TOOL = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    latency_ms=0,
    output_bytes=64,
)

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Quito", "Hanoi", "Cairo", "Perth", "Baku", "Bern"]


def ten_turn_scenario(turns: int = 10) -> Scenario:
    """A conversation of ``turns`` model turns: ``turns - 1`` turns with one call, then text.

    Turn 3 makes two parallel calls, so the count of tool results and of turns differ.
    """
    script: list[Turn] = []
    for index in range(turns - 1):
        calls = [ScriptedCall("get_weather", codec.dumps({"city": CITIES[index]}).decode())]
        if index == 3:
            calls.append(ScriptedCall("get_weather", codec.dumps({"city": "Tokyo"}).decode()))
        script.append(Turn(text=f"Checking step {index + 1}.", calls=tuple(calls)))
    script.append(Turn(text="All ten steps are done: the weather is fine everywhere."))
    return Scenario(
        name="ten",
        turns=tuple(script),
        tools={"get_weather": WEATHER_TOOL},
        instructions="You check the weather.",
        task="Check the weather in ten cities.",
    )


def normalized(items: Sequence[Item]) -> list[tuple[Any, ...]]:
    """The history without ids, call ids or response ids: what the conversation says."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, Message):
            out.append(("message", item.role, item.text))
        elif isinstance(item, FunctionCall):
            out.append(("function_call", item.name, item.arguments))
        elif isinstance(item, FunctionCallOutput):
            out.append(("function_call_output", item.text))
        else:
            out.append((item.type,))
    return out


# -- the real llama.cpp engine (tests/engine) ----------------------------------------------

#: The tiny engine model's name as the gateway serves it.
TINY_MODEL = "tiny"
#: The tool the tiny model calls, as a Responses ``tools`` entry.
WEATHER_FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def engine_backend(base_url: str, api: str, transport: Any = None) -> Any:
    """The gateway's backend for the llama.cpp server at ``base_url``, speaking ``api``:
    ``chat``, ``responses``, or ``responses-chain`` (chaining by the upstream's ids)."""
    from hotloop.backends.chat import ChatBackend
    from hotloop.backends.responses import ResponsesBackend
    from hotloop.backends.upstream import UpstreamConfig

    config = UpstreamConfig(
        urls=(f"{base_url}/v1",),
        api=api.removesuffix("-chain"),
        chain=api.endswith("-chain"),
        models={TINY_MODEL: TINY_MODEL},
    )
    if config.api == "chat":
        return ChatBackend(config, transport=transport)
    return ResponsesBackend(config, transport=transport)


def completed(server: Any, transport: str) -> float:
    """How many responses ``server`` (a GatewayServer) completed over ``transport``."""
    value = server.gateway.metrics.registry.get_sample_value(
        "hotloop_responses_total", {"transport": transport, "status": "completed"}
    )
    return value or 0.0


def cache_lookups(server: Any, result: str) -> float:
    """How many parent lookups of ``server`` ended in ``result`` (hit, store, miss)."""
    value = server.gateway.metrics.registry.get_sample_value(
        "hotloop_cache_lookups_total", {"result": result}
    )
    return value or 0.0


def weather_failing_in(failing_city: str) -> Tool:
    """``get_weather`` as a runtime tool that raises ``LookupError`` for ``failing_city``."""

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: The city.
        """
        if city == failing_city:
            raise LookupError(f"no station in {failing_city}")
        return "sunny"

    return get_weather


# -- scripted responses: the raw events of one response, for transports that replay them -----


def _scripted_call(index: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{index}",
        "call_id": f"call_{index}",
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


def turn_events(
    response_id: str,
    calls: Sequence[tuple[str, dict[str, Any]]],
    end: str = "completed",
    code: str = "server_error",
) -> list[dict[str, Any]]:
    """The raw events of one response with ``calls``, ending ``end`` (``completed``,
    ``incomplete``, ``failed`` with error ``code``, or cut before its end: ``"cut"``)."""
    response = {"id": response_id, "object": "response", "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": response}]
    items = []
    for index, (name, arguments) in enumerate(calls):
        item = _scripted_call(index, name, arguments)
        items.append(item)
        events += [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "arguments": "", "status": "in_progress"},
            },
            {
                "type": "response.function_call_arguments.done",
                "output_index": index,
                "item_id": item["id"],
                "arguments": item["arguments"],
            },
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    if end == "cut":
        return events
    final = {**response, "status": end, "output": items}
    if end == "incomplete":
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    if end == "failed":
        final["error"] = {"code": code, "message": f"simulated {code}"}
    events.append({"type": f"response.{end}", "response": final})
    return events


def answer_events(response_id: str) -> list[dict[str, Any]]:
    """The raw events of a response that answers ``done``."""
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "done", "annotations": []}],
    }
    response = {"id": response_id, "object": "response", "status": "completed", "output": []}
    return [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": message},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": {**response, "output": [message]}},
    ]


#: The benchmark scripts' folder.
BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args`` in this interpreter; its output, whatever its code."""
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# -- one generation, for tests that drive an engine or a backend directly --------------------


def generation_request(text: str = "go", model: str = "m") -> GenerationRequest:
    """A first turn of ``model`` whose input is one user message ``text``."""
    context = Conversation.start([Message(role="user", content=text)])
    return GenerationRequest(
        request=CreateRequest(model=model, input=()),
        context=context,
        processed_tokens=context.tokens,
    )


def started_builder(model: str = "m") -> ResponseBuilder:
    """A response builder past ``start()``, ready for output."""
    out = ResponseBuilder(ResponseObject(id="resp_t", created_at=0, model=model, status=""))
    out.start()
    return out


class RecordingTransport:
    """A transport that keeps every request it is asked to send, and sends it with ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.sent: list[ModelRequest] = []

    async def stream_to(self, request: ModelRequest, on_event: Any, *, skip: Any = ()) -> None:
        self.sent.append(request)
        await self.inner.stream_to(request, on_event, skip=skip)

    def stream(self, request: ModelRequest) -> Any:
        return self.inner.stream(request)

    async def close(self) -> None:
        await self.inner.close()


class ScriptedTransport(PushingTransport):
    """Serves one scripted response (raw events, see :func:`turn_events`) per request, in order.
    Started tools run a step after each event, as when events come one by one; with ``burst``,
    a response's events are all handed up at once, as when a socket delivers them in one read
    (a fast server, or a stall that ends)."""

    def __init__(self, turns: Sequence[list[dict[str, Any]]], *, burst: bool = False) -> None:
        self.turns = list(turns)
        self.burst = burst
        self.stats = TransportStats()
        self.requests: list[ModelRequest] = []

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        self.requests.append(request)
        for raw in self.turns.pop(0):
            on_event(codec.decode_event(json.dumps(raw).encode()))
            if not self.burst:
                await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def close(self) -> None:
        return None


class VersionedFiles:
    """Files with versions and ``read``/``write`` tools over them: a read after a write sees
    the new version, so a stale result shows. ``runs`` logs every execution; ``cache`` goes
    to ``read``; ``slow`` and ``slow_write`` are how long a read and a write take;
    ``write_follows`` is ``write``'s declared follow-ups; ``while_writing``, if set, is called
    when a write starts."""

    def __init__(
        self,
        *,
        cache: Any = False,
        slow: float = 0.0,
        slow_write: float = 0.0,
        write_follows: FollowUps | None = None,
    ) -> None:
        self.versions: dict[str, int] = {}
        self.runs: list[str] = []
        self.while_writing: Callable[[], None] | None = None
        files = self

        @tool(reads=["repo/{path}"], cache=cache)
        async def read(path: str) -> str:
            """Read a file.

            Args:
                path: The file.
            """
            files.runs.append(f"read {path}")
            await asyncio.sleep(slow)
            return f"{path} v{files.versions.get(path, 0)}"

        @tool(writes=["repo/{path}"], follows=write_follows)
        async def write(path: str) -> str:
            """Change a file.

            Args:
                path: The file.
            """
            files.runs.append(f"write {path}")
            if files.while_writing is not None:
                files.while_writing()
            if slow_write:
                await asyncio.sleep(slow_write)
            files.versions[path] = files.versions.get(path, 0) + 1
            return "written"

        self.read: Tool = read
        self.write: Tool = write
