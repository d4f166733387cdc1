"""What every upstream backend shares: its configuration, its replicas, its errors.

An *upstream* is a model server the gateway forwards to: any OpenAI-compatible Chat
Completions server (vLLM, SGLang, llama.cpp, Ollama, LM Studio, hosted APIs) or a Responses
API. One :class:`UpstreamConfig` describes one of them: its base URLs (several URLs are
replicas of the same models), the model names it serves under which local names, where its
key comes from, and its timeouts.

:class:`Replicas` picks the replica for a conversation by rendezvous hashing of the
conversation's identity, so every turn of one conversation goes to the same replica and finds
its prompt prefix warm there; a replica that fails is taken out for ``retry_after`` seconds
(and probed by the health checker), and its conversations continue on the next replica in
their own order, with the full context.

:func:`upstream_error` maps what went wrong on the way to a documented
:class:`~hotloop.errors.APIError`; the codes are listed in ``docs/upstreams.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httpx

from hotloop.backends.hedging import HedgeSettings
from hotloop.errors import APIError, HotloopError
from hotloop.protocol.client_session import retry_after
from hotloop.wire import codec

__all__ = [
    "Replica",
    "Replicas",
    "UpstreamConfig",
    "UpstreamConfigError",
    "rendezvous_score",
    "retryable",
    "upstream_error",
]

logger = logging.getLogger("hotloop.upstream")

_API_KINDS = ("chat", "responses", "llamacpp")


class UpstreamConfigError(HotloopError):
    """An upstream is configured wrongly (a missing key variable, a bad URL, no models)."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream model server (or several replicas of it).

    ``urls``: base URLs including the API version path, e.g. ``http://127.0.0.1:8080/v1``;
    more than one are replicas serving the same models. ``api``: ``chat`` (Chat Completions),
    ``responses`` (the Responses API over HTTP; ``chain`` continues by the upstream's
    ``previous_response_id`` where it stores responses) or ``llamacpp`` (llama.cpp's native
    ``/completion``, continuing each turn token for token; its URL is the server's root).
    ``models`` maps the model ids clients use to the upstream's own names; an empty map
    serves the upstream's ``GET /models`` list under its own names. ``api_key_env`` names the
    environment variable holding the upstream's key (never the key itself, so a config file
    can be shared). ``connect_timeout`` bounds opening a connection, ``first_token_timeout``
    the wait for the upstream's first byte of output, ``stall_timeout`` any later silence.
    A request is tried at most ``max_attempts`` times, and only while nothing of it has
    reached the client. ``retry_after`` is how long a failed replica stays out.
    """

    urls: tuple[str, ...]
    api: str = "chat"
    models: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    api_key_env: str | None = None
    connect_timeout: float = 5.0
    first_token_timeout: float = 120.0
    stall_timeout: float = 60.0
    max_attempts: int = 3
    max_connections: int = 64
    retry_after: float = 5.0
    health_interval: float = 10.0
    #: Responses upstreams only: continue by the upstream's ``previous_response_id`` (it
    #: must store responses) instead of sending the whole context every turn.
    chain: bool = False
    #: Responses upstreams only: WebSocket mode, one upstream socket per client connection.
    websocket: bool = False
    #: llama.cpp only: each conversation keeps to one slot of the engine (``id_slot``).
    pin_slots: bool = False
    #: llama.cpp only: the chat template (Jinja text); by default the server's own.
    chat_template: str | None = None
    #: Hedging across the replicas (``urls``) of an HTTP upstream (None: off); see
    #: :mod:`hotloop.backends.hedging`.
    hedging: HedgeSettings | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise UpstreamConfigError("an upstream needs at least one URL")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise UpstreamConfigError(f"upstream URL {url!r} must start with http(s)://")
        if self.api not in _API_KINDS:
            raise UpstreamConfigError(
                f"upstream api {self.api!r} is not one of {', '.join(_API_KINDS)}"
            )
        if self.max_attempts < 1:
            raise UpstreamConfigError("max_attempts must be at least 1")
        if self.hedging is not None and (len(self.urls) < 2 or self.websocket):
            raise UpstreamConfigError(
                "hedging needs two replica URLs or more, over HTTP (not websocket = true)"
            )

    def api_key(self) -> str | None:
        """The key from ``api_key_env``; a named variable that is unset is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UpstreamConfigError(
                f"the upstream's key variable {self.api_key_env} is not set in the environment"
            )
        return key

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "upstream") -> UpstreamConfig:
        """One ``[[upstream]]`` table of a config file."""
        known = {
            "url",
            "urls",
            "api",
            "models",
            "api_key_env",
            "connect_timeout",
            "first_token_timeout",
            "stall_timeout",
            "max_attempts",
            "max_connections",
            "retry_after",
            "health_interval",
            "chain",
            "websocket",
            "pin_slots",
            "chat_template_file",
            "hedge",
            "hedge_budget",
            "hedge_stall",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise UpstreamConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        urls = data.get("urls") or ([data["url"]] if "url" in data else [])
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise UpstreamConfigError(f"{where}.urls must be a list of URLs")
        models = data.get("models", {})
        if isinstance(models, list):
            models = {name: name for name in models}
        if not isinstance(models, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in models.items()
        ):
            raise UpstreamConfigError(
                f"{where}.models must map served names to upstream names (or list names)"
            )
        numbers = {
            key: data[key]
            for key in (
                "connect_timeout",
                "first_token_timeout",
                "stall_timeout",
                "retry_after",
                "health_interval",
            )
            if key in data
        }
        for key, value in numbers.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise UpstreamConfigError(f"{where}.{key} must be a positive number of seconds")
        key_env = data.get("api_key_env")
        if key_env is not None and (not isinstance(key_env, str) or not key_env):
            raise UpstreamConfigError(f"{where}.api_key_env must name an environment variable")
        counts = {k: data[k] for k in ("max_attempts", "max_connections") if k in data}
        for key, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UpstreamConfigError(f"{where}.{key} must be a positive integer")
        return cls(
            urls=tuple(url.rstrip("/") for url in urls),
            api=str(data.get("api", "chat")),
            models=MappingProxyType(dict(models)),
            api_key_env=key_env,
            chain=bool(data.get("chain", False)),
            websocket=bool(data.get("websocket", False)),
            pin_slots=bool(data.get("pin_slots", False)),
            chat_template=_read_template(data.get("chat_template_file"), where),
            hedging=_read_hedging(data, where),
            **numbers,
            **counts,
        )


def _read_hedging(data: Mapping[str, Any], where: str) -> HedgeSettings | None:
    """``hedge = "auto"`` or seconds, and ``hedge_budget`` (a share of turns)."""
    if "hedge" not in data:
        if "hedge_budget" in data:
            raise UpstreamConfigError(f'{where}.hedge_budget needs hedge (seconds or "auto")')
        return None
    delay = data["hedge"]
    if delay == "auto":
        delay = None
    elif not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise UpstreamConfigError(f'{where}.hedge must be "auto" or a number of seconds >= 0')
    budget = data.get("hedge_budget", 0.1)
    if not isinstance(budget, int | float) or isinstance(budget, bool) or budget < 0:
        raise UpstreamConfigError(f"{where}.hedge_budget must be a share of turns >= 0")
    stall = data.get("hedge_stall")
    if stall is not None and (
        not isinstance(stall, int | float) or isinstance(stall, bool) or stall <= 0
    ):
        raise UpstreamConfigError(f"{where}.hedge_stall must be a positive number of seconds")
    return HedgeSettings(
        delay=None if delay is None else float(delay),
        budget=float(budget),
        stall=None if stall is None else float(stall),
    )


@dataclass(slots=True, eq=False)
class Replica:
    """One base URL of an upstream, with its warm connection pool and its health."""

    url: str
    client: httpx.AsyncClient
    down_until: float = 0.0
    failures: int = 0
    requests: int = 0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class Replicas:
    """The replicas of one upstream and the rule that picks one for a conversation."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        key = config.api_key()
        headers = {"authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.first_token_timeout,
            write=config.connect_timeout,
            pool=config.connect_timeout,
        )
        self.all = [
            Replica(
                url,
                httpx.AsyncClient(
                    base_url=url,
                    headers=headers,
                    limits=limits,
                    timeout=timeout,
                    transport=transport,
                ),
            )
            for url in config.urls
        ]
        self._health: asyncio.Task[None] | None = None

    def order(self, conversation_key: int) -> list[Replica]:
        """The replicas in this conversation's order of preference, healthy ones first.

        Rendezvous hashing: each replica scores ``hash(conversation, url)``; the highest
        healthy one serves the conversation. Adding or losing a replica moves only the
        conversations that replica wins, so the other prefixes stay warm where they are.
        """
        if len(self.all) == 1:
            return list(self.all)
        now = self._clock()

        def score(replica: Replica) -> tuple[bool, bytes]:
            return (replica.healthy(now), rendezvous_score(conversation_key, replica.url))

        return sorted(self.all, key=score, reverse=True)

    def failed(self, replica: Replica, error: APIError) -> None:
        """``replica`` could not serve a request: take it out for ``retry_after`` seconds."""
        replica.failures += 1
        if len(self.all) > 1:
            replica.down_until = self._clock() + self.config.retry_after
            logger.warning(
                "upstream replica %s is out for %.0f s: %s",
                replica.url,
                self.config.retry_after,
                error.message,
            )

    def succeeded(self, replica: Replica) -> None:
        replica.requests += 1
        replica.down_until = 0.0

    # -- health ----------------------------------------------------------------------------

    def start_health_checks(self) -> None:
        """Probe each replica that is out every ``health_interval`` seconds (``GET /models``)
        and bring it back as soon as it answers; nothing runs with a single replica."""
        if len(self.all) > 1 and self._health is None:
            self._health = asyncio.create_task(self._check_health())

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            for replica in self.all:
                if replica.healthy(self._clock()):
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    reply = await replica.client.get("/models")
                    if reply.status_code < 500:
                        replica.down_until = 0.0

    async def list_models(self) -> list[str]:
        """The upstream's own model ids, from the first replica that answers ``/models``."""
        last: Exception | None = None
        for replica in self.all:
            try:
                reply = await replica.client.get("/models")
                reply.raise_for_status()
                data = codec.decode_object(reply.content).get("data") or []
                return [str(entry["id"]) for entry in data if isinstance(entry, dict)]
            except (httpx.HTTPError, HotloopError, KeyError) as exc:
                last = exc
        reason = (
            upstream_error(last).message
            if isinstance(last, httpx.HTTPError)
            else "its GET /models answer is not a model list"
        )
        raise UpstreamConfigError(
            f"could not list the models of {', '.join(self.config.urls)}: {reason} "
            "Name the models with --model (or models = ... in the config file)."
        )

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for replica in self.all:
            await replica.client.aclose()


def rendezvous_score(key: int, name: str) -> bytes:
    """The rendezvous-hashing score of replica ``name`` for ``key`` (a 64-bit conversation
    key): the replica with the highest score serves the conversation. Shared by every kind of
    replica (upstream URLs, simulated replicas) so they spread conversations alike."""
    seed = key.to_bytes(8, "little", signed=True)
    return hashlib.blake2b(seed + name.encode(), digest_size=8).digest()


# -- errors ------------------------------------------------------------------------------------


def retryable(error: APIError) -> bool:
    """Whether a request that failed with ``error`` may go to the upstream again (another
    replica first): refused or timed-out connections, 429 and 5xx — never a 4xx about the
    request itself."""
    return error.code in _RETRYABLE


_RETRYABLE = frozenset(
    {
        "upstream_unavailable",
        "upstream_timeout",
        "upstream_rate_limited",
        "upstream_error",
        "upstream_stream_cut",
    }
)


def upstream_error(
    exc: BaseException | None = None,
    *,
    status: int | None = None,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    url: str = "",
) -> APIError:
    """The documented error for what went wrong talking to an upstream.

    Either ``exc`` (an httpx error: refused, timed out, cut) or an HTTP ``status`` with its
    ``body``. The message names the upstream URL and what happened, never a Python
    exception's text.
    """
    where = f"the upstream {url}" if url else "the upstream"
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return APIError(
                f"Could not connect to {where} in time.",
                status=504,
                type="server_error",
                code="upstream_timeout",
            )
        return APIError(
            f"{where[0].upper()}{where[1:]} stopped sending output (timed out).",
            status=504,
            type="server_error",
            code="upstream_timeout",
        )
    if isinstance(exc, httpx.ConnectError):
        return APIError(
            f"Could not connect to {where} (connection refused or unreachable).",
            status=502,
            type="server_error",
            code="upstream_unavailable",
        )
    if exc is not None:
        return APIError(
            f"The connection to {where} broke before the response was complete.",
            status=502,
            type="server_error",
            code="upstream_stream_cut",
        )
    assert status is not None
    detail = _error_message(body)
    if status == 429:
        wait = retry_after(headers, detail)
        hint = f" Retry after {wait:g} s." if wait is not None else ""
        return APIError(
            f"{where[0].upper()}{where[1:]} is rate limiting requests.{hint}"
            + (f" It said: {detail}" if detail else ""),
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retry_after=wait,
        )
    if status in (401, 403):
        return APIError(
            f"{where[0].upper()}{where[1:]} refused the gateway's credentials "
            f"(HTTP {status}); check its api_key_env.",
            status=502,
            type="server_error",
            code="upstream_auth_failed",
        )
    if status >= 500:
        return APIError(
            f"{where[0].upper()}{where[1:]} failed with HTTP {status}."
            + (f" It said: {detail}" if detail else ""),
            status=502,
            type="server_error",
            code="upstream_error",
        )
    return APIError(
        f"{where[0].upper()}{where[1:]} rejected the request with HTTP {status}"
        + (f": {detail}" if detail else "."),
        status=400 if status != 404 else 404,
        code="upstream_rejected",
    )


def _read_template(path: Any, where: str) -> str | None:
    if path is None:
        return None
    try:
        with open(str(path), encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise UpstreamConfigError(
            f"{where}.chat_template_file: cannot read {path}: {exc.strerror or exc}"
        ) from exc


def _error_message(body: bytes) -> str:
    """The upstream's own error message (OpenAI's error shape, or llama.cpp's), short."""
    return codec.error_body(body)[0]


def model_map(config: UpstreamConfig, discovered: Sequence[str]) -> dict[str, str]:
    """Served model id -> upstream model id: the configured map, or the upstream's list."""
    if config.models:
        return dict(config.models)
    return {name: name for name in discovered}
