"""The latency model of the simulated engine, and its named profiles.

A model turn costs, in this order:

1. ``service_overhead_s + service_s_per_1k_tokens * processed_tokens / 1000``: the provider's
   per-request work before inference (routing, validation, tokenization, safety checks).
   ``processed_tokens`` is what the gateway's input pipeline had to look at: only the new
   items on a connection-cache continuation, the whole history on a stateless resend. This is
   the cost OpenAI removed with WebSocket mode.
2. ``ttft_s + uncached_prompt_tokens / prefill_tokens_per_s``: time to first token. Prompt
   tokens found in the engine's prefix cache (as vLLM, SGLang and hosted APIs have) cost
   nothing; only the uncached suffix is prefilled.
3. ``(output_tokens - 1) / decode_tokens_per_s``: decoding; the first token arrives at the
   time to first token, each later one a decode interval after the previous, one delta per
   token, paced against an absolute deadline so that scheduling jitter never accumulates.

Every parameter can be overridden (``LatencyProfile.override`` / ``--latency key=value``).
The numbers of each profile and their sources are in :data:`PROFILES` and ``docs/sim.md``;
they describe a realistic provider and must never be tuned to make a benchmark look good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from hotloop.errors import ScenarioError

__all__ = ["PROFILES", "LatencyProfile", "estimate_tokens", "get_profile"]

#: Bytes per token of the token estimate (OpenAI's rule of thumb: ~4 characters per token
#: of English text).
BYTES_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A deterministic token count for ``text``: ceil(len / 4), at least 1 for non-empty text."""
    if not text:
        return 0
    return (len(text) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """How long a simulated model takes; see the module docstring for the formula."""

    name: str
    ttft_s: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    service_overhead_s: float = 0.0
    service_s_per_1k_tokens: float = 0.0
    source: str = ""

    @property
    def is_zero(self) -> bool:
        """True when the profile never sleeps (it measures pure software overhead)."""
        return (
            self.ttft_s == 0
            and self.service_overhead_s == 0
            and self.service_s_per_1k_tokens == 0
            and self.decode_tokens_per_s <= 0
            and self.prefill_tokens_per_s <= 0
        )

    def service_time(self, processed_tokens: int) -> float:
        return self.service_overhead_s + self.service_s_per_1k_tokens * processed_tokens / 1000

    def first_token_time(self, uncached_tokens: int) -> float:
        prefill = (
            uncached_tokens / self.prefill_tokens_per_s if self.prefill_tokens_per_s > 0 else 0.0
        )
        return self.ttft_s + prefill

    def token_interval(self) -> float:
        """Seconds between two output tokens (0 when decoding is instantaneous)."""
        return 1.0 / self.decode_tokens_per_s if self.decode_tokens_per_s > 0 else 0.0

    def override(self, **changes: Any) -> LatencyProfile:
        """A copy with some parameters changed; unknown names raise ``ScenarioError``."""
        known = {f.name for f in fields(self)} - {"name", "source"}
        unknown = set(changes) - known
        if unknown:
            raise ScenarioError(
                f"unknown latency parameter(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        converted: dict[str, Any] = {}
        for key, value in changes.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ScenarioError(
                    f"latency parameter {key} must be a number, got {value!r}"
                ) from None
            if not math.isfinite(number) or number < 0:
                raise ScenarioError(
                    f"latency parameter {key} must be a finite non-negative number, got {value!r}"
                )
            converted[key] = number
        return replace(self, name=f"{self.name}*", **converted)


PROFILES: Mapping[str, LatencyProfile] = {
    # A fast coding model served on wafer-scale hardware. OpenAI (2026) quotes about
    # 1,000 tokens/s for GPT-5.3-Codex-Spark against ~65 tokens/s for flagship models on the
    # same API; small models start streaming in roughly 100-500 ms (we take 200 ms).
    # Prefill on such hardware runs at tens of thousands of tokens/s (30,000 here). The
    # service work is an estimate: 20 ms fixed per request (routing, auth, accounting) plus
    # 2 ms per 1,000 prompt tokens re-read (tokenization, validation and a safety classifier
    # over the input); OpenAI reports that this per-request work came to dominate fast-model
    # agent loops, which is what WebSocket mode removes.
    "fast": LatencyProfile(
        name="fast",
        ttft_s=0.200,
        decode_tokens_per_s=1000.0,
        prefill_tokens_per_s=30_000.0,
        service_overhead_s=0.020,
        service_s_per_1k_tokens=0.002,
        source="OpenAI 2026: ~1,000 tok/s fast coding model; TTFT 100-500 ms for small models",
    ),
    # A frontier model: ~65 tokens/s decode (OpenAI 2026, GPT-5/5.2 class), first token in
    # roughly 0.5-2 s (we take 0.8 s), prefill ~5,000 tokens/s per request; same service
    # overhead estimate as ``fast`` since it is the same API front end.
    "frontier": LatencyProfile(
        name="frontier",
        ttft_s=0.800,
        decode_tokens_per_s=65.0,
        prefill_tokens_per_s=5_000.0,
        service_overhead_s=0.020,
        service_s_per_1k_tokens=0.002,
        source="OpenAI 2026: ~65 tok/s flagship models; TTFT 0.5-2 s for frontier models",
    ),
    # No delays at all: every remaining microsecond is software overhead (gateway, client).
    "zero": LatencyProfile(
        name="zero",
        ttft_s=0.0,
        decode_tokens_per_s=0.0,
        prefill_tokens_per_s=0.0,
        source="no delays; measures software overhead only",
    ),
}


def get_profile(name: str, overrides: Mapping[str, Any] | None = None) -> LatencyProfile:
    """A named profile, with optional parameter overrides."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ScenarioError(
            f"unknown latency profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None
    return profile.override(**overrides) if overrides else profile
