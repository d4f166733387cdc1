"""What every upstream backend does the same way: pick a replica, send, stream, retry.

:class:`ForwardingBackend` is the shared half of the Chat Completions and Responses upstreams
(and any other streamed HTTP upstream). A subclass says what to send (:meth:`payload`) and how
to read what comes back (:meth:`decoder`, a :class:`StreamDecoder` writing into the turn's
response builder); the base does the rest the same way for all of them:

* the conversation's replica first (rendezvous order), then the next ones;
* a turn is sent again only while nothing of it has reached the client, and only after a
  failure worth retrying (refused, timed out, 429, 5xx, cut before any output), up to
  ``max_attempts``; a 429 waits its ``retry-after`` (at most 2 s; a longer one goes back to
  the client as the 429 with that ``retry-after``);
* the first output must come within ``first_token_timeout`` and each later chunk within
  ``stall_timeout``;
* every failure on the way is one of the documented errors of
  :func:`~hotloop.backends.upstream.upstream_error`;
* with ``hedging`` configured and several replicas, a turn with no output after the hedge
  delay is also sent from the next replica on, and the first to produce output wins
  (:mod:`hotloop.backends.hedging`); each of the two runs the steps above on its own.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

import httpx

from hotloop.backends.base import BackendSession, StatelessSession
from hotloop.backends.hedging import hedging_for
from hotloop.backends.upstream import (
    Replica,
    Replicas,
    UpstreamConfig,
    model_map,
    retryable,
    upstream_error,
)
from hotloop.errors import APIError, DecodeError, HotloopError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import Generation, GenerationRequest
from hotloop.protocol.sse import SSEDecoder
from hotloop.wire.events import Event

__all__ = ["ForwardingBackend", "StreamDecoder"]

#: How long a 429 without ``retry-after`` makes the next try wait, per attempt so far.
_RATE_LIMIT_WAIT = 0.5
#: The longest ``retry-after`` waited for while the client waits: longer, and the client
#: gets the 429 (with the upstream's ``retry-after``) to decide for itself.
_MAX_RETRY_AFTER = 2.0
#: The most of an error body read to quote the upstream's message.
_ERROR_BODY_LIMIT = 64 * 1024


class StreamDecoder(Protocol):
    """Reads one upstream stream into a response builder.

    :meth:`feed` takes the data of each server-sent event (``[DONE]`` never reaches it) and
    returns the builder's events; it raises :class:`~hotloop.errors.APIError` for an error the
    upstream reported and another :class:`~hotloop.errors.HotloopError` for garbage.
    ``done`` turns true once the upstream's terminal event arrived (reading stops there).
    :meth:`close` at the end of the body returns what is left to send, and raises
    :class:`~hotloop.errors.HotloopError` when the turn is not complete (the stream was cut).
    """

    done: bool

    def feed(self, data: str) -> Sequence[Event]: ...

    def close(self) -> Sequence[Event]: ...


class ForwardingBackend(abc.ABC):
    """A :class:`~hotloop.backends.base.Backend` that forwards each turn to an HTTP upstream.

    Its sessions are stateless: the connection pools are shared, and what a connection would
    keep (the rendered conversation) lives on the conversation snapshots of its cache.
    """

    #: The endpoint a turn is posted to, under the upstream's base URL.
    path: ClassVar[str]

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.replicas = Replicas(config, clock=clock, transport=transport)
        self._models = dict(config.models)
        #: Hedging across the replicas (None: off, or a single URL). Each attempt retries and
        #: fails over by itself, so the race holds two attempts at most.
        settings = config.hedging
        self.hedging = hedging_for(
            None if settings is None else dataclasses.replace(settings, max_attempts=2),
            config.urls,
        )

    async def start(self) -> None:
        """Learn the upstream's models when none were configured; start health checks."""
        if not self._models:
            self._models = model_map(self.config, await self.replicas.list_models())
        self.replicas.start_health_checks()

    def models(self) -> Sequence[str]:
        return list(self._models)

    def upstream_model(self, model: str) -> str:
        """The upstream's own name for the served ``model``."""
        return self._models.get(model, model)

    def open_session(self) -> BackendSession:
        return StatelessSession(self.generate)

    async def aclose(self) -> None:
        await self.replicas.aclose()

    # -- what a subclass says ----------------------------------------------------------------

    @abc.abstractmethod
    def payload(self, request: GenerationRequest, *, full: bool) -> bytes:
        """The encoded request for one turn. ``full`` asks for the whole context even where the
        backend would otherwise continue an upstream conversation (after it was refused)."""

    @abc.abstractmethod
    def decoder(self, out: ResponseBuilder, url: str) -> StreamDecoder:
        """A reader of one attempt's stream from the replica at ``url``."""

    def resend_full(self, request: GenerationRequest, error: APIError, full: bool) -> bool:
        """Whether ``error`` (before any output) means: send the whole context instead."""
        return False

    def finished(self, request: GenerationRequest, decoder: StreamDecoder) -> None:
        """Called after a turn streamed completely (to note what the upstream said of it)."""
        return None

    # -- the shared half -------------------------------------------------------------------

    def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        """Send the turn (retrying while nothing reached the client) and stream it to ``out``."""
        hedging = self.hedging
        if hedging is None:
            return self._generate(request, out, 0)
        return hedging.generate(lambda index, staged: self._generate(request, staged, index), out)

    async def _generate(
        self, request: GenerationRequest, out: ResponseBuilder, first: int
    ) -> Generation:
        """The turn from the conversation's replica ``first`` on in its order (a hedge: 1)."""
        full = False
        payload = self.payload(request, full=full)
        order = self.replicas.order(request.context.root_key)
        order = order[first:] + order[:first]
        attempt = 0
        while True:
            replica = order[attempt % len(order)]
            attempt += 1
            decoder = self.decoder(out, replica.url)
            delivered = False
            try:
                async for events in self._attempt(replica, payload, decoder):
                    delivered = True
                    yield events
                self.replicas.succeeded(replica)
                self.finished(request, decoder)
                return
            except APIError as error:
                if not delivered and self.resend_full(request, error, full):
                    full = True
                    payload = self.payload(request, full=full)
                    attempt -= 1  # the upstream answered: this try does not count
                    continue
                wait = _backoff(error, attempt)
                if (
                    delivered
                    or not retryable(error)
                    or attempt >= self.config.max_attempts
                    or wait > _MAX_RETRY_AFTER
                ):
                    if retryable(error):
                        self.replicas.failed(replica, error)
                    raise
                self.replicas.failed(replica, error)
                await asyncio.sleep(wait)

    async def _attempt(
        self, replica: Replica, payload: bytes, decoder: StreamDecoder
    ) -> Generation:
        config = self.config
        sse = SSEDecoder()
        try:
            async with replica.client.stream(
                "POST",
                self.path,
                content=payload,
                headers={"content-type": "application/json"},
            ) as reply:
                if reply.status_code != 200:
                    raise upstream_error(
                        status=reply.status_code,
                        body=await _read_bounded(reply),
                        headers=reply.headers,
                        url=replica.url,
                    )
                chunks = reply.aiter_bytes()
                wait = config.first_token_timeout
                while not decoder.done:
                    # The timeout wraps the read alone: never a yield, which would let it
                    # fire in whatever the consumer does with the events.
                    async with asyncio.timeout(wait):
                        try:
                            data = await anext(chunks)
                        except StopAsyncIteration:
                            break
                    wait = config.stall_timeout
                    events: list[Event] = []
                    try:
                        for message in sse.feed(data):
                            if message.data != "[DONE]":
                                events.extend(decoder.feed(message.data))
                    except HotloopError:
                        # The events before the bad one are in the builder already: they go
                        # out, so the failure counts as mid-output (no retry into a builder
                        # that holds half a turn).
                        if events:
                            yield events
                        raise
                    if events:
                        yield events
        except TimeoutError as exc:
            raise upstream_error(httpx.ReadTimeout("stalled"), url=replica.url) from exc
        except httpx.HTTPError as exc:
            raise upstream_error(exc, url=replica.url) from exc
        except APIError:
            raise
        except HotloopError as exc:
            # A JSON parser's complaint is not the client's to read: say what was wrong.
            detail = "a chunk is not a JSON object" if isinstance(exc, DecodeError) else exc
            raise APIError(
                f"The upstream {replica.url} sent a malformed stream: {detail}",
                status=502,
                type="server_error",
                code="upstream_bad_stream",
            ) from exc
        try:
            closing = decoder.close()
        except HotloopError as exc:
            # The body ended before the turn did: the connection was cut mid-turn.
            raise upstream_error(httpx.RemoteProtocolError("cut"), url=replica.url) from exc
        if closing:
            yield closing


async def _read_bounded(reply: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in reply.aiter_bytes():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return bytes(body[:_ERROR_BODY_LIMIT])


def _backoff(error: APIError, attempt: int) -> float:
    if error.retry_after is not None:
        return error.retry_after
    if error.code == "upstream_rate_limited":
        return _RATE_LIMIT_WAIT * attempt
    return float(min(0.05 * 2**attempt, 1.0))
