"""HTTP endpoints: ``POST /v1/responses`` (JSON and SSE), ``POST /v1/chat/completions``,
``GET /v1/responses/{id}``, ``GET /v1/models``, ``GET /health`` and ``GET /metrics``.

Errors use OpenAI's body ``{"error": {message, type, param, code}}`` with the matching
status. JSON or SSE is chosen only from the body's ``stream`` field, never from ``Accept``.
Mid-stream failures are ``response.failed`` events: no SSE payload ever has a top-level
``error`` key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from hotloop.errors import APIError, DecodeError, InvalidMessage
from hotloop.gateway.core import Gateway, ResponseRun, new_id
from hotloop.gateway.metrics import CONTENT_TYPE
from hotloop.protocol.chat import chat_request_to_responses
from hotloop.protocol.chat_stream import ChatChunkEncoder, chat_completion_from_response
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import parse_create
from hotloop.protocol.server_session import lookup_parent
from hotloop.protocol.sse import encode_sse
from hotloop.wire import codec
from hotloop.wire.events import ErrorEvent, ResponseFailed

__all__ = ["HTTPEndpoints", "error_response", "json_response"]

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

logger = logging.getLogger("hotloop.gateway")

#: What a client reads about a failure of the gateway itself: never the exception's text.
_SERVER_FAILED = "The server failed to process the request."


def server_error() -> APIError:
    return APIError(_SERVER_FAILED, status=500, type="server_error", code="server_error")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dumps(data), status, headers=headers, media_type="application/json")


def error_response(error: APIError, *, websocket: bool = False) -> Response:
    """The OpenAI error body; a denied WebSocket upgrade also carries ``status``."""
    body: dict[str, Any] = {"error": error.body()}
    if websocket:
        body["status"] = error.status
    headers = {"x-should-retry": "false"} if error.status >= 500 else {}
    if error.status == 408:
        # The rest of the request never came: the connection cannot carry another one.
        headers["connection"] = "close"
    # retry-after: the SDKs wait this long before their own retry of a 429.
    headers.update(error.headers())
    return json_response(body, error.status, headers or None)


class HTTPEndpoints:
    """The HTTP side of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def authorize(self, headers: Any) -> APIError | None:
        """``None`` when the request may proceed, else the 401 to send."""
        keys = self.gateway.config.api_keys
        if keys is None:
            return None
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip() in keys:
            return None
        return APIError(
            "Incorrect API key provided." if token else "Missing bearer authentication.",
            status=401,
            code="invalid_api_key",
        )

    async def _read_body(self, request: Request) -> dict[str, Any]:
        limit = self.gateway.config.max_message_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        stream = request.stream()
        idle = self.gateway.config.body_timeout
        while True:
            # A body that stops arriving (a stalled chunked upload) is cut after ``idle``.
            try:
                async with asyncio.timeout(idle):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise APIError(
                    f"The request body stopped arriving for {idle:g} s.",
                    status=408,
                    code="request_timeout",
                ) from None
            except ClientDisconnect:
                # The client went away mid-body: nobody to answer, nothing of ours failed.
                logger.info("client disconnected while sending a %s body", request.url.path)
                raise _ClientGone from None
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        try:
            return codec.decode_object(b"".join(chunks), max_depth=codec.MAX_NESTING_DEPTH)
        except codec.NestingTooDeep as exc:
            raise APIError(
                f"The body nests arrays and objects more than {codec.MAX_NESTING_DEPTH} "
                "levels deep.",
                code="nesting_too_deep",
            ) from exc
        except DecodeError as exc:
            raise APIError(f"Invalid JSON body: {exc}", code="invalid_json") from exc

    def _fail(self, error: APIError, transport: str) -> Response:
        self.gateway.metrics.errors.labels(transport, error.code or error.type).inc()
        return error_response(error)

    async def create_response(self, request: Request) -> Response:
        received_ns = time.perf_counter_ns()
        gateway = self.gateway
        denied = self.authorize(request.headers)
        if denied is not None:
            return self._fail(denied, "http")
        try:
            body = await self._read_body(request)
            create = parse_create(body)
            # The same resolution as WebSocket mode, with no connection cache: the store.
            tenant = gateway.tenant(request.headers.get("authorization", ""))
            lookup = lookup_parent(create.previous_response_id, None)
            parent, parent_stored = await gateway.resolve_parent(lookup, tenant)
            transport = "sse" if create.stream else "http"
            prepared = gateway.prepare(
                create,
                parent,
                received_ns=received_ns,
                transport=transport,
                parent_stored=parent_stored,
                tenant=tenant,
            )
        except APIError as exc:
            return self._fail(exc, "http")
        except _ClientGone:
            return _unanswered()
        run = gateway.run(prepared)
        if create.stream:
            return StreamingResponse(
                _sse(run), media_type="text/event-stream", headers=_SSE_HEADERS
            )
        try:
            async for event in run.events():
                if isinstance(event, ResponseFailed) and run.error is not None:
                    return self._fail(run.error, "http")
            return json_response(run.response.to_dict())
        except Exception as exc:
            logger.error("response %s failed", run.response_id, exc_info=exc)
            return self._fail(server_error(), "http")

    async def retrieve_response(self, request: Request) -> Response:
        denied = self.authorize(request.headers)
        if denied is not None:
            return self._fail(denied, "http")
        response_id = request.path_params["response_id"]
        # Another tenant's response is as absent as one never stored.
        tenant = self.gateway.tenant(request.headers.get("authorization", ""))
        stored = await self.gateway.store.load_response(response_id, tenant=tenant)
        if stored is None:
            return self._fail(
                APIError(
                    f"No response found with id '{response_id}'.",
                    status=404,
                    code="response_not_found",
                    param="response_id",
                ),
                "http",
            )
        return Response(stored, media_type="application/json")

    async def chat_completions(self, request: Request) -> Response:
        received_ns = time.perf_counter_ns()
        gateway = self.gateway
        denied = self.authorize(request.headers)
        if denied is not None:
            return self._fail(denied, "chat")
        try:
            body = await self._read_body(request)
            try:
                chat = chat_request_to_responses(body)
            except InvalidMessage as exc:
                raise APIError(str(exc), param=exc.param, code="invalid_request") from exc
            create = parse_create(
                {
                    # Sampling, reasoning effort, the answer's format (response_format).
                    **chat.extra,
                    "model": chat.model,
                    "input": [item.to_dict() for item in chat.input],
                    "instructions": chat.instructions,
                    "tools": chat.tools,
                    "tool_choice": chat.tool_choice,
                    "parallel_tool_calls": chat.parallel_tool_calls
                    if chat.parallel_tool_calls is not None
                    else True,
                    "max_output_tokens": chat.max_output_tokens,
                    "store": False,
                }
            )
            prepared = gateway.prepare(
                create, Conversation.start(), received_ns=received_ns, transport="chat"
            )
        except APIError as exc:
            return self._fail(exc, "chat")
        except _ClientGone:
            return _unanswered()
        run = gateway.run(prepared)
        completion_id = new_id("chatcmpl")
        created = int(time.time())
        if chat.stream:
            encoder = ChatChunkEncoder(completion_id, chat.model, created, chat.include_usage)
            return StreamingResponse(
                _chat_sse(run, encoder), media_type="text/event-stream", headers=_SSE_HEADERS
            )
        try:
            async for event in run.events():
                if isinstance(event, ResponseFailed) and run.error is not None:
                    return self._fail(run.error, "chat")
            return json_response(
                chat_completion_from_response(run.response, completion_id, created)
            )
        except Exception as exc:
            logger.error("response %s failed", run.response_id, exc_info=exc)
            return self._fail(server_error(), "chat")

    async def models(self, request: Request) -> Response:
        denied = self.authorize(request.headers)
        if denied is not None:
            return self._fail(denied, "http")
        created = int(self.gateway.started_at)
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "hotloop"}
            for model in self.gateway.models()
        ]
        return json_response({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "models": list(self.gateway.models())})

    async def metrics(self, request: Request) -> Response:
        self.gateway.metrics.log_dropped.set(self.gateway.log.dropped)
        return Response(self.gateway.metrics.render(), media_type=CONTENT_TYPE)


class _ClientGone(Exception):
    """The client disconnected while sending its body; the request is dropped unanswered."""


def _unanswered() -> Response:
    """What an endpoint returns to a client that is gone: uvicorn sends nothing."""
    return Response(status_code=400)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        f"The request body is {size} bytes; the limit is {limit} bytes.",
        status=413,
        code="message_too_large",
    )


async def _sse(run: ResponseRun) -> AsyncIterator[bytes]:
    sequence = 0
    try:
        async for event in run.events():
            sequence = event.sequence_number or 0
            yield encode_sse(codec.encode_event(event), event.type)
    except Exception as exc:
        # The headers are sent: the stream ends with the SSE error event instead.
        logger.error("response %s failed", run.response_id, exc_info=exc)
        error = ErrorEvent(
            message=_SERVER_FAILED, code="server_error", sequence_number=sequence + 1
        )
        yield encode_sse(codec.encode_event(error), error.type)


async def _chat_sse(run: ResponseRun, encoder: ChatChunkEncoder) -> AsyncIterator[bytes]:
    try:
        async for event in run.events():
            for chunk in encoder.feed(event):
                yield encode_sse(codec.dumps(chunk))
    except Exception as exc:
        logger.error("response %s failed", run.response_id, exc_info=exc)
        yield encode_sse(codec.dumps({"error": server_error().body()}))
    yield b"data: [DONE]\n\n"
