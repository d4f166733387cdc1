"""The backend of the gateway guide's example: two small classes get every transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import openai

from hotloop.backends.base import StatelessSession
from hotloop.gateway import GatewayServer
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import GenerationRequest
from hotloop.wire.events import Event
from hotloop.wire.responses import Usage


class EchoBackend:
    async def start(self) -> None: ...

    def models(self) -> list[str]:
        return ["echo"]

    def open_session(self) -> StatelessSession:
        return StatelessSession(self.generate)

    async def aclose(self) -> None: ...

    async def generate(
        self, request: GenerationRequest, out: ResponseBuilder
    ) -> AsyncIterator[Sequence[Event]]:
        last = request.context.items[-1]
        yield out.open_text()
        for word in str(getattr(last, "text", "")).split():
            yield out.delta(word + " ")
        yield out.close_item()
        out.set_usage(Usage(input_tokens=request.context.tokens, output_tokens=1))


async def test_a_custom_backend_serves_json_sse_websocket_and_chat() -> None:
    async with GatewayServer(EchoBackend()) as gateway:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
        plain = await sdk.responses.create(model="echo", input="hello there")
        assert plain.output_text == "hello there "
        deltas = []
        async with sdk.responses.stream(model="echo", input="one two") as stream:
            async for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
        assert deltas == ["one ", "two "]
        async with sdk.responses.connect() as connection:
            await connection.response.create(
                model="echo", input="over the socket", previous_response_id=plain.id
            )
            async for event in connection:
                if event.type == "response.completed":
                    assert event.response.output_text == "over the socket "
                    break
        chat = await sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "chat too"}]
        )
        assert chat.choices[0].message.content == "chat too "
        await sdk.close()
