"""What every client transport does: turn a :class:`ModelRequest` into a Responses event stream.

The runtime always keeps the full conversation (``ModelRequest.history``) and says which of its
items are new since the last response (``new_from``) and what that response's id was. A
transport decides how much to send: a WebSocket on which that response lives sends only the new
items plus ``previous_response_id``; anything else (a new socket after a drop, a cache miss, a
stateless HTTP loop, a Chat Completions server) sends the whole history. That choice is the
transport's alone, so recovery is transparent to the runtime.

A transport serves a turn two ways: :meth:`Transport.stream_to` *pushes* each event into a
callback as it arrives (what the runner uses: over a WebSocket the callback runs in the socket's
own protocol callback, so a streamed token costs no task switch), and :meth:`Transport.stream`
is the same turn as an async iterator, for code that would rather pull.

Errors: a transport raises :class:`TransportError`. ``replay_safe`` says whether the request
may be sent again as it is (nothing of the turn was committed); the runner retries those.
Which failures a transport recovers from itself, and which it raises (replay safe or not), is
decided by its :class:`~hotloop.protocol.client_session.ClientSession`'s rule table.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import statistics
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, Self

from hotloop.protocol.client_session import TransportError
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import Item

__all__ = [
    "RECONNECT_TIMEOUT",
    "Backoff",
    "PercentileDelay",
    "PushingTransport",
    "Closing",
    "refusal_message",
    "request_headers",
    "IteratingTransport",
    "ModelRequest",
    "OnEvent",
    "RequestTimings",
    "Transport",
    "TransportError",
    "TransportStats",
]

#: Seconds a transport keeps trying to reach a server before it gives up (``connect_failed``).
RECONNECT_TIMEOUT = 30.0

#: The backoff's jitter: a generator of its own, so that a transport never draws from (or
#: disturbs) the global ``random`` state an application may have seeded.
_jitter = random.Random()


class PercentileDelay:
    """A delay learned from the times seen: the ``percentile`` of the last ``window``
    samples (interpolated between them), once ``min_samples`` were seen; ``None`` before.

    What the hedges of the runtime and of the gateway wait before a second request.
    """

    __slots__ = ("min_samples", "percentile", "samples", "window")

    def __init__(self, percentile: float, min_samples: int, window: int = 1000) -> None:
        if not 0 < percentile < 1:
            raise ValueError("percentile must be in (0, 1)")
        self.percentile = percentile
        self.min_samples = min_samples
        self.window = window
        self.samples: deque[float] = deque(maxlen=window)

    def add(self, sample: float) -> None:
        self.samples.append(sample)

    def value(self) -> float | None:
        if len(self.samples) < max(1, self.min_samples):
            return None
        if len(self.samples) == 1:
            return self.samples[0]
        cuts = statistics.quantiles(self.samples, n=100, method="inclusive")
        return cuts[min(98, max(0, round(self.percentile * 100) - 1))]


class Backoff:
    """Waits between attempts to reach a server, until a deadline.

    The *n*-th wait (from 0) is drawn uniformly from ``[d/2, d]`` with
    ``d = min(first * 2**n, cap)``: 25 to 50 ms, 50 to 100 ms, ... up to 1 to 2 s, so clients that
    lost the same server at the same moment do not all come back at the same instant. The
    deadline counts from the first failure (:meth:`wait` is called after each failed
    attempt); the last wait is shortened to end at the deadline, so one last attempt is made
    right then.
    """

    __slots__ = ("_attempts", "_deadline", "cap", "first", "timeout")

    def __init__(self, timeout: float, *, first: float = 0.05, cap: float = 2.0) -> None:
        self.timeout = timeout
        self.first = first
        self.cap = cap
        self._attempts = 0
        self._deadline: float | None = None

    @property
    def attempts(self) -> int:
        """Failed attempts so far."""
        return self._attempts

    def delay(self, attempt: int, draw: float) -> float:
        """The wait after failed attempt ``attempt`` (from 0), for a ``draw`` in ``[0, 1)``."""
        ceiling = min(self.first * 2.0**attempt, self.cap)
        return ceiling * (0.5 + draw / 2)

    async def wait(self, at_least: float = 0.0) -> bool:
        """An attempt failed: wait before the next one (``at_least`` seconds, when the server
        asked for that long); ``False`` once the deadline passed."""
        now = asyncio.get_running_loop().time()
        if self._deadline is None:
            self._deadline = now + self.timeout
        attempt = self._attempts
        self._attempts += 1
        left = self._deadline - now
        if left <= 0:
            return False
        await asyncio.sleep(min(max(self.delay(attempt, _jitter.random()), at_least), left))
        return True


def request_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers every request of a transport carries: the user's, and the API key."""
    merged = dict(headers or {})
    if api_key:
        merged["Authorization"] = f"Bearer {api_key}"
    return merged


def refusal_message(url: str, status: int | None, body: bytes, *, websocket: bool) -> str:
    """What to tell a user whose request to ``url`` was refused with ``status``.

    Names the URL, the server's own error message (OpenAI's error body, when it sent one,
    instead of raw bytes) and, for the usual mistakes, what to try: a base URL without
    ``/v1``, a server that does not serve the Responses API (or not in WebSocket mode), an API
    key the server did not accept.
    """
    what = "the WebSocket upgrade" if websocket else "the request"
    message = f"{url} refused {what} with HTTP {status}"
    detail = _error_detail(body)
    if detail:
        message += f": {detail}"
    if status == 401:
        return message + " (pass api_key=, or set OPENAI_API_KEY)"
    if status in (403, 404, 405):
        if "/v1/" not in url:
            return message + (" (the base URL usually ends in /v1, as in http://host:port/v1)")
        if websocket:
            return message + (
                " (this server does not serve the Responses API in WebSocket mode: for "
                'Responses over HTTP use transport="http", for a server that only speaks '
                'Chat Completions (vLLM, llama.cpp, Ollama) use transport="chat", or put a '
                "hotloop gateway in front of it)"
            )
        if url.rstrip("/").endswith("/responses"):
            return message + (
                " (this server does not serve the Responses API: for a server that only "
                'speaks Chat Completions (vLLM, llama.cpp, Ollama) use transport="chat")'
            )
    return message


def _error_detail(body: bytes) -> str:
    message, code = codec.error_body(body)
    return f"{message} ({code})" if code else message


#: Called with each event of a turn, in order, as it arrives (see :meth:`Transport.stream_to`).
OnEvent = Callable[[Event], None]


@dataclass(slots=True)
class RequestTimings:
    """When the client side of one request attempt happened, filled in by the transport.

    Times are absolute ``time.perf_counter_ns()`` values (the transport does not know when the
    run started; the runner makes them relative). ``connect_start_ns``/``connect_end_ns`` are
    set only when this request had to open a connection (the first turn, a reconnect, a new
    pooled HTTP connection). ``encoded_ns``: the body is encoded; ``sent_ns``: it was written
    to the socket (WebSocket) or the HTTP client finished sending it. ``body_bytes`` and
    ``incremental`` say how much was sent: only the new items, or the whole history. When a
    transport sends the request again on its own (a cache miss, a reconnect), the fields
    describe the last send.
    """

    connect_start_ns: int | None = None
    connect_end_ns: int | None = None
    encoded_ns: int | None = None
    sent_ns: int | None = None
    body_bytes: int = 0
    incremental: bool = False


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model turn to request.

    ``history`` is the whole conversation, oldest first; ``history[new_from:]`` are the items
    added since the response ``previous_response_id`` (``None`` on a first turn).
    ``tools`` are Responses ``tools`` entries; ``settings`` holds any other request field
    (``tool_choice``, ``parallel_tool_calls``, ``max_output_tokens``, ``store``, ...).
    ``timings``, when given, is filled in by the transport as the request goes out (one record
    per attempt: the runner passes a fresh one each time it sends the turn).
    """

    model: str
    history: Sequence[Item]
    new_from: int = 0
    previous_response_id: str | None = None
    instructions: str | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    timings: RequestTimings | None = field(default=None, compare=False)

    @property
    def new_items(self) -> Sequence[Item]:
        return self.history[self.new_from :]


@dataclass(slots=True)
class TransportStats:
    """Deterministic counters of what a transport did (tests and benchmarks read them)."""

    connections_opened: int = 0
    requests: int = 0
    full_resends: int = 0
    incremental_requests: int = 0
    bytes_sent: int = 0
    reconnects: int = 0
    cache_misses: int = 0
    #: Responses abandoned mid-stream that the server was asked to stop (WebSocket mode).
    cancels: int = 0


class Transport(Protocol):
    """A client connection to a model server, reused across turns and runs."""

    stats: TransportStats

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        """Send one turn and call ``on_event`` with each of its events as it arrives.

        Returns after the terminal event (``response.completed`` / ``incomplete`` /
        ``failed``) was handed over; raises :class:`TransportError` on failure. An exception
        raised by ``on_event`` ends the turn: no further event is handed over and
        ``stream_to`` raises it. ``on_event`` must not block (it may run inside the socket's
        protocol callback).

        ``skip`` names event types the caller has no use for (the runner's are
        :data:`~hotloop.runtime.runner.REDUNDANT_EVENTS`): the transport may drop them unread.
        It is a hint, not a filter: a transport may still hand them over. Terminal and error
        events are never skipped.
        """
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        """The events of one turn as an async iterator; raises :class:`TransportError`."""
        ...

    async def close(self) -> None:
        """Close the connection(s); turns after this raise ``TransportError`` ``closed``."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class Closing(abc.ABC):
    """``async with transport:`` closes it on the way out (with :meth:`close`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection(s); turns after this raise ``TransportError`` ``closed``."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


_END: Any = object()


class PushingTransport(Closing):
    """For transports whose natural form is :meth:`stream_to` (events pushed as they come):
    :meth:`stream` on top of it."""

    stats: TransportStats

    @abc.abstractmethod
    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        """Send one turn, handing each event to ``on_event`` (see :class:`Transport`)."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        """:meth:`stream_to` as an async iterator."""
        inbox: deque[Event] = deque()
        wakeup: list[asyncio.Future[None]] = []

        def put(event: Event) -> None:
            inbox.append(event)
            if wakeup and not wakeup[0].done():
                wakeup[0].set_result(None)

        task = asyncio.create_task(self.stream_to(request, put))
        task.add_done_callback(lambda _: put(_END))
        try:
            while True:
                while not inbox:
                    wakeup[:] = [asyncio.get_running_loop().create_future()]
                    await wakeup[0]
                event = inbox.popleft()
                if event is _END:
                    task.result()  # raises what the turn raised
                    return
                yield event
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class IteratingTransport(Closing):
    """For transports whose natural form is :meth:`stream`: ``stream_to`` on top of it."""

    stats: TransportStats

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[Event]:
        """The events of one turn as an async iterator; raises :class:`TransportError`."""

    def stream_skipping(self, request: ModelRequest, skip: Collection[str]) -> AsyncIterator[Event]:
        """:meth:`stream`, for a caller with no use for the event types in ``skip``.

        ``skip`` is a hint: this default hands every event over. A transport that can drop
        them before decoding overrides it (:class:`~hotloop.transport.HTTPTransport` does).
        """
        return self.stream(request)

    async def stream_to(
        self, request: ModelRequest, on_event: OnEvent, *, skip: Collection[str] = ()
    ) -> None:
        events = self.stream_skipping(request, skip)
        async with contextlib.aclosing(events) as iterator:  # type: ignore[type-var]
            async for event in iterator:
                on_event(event)
