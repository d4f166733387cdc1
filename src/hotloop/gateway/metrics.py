"""Prometheus metrics of one gateway (its own registry, so several gateways can coexist)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "RateLimitedLog"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_PROCESSING_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)


class GatewayMetrics:
    """Counters and gauges the gateway updates; rendered at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter(
            "hotloop_responses",
            "Responses finished",
            ["transport", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "hotloop_errors",
            "Errors reported to clients",
            ["transport", "code"],
            registry=self.registry,
        )
        self.active_responses = Gauge(
            "hotloop_active_responses", "Responses being generated", registry=self.registry
        )
        self.websocket_connections = Gauge(
            "hotloop_websocket_connections", "Open WebSocket connections", registry=self.registry
        )
        self.cache_lookups = Counter(
            "hotloop_cache_lookups",
            "previous_response_id resolutions",
            ["result"],
            registry=self.registry,
        )
        self.processing = Histogram(
            "hotloop_gateway_processing_seconds",
            "Gateway's own time per response (input pipeline, resolution, commit)",
            ["transport"],
            buckets=_PROCESSING_BUCKETS,
            registry=self.registry,
        )
        self.websocket_refused = Counter(
            "hotloop_websocket_refused",
            "WebSocket upgrades refused (the error code: invalid_api_key, too_many_connections)",
            ["reason"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "hotloop_request_log_dropped",
            "Request-log records dropped (queue full)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RateLimitedLog:
    """Logs a warning at most once per ``interval`` seconds per key (a refusal's reason).

    What a client can trigger at will (a refused upgrade) must not flood the log: the first
    occurrence is logged, the next ones within ``interval`` are only counted, and the next line
    after it says how many were suppressed. The keys are a small fixed set (error codes).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last.get(key, -math.inf) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self.logger.warning(message + " (and %d more since the last report)", *args, suppressed)
        else:
            self.logger.warning(message, *args)
