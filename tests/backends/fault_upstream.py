"""A scripted Chat Completions server on a real loopback socket, for upstream-backend tests.

:class:`FaultUpstream` speaks just enough HTTP/1.1 (keep-alive, chunked streaming bodies) to
be a model server behind the gateway's chat backend, and does, per request, what the test
told it to:

* :class:`Stream` streams a scripted :class:`Reply` the way vLLM and llama.cpp chunk it: a
  role chunk, the text in fragments, each tool call as a first delta with ``id``, ``type`` and
  ``name`` followed by argument fragments, the finish chunk, a usage chunk (OpenAI's
  ``prompt_tokens_details.cached_tokens`` or llama.cpp's ``timings.cache_n``) and
  ``data: [DONE]``. Options cut the connection after ``n`` chunks, stall after ``n`` chunks,
  replace a chunk with a malformed one, insert an error chunk, hold a chunk until an
  :class:`asyncio.Event` is set, or write every chunk in one write;
* :class:`Status` answers with an HTTP error (429 with ``retry-after``, 5xx or 4xx with
  OpenAI's error body, 401);
* :class:`Stall` reads the request and sends nothing; :class:`Drop` closes the connection
  without answering.

Every request is recorded (method, path, headers, exact body bytes). A client that closes
its connection while a response is still being sent (or while stalled) is recorded as a
disconnect, with an :class:`asyncio.Event` to wait on. :meth:`FaultUpstream.stop` kills the
server: its port refuses connections from then on, and open connections are aborted.
Chunk names (``role``, ``text``, ``call0.start``, ``call0.args``, ``finish``, ``usage``,
``done``) are appended to :attr:`FaultUpstream.log` just before they are written, so a test
can put the upstream's progress and the client's events in one ordered log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "Call",
    "Drop",
    "FaultUpstream",
    "Recorded",
    "Reply",
    "Stall",
    "Status",
    "Stream",
    "closed_port_url",
    "error_body",
]

#: No scripted wait lasts longer than this, so a broken test fails instead of hanging.
GUARD = 10.0


@dataclass(frozen=True)
class Call:
    """One scripted tool call; its arguments stream in ``fragments`` pieces."""

    name: str
    arguments: str
    id: str | None = None
    fragments: int = 3


@dataclass(frozen=True)
class Reply:
    """One scripted assistant turn and the usage reported for it.

    ``usage_style``: ``"openai"`` reports ``prompt_tokens_details.cached_tokens`` in a final
    chunk with empty ``choices``; ``"llama"`` reports llama.cpp's ``timings.cache_n`` and
    no details; ``None`` sends no usage chunk.
    """

    text: str = ""
    calls: Sequence[Call] = ()
    prompt_tokens: int = 100
    completion_tokens: int = 10
    cached_tokens: int = 0
    usage_style: str | None = "openai"
    finish_reason: str | None = None
    text_fragments: int = 2


@dataclass
class Stream:
    """Stream ``reply``; the options script what goes wrong (chunk indices count from 0).

    ``cut_after``: abort the connection after that many chunks. ``stall_after``: send that
    many chunks, then nothing until the client goes away. ``malformed_at``: that chunk is
    replaced by one that is not JSON. ``error_at``: an ``{"error": ...}`` chunk is sent
    before that chunk and the stream ends (the body completes). ``hold``: chunk name ->
    event; the first chunk of that name waits for the event. ``together``: send every chunk
    in one HTTP chunk (the client reads them all at once).
    """

    reply: Reply = field(default_factory=Reply)
    cut_after: int | None = None
    stall_after: int | None = None
    malformed_at: int | None = None
    error_at: int | None = None
    error_message: str = "the engine ran out of KV cache"
    hold: Mapping[str, asyncio.Event] = field(default_factory=dict)
    together: bool = False


@dataclass(frozen=True)
class Status:
    """An HTTP error reply: ``status`` with ``body`` (a dict is JSON-encoded) and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stall:
    """Read the request and send nothing until the client goes away."""


@dataclass(frozen=True)
class Drop:
    """Close the connection as soon as the request is read, without a response."""


Action = Stream | Status | Stall | Drop


def error_body(message: str, kind: str = "server_error", code: str | None = None) -> Any:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class Recorded:
    """One request the upstream received, as it came."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def closed_port_url() -> str:
    """A loopback base URL nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _split(text: str, pieces: int) -> list[str]:
    if not text:
        return []
    pieces = max(1, min(pieces, len(text)))
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


class FaultUpstream:
    """A scripted Chat Completions server; ``async with FaultUpstream() as upstream:``.

    ``models`` is what ``GET /models`` lists. Replies are taken from the queue filled by
    :meth:`script`; when it is empty, ``default`` (an action, or a function of the request
    giving one) answers. ``log`` may be a list shared with the test.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        *,
        models: Sequence[str] = ("upstream-model",),
        default: Action | Callable[[Recorded], Action] | None = None,
        log: list[str] | None = None,
        name: str = "upstream",
    ) -> None:
        self.models = list(models)
        self.default = default if default is not None else Stream(Reply(text="Done."))
        self.log: list[str] = log if log is not None else []
        self.name = name
        self.requests: list[Recorded] = []
        #: What each streamed reply said, as the chat assistant message a client sends back.
        self.streamed: list[dict[str, Any]] = []
        #: Requests whose client went away before their response was complete.
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._queue: deque[Action] = deque()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped = asyncio.Event()
        self.port = 0

    # -- control --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *actions: Action) -> None:
        """Answer the next requests with ``actions``, in order."""
        self._queue.extend(actions)

    @property
    def completions(self) -> list[Recorded]:
        """The ``POST /chat/completions`` requests received, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/completions")]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Kill the server: the port refuses from now on, open connections are aborted."""
        self._stopped.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- HTTP -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                if not await self._respond(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader) -> Recorded | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed an idle connection
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Recorded(method, path, headers, body)

    async def _respond(
        self, request: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer ``request``; False when the connection must not be reused."""
        if request.method == "GET" and request.path.endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
            await self._send(writer, 200, {"object": "list", "data": data})
            return True
        if self._queue:
            action = self._queue.popleft()
        elif callable(self.default):
            action = self.default(request)
        else:
            action = self.default
        if isinstance(action, Status):
            await self._send(writer, action.status, action.body, action.headers)
            return True
        if isinstance(action, Drop):
            return False
        # A client that goes away shows as end-of-file on the request side: nothing else
        # may arrive there while the response is pending.
        gone = asyncio.create_task(reader.read(1))
        try:
            if isinstance(action, Stall):
                await self._wait_gone(gone)
                return False
            return await self._stream(action, request, writer, gone)
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await gone

    async def _wait_gone(self, gone: asyncio.Task[bytes]) -> None:
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if gone.done() and not gone.cancelled():  # end of file, or a reset
            self._client_gone()

    def _client_gone(self) -> None:
        self.disconnects += 1
        self.log.append(f"{self.name}:disconnect")
        self.disconnected.set()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        head.append("content-type: application/json")
        head.append(f"content-length: {len(payload)}")
        head.extend(f"{key}: {value}" for key, value in (headers or {}).items())
        writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
        await writer.drain()

    async def _stream(
        self,
        action: Stream,
        request: Recorded,
        writer: asyncio.StreamWriter,
        gone: asyncio.Task[bytes],
    ) -> bool:
        model = request.json().get("model", "?")
        chunks = self.chunks(action.reply, model)
        self.streamed.append(self.assistant_message(action.reply, chunks))
        if action.malformed_at is not None:
            name, _ = chunks[action.malformed_at]
            chunks[action.malformed_at] = (name, b'data: {"choices": [{"index": 0, "delta"\n\n')
        if action.error_at is not None:
            error = json.dumps(error_body(action.error_message)).encode()
            chunks[action.error_at :] = [("error", b"data: " + error + b"\n\n")]
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        writer.write(head)
        held = dict(action.hold)
        pending: list[bytes] = []

        def framed() -> list[bytes]:
            # Messages gathered for one write go out as one HTTP chunk.
            if action.together and pending:
                pending[:] = [_http_chunk(b"".join(pending))]
            return pending

        for index, (name, data) in enumerate(chunks):
            if action.cut_after is not None and index >= action.cut_after:
                await self._flush(writer, framed())
                self.log.append(f"{self.name}:cut")
                writer.transport.abort()
                return False
            if action.stall_after is not None and index >= action.stall_after:
                await self._flush(writer, framed())
                self.log.append(f"{self.name}:stall")
                await self._wait_gone(gone)
                return False
            event = held.pop(name, None)
            if event is not None:
                await self._flush(writer, framed())
                self.log.append(f"{self.name}:hold {name}")
                waiter = asyncio.create_task(event.wait())
                try:
                    await asyncio.wait(
                        {waiter, gone}, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                if gone.done():
                    self._client_gone()
                    return False
            # Logged before it is written: nothing the client does with it can come first.
            self.log.append(f"{self.name}:{name}")
            if action.together:
                pending.append(data)
            else:
                pending.append(_http_chunk(data))
                if not await self._flush(writer, pending, gone):
                    return False
        framed().append(b"0\r\n\r\n")
        return await self._flush(writer, pending, gone)

    async def _flush(
        self,
        writer: asyncio.StreamWriter,
        pending: list[bytes],
        gone: asyncio.Task[bytes] | None = None,
    ) -> bool:
        if pending:
            writer.write(b"".join(pending))
            pending.clear()
        try:
            await writer.drain()
            # Let the reader side see a close that arrived while writing.
            await asyncio.sleep(0)
        except ConnectionError:
            self._client_gone()
            return False
        if gone is not None and gone.done():
            self._client_gone()
            return False
        return True

    # -- the chunks of a turn -------------------------------------------------------------

    @staticmethod
    def assistant_message(reply: Reply, chunks: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """The chat assistant message of a streamed reply (call ids as they were sent)."""
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        ids = [
            json.loads(data[len(b"data: ") :])["choices"][0]["delta"]["tool_calls"][0]["id"]
            for name, data in chunks
            if name.endswith(".start")
        ]
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call_id, call in zip(ids, reply.calls, strict=True)
            ]
        return message

    def chunks(self, reply: Reply, model: str) -> list[tuple[str, bytes]]:
        """The named SSE messages of ``reply``, as vLLM / llama.cpp stream them."""
        number = next(self._ids)
        head = {
            "id": f"chatcmpl-{self.name}-{number}",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"

        out: list[tuple[str, bytes]] = [("role", chunk({"role": "assistant", "content": ""}))]
        for fragment in _split(reply.text, reply.text_fragments):
            out.append(("text", chunk({"content": fragment})))
        for index, call in enumerate(reply.calls):
            call_id = call.id or f"chatcmpl-tool-{self.name}-{number}-{index}"
            first = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            out.append((f"call{index}.start", chunk({"tool_calls": [first]})))
            for fragment in _split(call.arguments, call.fragments):
                tool = {"index": index, "function": {"arguments": fragment}}
                out.append((f"call{index}.args", chunk({"tool_calls": [tool]})))
        finish = reply.finish_reason or ("tool_calls" if reply.calls else "stop")
        out.append(("finish", chunk({}, finish)))
        if reply.usage_style is not None:
            usage: dict[str, Any] = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            }
            final: dict[str, Any] = {**head, "choices": [], "usage": usage}
            if reply.usage_style == "openai":
                usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
            else:
                final["timings"] = {
                    "cache_n": reply.cached_tokens,
                    "prompt_n": reply.prompt_tokens - reply.cached_tokens,
                    "predicted_n": reply.completion_tokens,
                }
            out.append(("usage", b"data: " + json.dumps(final).encode() + b"\n\n"))
        out.append(("done", b"data: [DONE]\n\n"))
        return out
