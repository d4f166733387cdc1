"""A client that goes away mid-generation frees the engine: through the gateway in front of a
real llama.cpp server, closing the SSE stream or the WebSocket while the model writes leaves
every slot idle (``GET /slots``: ``is_processing`` false) within a second, and the engine
predicted far fewer tokens than the request allowed.

The tiny model answers "All done." at once without tools, so the generation is made long on
purpose, differently for each upstream:

* Chat Completions: a JSON schema (``text.format``, which the gateway passes on as
  ``response_format``) for an array of integers. The model's own preferences fight it, so
  every token goes through llama.cpp's whole-vocabulary grammar pass (~110-140 tokens/s
  here), and the array never closes: about 13 s to ``max_output_tokens``.
* llama.cpp's ``/v1/responses`` ignores ``text.format`` (the model says "All done."), so
  there the request offers the tool with ``tool_choice: "none"``: the model writes its call
  skeleton as text, over and over, up to ``max_output_tokens`` (~1.5 s without a grammar).
  Either way, a generation that ran to its end would have predicted ``max_output_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed

from hotloop.backends.chat import ChatBackend
from hotloop.gateway import GatewayServer
from hotloop.testing.llamacpp import LlamaServer
from support import TINY_MODEL as MODEL
from support import WEATHER_FUNCTION as WEATHER

#: What the client lets the model write; with the prompt it fits a slot's 2048 tokens.
MAX_OUTPUT_TOKENS = 1800
#: Text deltas read before the client goes away: the engine is mid-generation by then.
DELTAS_BEFORE_CLOSE = 20
#: The bound on the engine: every slot idle within this long after the client went away.
IDLE_WITHIN_S = 1.0
NUMBERS = {
    "format": {
        "type": "json_schema",
        "name": "numbers",
        "schema": {"type": "array", "items": {"type": "integer"}},
    }
}

pytestmark = pytest.mark.timeout(60)


def long_request(gateway: GatewayServer) -> dict[str, Any]:
    """A request the tiny model answers with ``MAX_OUTPUT_TOKENS`` of text (module doc)."""
    request: dict[str, Any] = {
        "model": MODEL,
        "input": "Count.",
        "temperature": 0,
        "max_output_tokens": MAX_OUTPUT_TOKENS,
    }
    if isinstance(gateway.gateway.backend, ChatBackend):
        return {**request, "text": NUMBERS}
    return {**request, "tools": [WEATHER], "tool_choice": "none"}


async def busy_slots(server: LlamaServer) -> list[int]:
    return [slot["id"] for slot in await server.aslots() if slot["is_processing"]]


async def tokens_predicted(server: LlamaServer) -> float:
    """The engine's ``llamacpp:tokens_predicted_total`` (cancelled generations count too)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        reply = await http.get("/metrics")
    reply.raise_for_status()
    for line in reply.text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return float(line.split()[1])
    raise AssertionError("no llamacpp:tokens_predicted_total in /metrics")


async def wait_idle(server: LlamaServer, since: float) -> float:
    """Seconds from ``since`` until no slot is processing.

    Fails when that takes longer than :data:`IDLE_WITHIN_S`, after waiting for the engine to
    finish anyway, so that the next test finds it idle.
    """
    while await busy_slots(server):
        if time.monotonic() - since > IDLE_WITHIN_S:
            deadline = time.monotonic() + 30.0
            while await busy_slots(server) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            waited = time.monotonic() - since
            raise AssertionError(
                f"a slot was still processing {IDLE_WITHIN_S} s after the client went away "
                f"(idle after {waited:.1f} s)"
            )
        await asyncio.sleep(0.01)
    return time.monotonic() - since


async def check_cut_short(server: LlamaServer, before: float) -> None:
    """The engine generated (at least what the client read) and stopped short of the
    request's limit: it was cancelled, it did not run to the end and then go idle."""
    predicted = await tokens_predicted(server) - before
    assert DELTAS_BEFORE_CLOSE <= predicted < MAX_OUTPUT_TOKENS
    assert await busy_slots(server) == []


async def check_gateway_let_go(gateway: GatewayServer) -> None:
    """Nothing of the response is left running in the gateway, and no socket is open (the
    gauge drops once the socket's tasks are unwound: allow it a moment)."""
    registry = gateway.gateway.metrics.registry

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name)

    deadline = time.monotonic() + IDLE_WITHIN_S
    while gauge("hotloop_websocket_connections") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert gauge("hotloop_websocket_connections") == 0
    assert gauge("hotloop_active_responses") == 0


async def test_closing_the_sse_stream_frees_the_slot(
    gateway: GatewayServer, llama_server: LlamaServer
) -> None:
    assert await busy_slots(llama_server) == []
    before = await tokens_predicted(llama_server)
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    stream = await sdk.responses.create(stream=True, **long_request(gateway))
    deltas = 0
    async for event in stream:
        assert event.type not in ("response.completed", "response.failed")
        if event.type == "response.output_text.delta":
            deltas += 1
            if deltas == DELTAS_BEFORE_CLOSE:
                break
    assert len(await busy_slots(llama_server)) == 1  # the engine is generating
    went_away = time.monotonic()
    await stream.close()  # closes the HTTP connection mid-stream
    idle_after = await wait_idle(llama_server, went_away)
    await sdk.close()
    assert idle_after <= IDLE_WITHIN_S
    await check_cut_short(llama_server, before)
    await check_gateway_let_go(gateway)


async def test_closing_the_websocket_frees_the_slot(
    gateway: GatewayServer, llama_server: LlamaServer
) -> None:
    assert await busy_slots(llama_server) == []
    before = await tokens_predicted(llama_server)
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    async with sdk.responses.connect() as connection:
        await connection.response.create(store=False, **long_request(gateway))
        deltas = 0
        async for event in connection:
            assert event.type not in ("response.completed", "response.failed", "error")
            if event.type == "response.output_text.delta":
                deltas += 1
                if deltas == DELTAS_BEFORE_CLOSE:
                    break
        assert len(await busy_slots(llama_server)) == 1  # the engine is generating
        went_away = time.monotonic()
        closing = asyncio.create_task(connection.close())  # the close frame, mid-response
        idle_after = await wait_idle(llama_server, went_away)
        # The client library stops reading while 16 unread frames are queued, so it would
        # see the gateway's close frame only after its 10 s close timeout: reading what is
        # left lets the handshake end now.
        with contextlib.suppress(ConnectionClosed):
            while True:
                await connection.recv_bytes()
        await closing
    await sdk.close()
    assert idle_after <= IDLE_WITHIN_S
    await check_cut_short(llama_server, before)
    await check_gateway_let_go(gateway)
