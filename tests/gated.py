"""A gateway backend whose turns the test holds: the sim, gated call by call.

Cancel tests need a response that is certainly still generating when the cancel arrives, and
proof that its generation was closed; timing cannot give either. :class:`GatedBackend` plays
the real sim engine, except that each ``generate`` call follows a mode from ``plan`` (in call
order; ``"pass"`` once the plan runs out, or by the newest input item's text when ``by_input``):

* ``"pass"``: the sim as it is;
* ``"stall"``: the sim's first chunk of output, then nothing, ever (until the call is closed);
* ``"hold"``: the first chunk, then the rest once :attr:`GatedBackend.release` is set;
* ``"never"``: the sim starts the response (it holds its engine's attention), but no output
  ever comes out of it until the call is closed.

:attr:`GatedBackend.stopped` has one event per call, set when that call's generation was
closed before it ended: what a cancel (or a client gone) must do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from hotloop.backends.sim import SimBackend
from hotloop.protocol.conversation import item_text

MODES = frozenset({"pass", "stall", "hold", "never"})


class GatedBackend:
    def __init__(
        self, inner: SimBackend, plan: Sequence[str] = (), *, by_input: bool = False
    ) -> None:
        assert set(plan) <= MODES
        self.inner = inner
        self.plan = list(plan)
        self.by_input = by_input
        self.calls = 0
        #: Lets every ``"hold"`` call go on.
        self.release = asyncio.Event()
        #: Per call (by index, waitable before the call): set once its generation was closed
        #: before its end.
        self.stopped: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        #: Per call: set once its first chunk was handed to the gateway.
        self.output: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def start(self) -> None:
        await self.inner.start()

    def models(self) -> Any:
        return self.inner.models()

    def accepts_model(self, model: str) -> bool:
        return self.inner.accepts_model(model)

    def open_session(self) -> Any:
        inner = self.inner.open_session()
        backend = self

        class Session:
            def generate(self, request: Any, out: Any) -> AsyncIterator[Any]:
                return backend.generate(inner, request, out)

            async def aclose(self) -> None:
                await inner.aclose()

        return Session()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def mode(self, index: int, request: Any) -> str:
        if self.by_input:
            text = item_text(request.context.items[-1])
            return text if text in MODES else "pass"
        return self.plan[index] if index < len(self.plan) else "pass"

    async def generate(self, session: Any, request: Any, out: Any) -> AsyncIterator[Any]:
        index = self.calls
        self.calls += 1
        mode = self.mode(index, request)
        stopped = self.stopped[index]
        output = self.output[index]
        ended = False
        try:
            if mode == "never":
                async with contextlib.aclosing(session.generate(request, out)) as chunks:
                    await anext(chunks)
                    await asyncio.Event().wait()
            async with contextlib.aclosing(session.generate(request, out)) as chunks:
                async for events in chunks:
                    yield events
                    if not output.is_set():
                        output.set()
                        if mode == "stall":
                            await asyncio.Event().wait()
                        elif mode == "hold":
                            await self.release.wait()
            ended = True
        finally:
            if not ended:
                stopped.set()
