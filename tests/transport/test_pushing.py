"""``PushingTransport.stream``: a transport written as ``stream_to`` is iterable too."""

from __future__ import annotations

import pytest

from hotloop.transport import ModelRequest
from support import ScriptedTransport, answer_events


async def test_stream_yields_what_stream_to_hands_over_and_raises_what_it_raised() -> None:
    client = ScriptedTransport([answer_events("r1")])
    request = ModelRequest(model="m", history=())
    kinds = [event.type async for event in client.stream(request)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    with pytest.raises(IndexError):  # no turn left to play: stream_to raises
        async for _ in client.stream(request):
            pass


async def test_leaving_the_iteration_early_cancels_the_turn() -> None:
    client = ScriptedTransport([answer_events("r1")])
    request = ModelRequest(model="m", history=())
    async for event in client.stream(request):
        assert event.type == "response.created"
        break
    assert client.requests == [request]
