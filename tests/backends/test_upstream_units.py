"""The upstream plumbing on its own: config files, retry hints, error bodies, replica health,
and the WebSocket-mode error mapping, with no model behind them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from hotloop.backends.llamacpp import LlamaCppBackend
from hotloop.backends.responses import ResponsesBackend, _websocket_error
from hotloop.backends.routing import build_backend
from hotloop.backends.upstream import (
    Replicas,
    UpstreamConfig,
    UpstreamConfigError,
    upstream_error,
)
from hotloop.errors import APIError
from hotloop.protocol.client_session import TransportError


def test_a_config_file_reads_the_chat_template_and_names_a_missing_one(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}", encoding="utf-8")
    table = {"url": "http://127.0.0.1:9", "api": "llamacpp", "chat_template_file": str(template)}
    config = UpstreamConfig.from_dict({**table, "pin_slots": True})
    assert config.chat_template == "{{ messages }}" and config.pin_slots
    missing = {**table, "chat_template_file": str(tmp_path / "nope.jinja")}
    with pytest.raises(UpstreamConfigError, match=r"chat_template_file: cannot read .*nope"):
        UpstreamConfig.from_dict(missing, "cfg")


def test_each_api_gets_its_backend() -> None:
    urls = ("http://127.0.0.1:9/v1",)
    assert isinstance(build_backend(UpstreamConfig(urls=urls, api="responses")), ResponsesBackend)
    assert isinstance(build_backend(UpstreamConfig(urls=urls, api="llamacpp")), LlamaCppBackend)


@pytest.mark.parametrize(
    ("header", "seconds"),
    # An HTTP date is read as the time left until it (none for a date gone by).
    [("3", 3.0), ("0.5", 0.5), ("-1", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), (None, None)],
)
def test_retry_after_is_read_in_seconds(header: str | None, seconds: float | None) -> None:
    headers = {"retry-after": header} if header is not None else {}
    error = upstream_error(status=429, headers=headers, url="http://u")
    assert error.code == "upstream_rate_limited" and error.retry_after == seconds


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        (b"", ""),
        (b'{"error": {"message": "context too long"}}', "context too long"),
        (b'{"message": "llama says no"}', "llama says no"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b'{"error": "plain"}', "plain"),
    ],
)
def test_the_upstreams_own_message_is_quoted(body: bytes, quoted: str) -> None:
    error = upstream_error(status=400, body=body, url="http://u")
    assert error.code == "upstream_rejected"
    assert error.message.endswith(f": {quoted}" if quoted else ".")


async def test_a_replica_that_is_out_comes_back_when_its_probe_answers() -> None:
    probes: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        probes.append(str(request.url))
        return httpx.Response(200, json={"data": []})

    now = [0.0]
    config = UpstreamConfig(
        urls=("http://a/v1", "http://b/v1"), retry_after=1000, health_interval=0.01
    )
    replicas = Replicas(config, clock=lambda: now[0], transport=httpx.MockTransport(answer))
    first, second = replicas.all
    replicas.failed(first, APIError("down", code="upstream_unavailable"))
    assert not first.healthy(now[0]) and replicas.order(7)[-1] is first
    replicas.start_health_checks()
    for _ in range(200):
        if first.healthy(now[0]):
            break
        await asyncio.sleep(0.01)
    await replicas.aclose()
    assert first.healthy(now[0]) and probes and all(p.startswith("http://a/") for p in probes)
    assert second.failures == 0


@pytest.mark.parametrize(
    ("failure", "code", "status"),
    [
        (TransportError("busy", status=429), "upstream_rate_limited", 429),
        (TransportError("socket gone"), "upstream_unavailable", 502),
        (TransportError("refused", code="server_error", status=500), "upstream_error", 502),
        (TransportError("odd", status=503), "upstream_error", 502),
    ],
)
def test_websocket_mode_failures_are_documented_errors(
    failure: TransportError, code: str, status: int
) -> None:
    error = _websocket_error(failure, "http://u/v1")
    assert (error.code, error.status) == (code, status)
    assert "http://u/v1" in error.message
