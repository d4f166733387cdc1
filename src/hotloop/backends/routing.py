"""Several backends behind one gateway, chosen by model name; and building them from config.

A config file (TOML) lists the upstreams, each with the models it serves::

    [[upstream]]
    urls = ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1"]   # replicas
    api = "chat"                      # chat | responses | llamacpp
    models = { "smol" = "SmolLM2-135M" }   # served name = upstream's name
    api_key_env = "LLAMA_API_KEY"     # optional: the variable holding the key

    [[upstream]]
    url = "https://api.openai.com/v1"
    api = "responses"
    models = ["gpt-5-mini"]
    api_key_env = "OPENAI_API_KEY"

:func:`build_backend` turns one :class:`~hotloop.backends.upstream.UpstreamConfig` into its
backend; :class:`RoutedBackend` serves several, each request going to the backend that serves
its model.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotloop.backends.base import Backend, BackendSession
from hotloop.backends.upstream import UpstreamConfig, UpstreamConfigError
from hotloop.errors import APIError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.generation import Generation, GenerationRequest

__all__ = ["RoutedBackend", "build_backend", "load_upstreams"]


def build_backend(config: UpstreamConfig) -> Backend:
    """The backend for one upstream, by its ``api``."""
    if config.api == "chat":
        from hotloop.backends.chat import ChatBackend

        return ChatBackend(config)
    if config.api == "llamacpp":
        from hotloop.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config)
    from hotloop.backends.responses import ResponsesBackend

    return ResponsesBackend(config)


def load_upstreams(path: Path) -> list[UpstreamConfig]:
    """The ``[[upstream]]`` tables of a TOML config file."""
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except OSError as exc:
        raise UpstreamConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamConfigError(f"{path} is not valid TOML: {exc}") from exc
    tables = data.get("upstream")
    if not isinstance(tables, list) or not tables:
        raise UpstreamConfigError(f"{path} has no [[upstream]] table")
    if not all(isinstance(table, dict) for table in tables):
        raise UpstreamConfigError(f"{path}: each upstream must be a [[upstream]] table")
    unknown = sorted(set(data) - {"upstream"})
    if unknown:
        raise UpstreamConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")
    return [
        UpstreamConfig.from_dict(table, f"{path}: upstream[{index}]")
        for index, table in enumerate(tables)
    ]


class RoutedBackend:
    """Serve several backends; a request goes to the one that lists its model."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise UpstreamConfigError("no backends to route to")
        self.backends = list(backends)
        self._by_model: dict[str, Backend] = {}

    async def start(self) -> None:
        self._by_model = {}
        for backend in self.backends:
            start = getattr(backend, "start", None)
            if start is not None:
                await start()
            for model in backend.models():
                if model in self._by_model:
                    raise UpstreamConfigError(f"model {model!r} is served by two upstreams")
                self._by_model[model] = backend

    def models(self) -> Sequence[str]:
        return list(self._by_model)

    def open_session(self) -> BackendSession:
        return _RoutedSession(self)

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()


class _RoutedSession:
    """One connection's sessions of the routed backends, opened as its requests need them."""

    def __init__(self, routed: RoutedBackend) -> None:
        self._routed = routed
        self._sessions: dict[int, BackendSession] = {}

    def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        backend = self._routed._by_model.get(request.model)
        if backend is None:
            raise APIError(
                f"The model '{request.model}' does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
        session = self._sessions.get(id(backend))
        if session is None:
            session = self._sessions[id(backend)] = backend.open_session()
        return session.generate(request, out)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.aclose()
