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

Tails. With the default tail parameters every response takes exactly the formula above.
A *tail profile* draws, once per response (never per token), from distributions around it:

* the time to first token ``ttft_s`` is the **median** of a lognormal whose p99 is
  ``ttft_p99_ratio`` times the median (1 = constant); prefill and service time stay exact;
* with probability ``spike_probability`` the first token comes after a **spike**: a rare long
  wait (a saturated replica's queue, a cold route, a retry inside the provider) of lognormal
  duration, median ``spike_s`` and p99/p50 ``spike_p99_ratio``, added to the drawn time;
* with probability ``stall_probability`` the stream **stalls** once, at a uniformly drawn
  token after the first, for a lognormal duration of median ``stall_s`` and p99/p50
  ``stall_p99_ratio``;
* with probability ``rate_limit_probability`` the request is **rate limited** (429 with
  ``retry_after_s``, after the service time only), with ``server_error_probability`` it fails
  with a **500** at the time its first token would have come (no output), and with
  ``drop_probability`` the **stream is dropped** after a uniformly drawn number of tokens
  (at least one). The three are exclusive: one uniform draw picks at most one.

A draw consumes exactly :data:`DRAW_UNIFORMS` numbers of its generator, so draw *k* of a
stream depends only on the stream's seed and *k* (see :meth:`LatencyProfile.draw`).

Every parameter can be overridden (``LatencyProfile.override`` / ``--latency key=value``).
The numbers of each profile and their sources are in :data:`PROFILES` and ``docs/sim.md``;
they describe a realistic provider and must never be tuned to make a benchmark look good.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from statistics import NormalDist
from typing import Any, Literal

from hotloop.errors import ScenarioError

__all__ = [
    "DRAW_UNIFORMS",
    "PROFILES",
    "Failure",
    "LatencyProfile",
    "TailDraw",
    "estimate_tokens",
    "get_profile",
]

#: The standard normal's 99th percentile: a lognormal with p99/p50 = r has sigma = ln r / Z99.
Z99 = NormalDist().inv_cdf(0.99)
#: Uniform numbers one :meth:`LatencyProfile.draw` consumes, whatever it draws.
DRAW_UNIFORMS = 8
_STANDARD_NORMAL = NormalDist()

#: How a response fails: ``rate_limit`` (429), ``server_error`` (500 before any output) or
#: ``drop`` (the stream is cut after some output).
Failure = Literal["rate_limit", "server_error", "drop"]

_PROBABILITIES = (
    "spike_probability",
    "stall_probability",
    "rate_limit_probability",
    "server_error_probability",
    "drop_probability",
)
_RATIOS = ("ttft_p99_ratio", "spike_p99_ratio", "stall_p99_ratio")

#: Bytes per token of the token estimate (OpenAI's rule of thumb: ~4 characters per token
#: of English text).
BYTES_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A deterministic token count for ``text``: ceil(len / 4), at least 1 for non-empty text."""
    if not text:
        return 0
    return (len(text) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


@dataclass(frozen=True, slots=True)
class TailDraw:
    """What one response drew from a tail profile.

    ``ttft_s`` replaces the profile's ``ttft_s`` (a spike included); ``stall_s`` (0: no
    stall) is inserted before the output token at fraction ``stall_at`` of the way through
    the output; ``failure`` says how the response fails (None: it does not), ``drop_at`` where
    a dropped stream is cut (a fraction of the output, like ``stall_at``).
    """

    ttft_s: float
    stall_s: float = 0.0
    stall_at: float = 0.0
    failure: Failure | None = None
    drop_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """How long a simulated model takes; see the module docstring for the formula and tails."""

    name: str
    ttft_s: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    service_overhead_s: float = 0.0
    service_s_per_1k_tokens: float = 0.0
    #: p99 / p50 of the lognormal time to first token (``ttft_s`` is its median); 1: constant.
    ttft_p99_ratio: float = 1.0
    #: Probability of a spike before the first token, its median duration and p99/p50 ratio.
    spike_probability: float = 0.0
    spike_s: float = 0.0
    spike_p99_ratio: float = 1.0
    #: Probability that a response stalls once mid-stream.
    stall_probability: float = 0.0
    #: Median stall duration (seconds) and the p99/p50 ratio of its lognormal.
    stall_s: float = 0.0
    stall_p99_ratio: float = 1.0
    #: Probabilities (exclusive) of a 429, of a 500 before output, of a stream cut mid-way.
    rate_limit_probability: float = 0.0
    server_error_probability: float = 0.0
    drop_probability: float = 0.0
    #: The ``retry-after`` (seconds) a simulated 429 carries.
    retry_after_s: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        for key in _PROBABILITIES:
            if not 0 <= getattr(self, key) <= 1:
                raise ScenarioError(f"latency parameter {key} must be between 0 and 1")
        for key in _RATIOS:
            if not getattr(self, key) >= 1:
                raise ScenarioError(f"latency parameter {key} must be at least 1 (p99 >= p50)")
        if self.failure_probability > 1 + 1e-12:
            raise ScenarioError(
                "rate_limit_probability + server_error_probability + drop_probability "
                "must not exceed 1"
            )

    @property
    def is_zero(self) -> bool:
        """True when the profile never sleeps (it measures pure software overhead)."""
        return (
            self.ttft_s == 0
            and self.service_overhead_s == 0
            and self.service_s_per_1k_tokens == 0
            and self.decode_tokens_per_s <= 0
            and self.prefill_tokens_per_s <= 0
            and (self.stall_probability == 0 or self.stall_s == 0)
            and (self.spike_probability == 0 or self.spike_s == 0)
        )

    @property
    def failure_probability(self) -> float:
        return self.rate_limit_probability + self.server_error_probability + self.drop_probability

    @property
    def has_tails(self) -> bool:
        """True when a response must draw (:meth:`draw`); False keeps every response exact,
        with no random numbers at all, so constant profiles cost what they always did."""
        return (
            self.ttft_p99_ratio != 1
            or self.spike_probability > 0
            or self.stall_probability > 0
            or self.failure_probability > 0
        )

    def draw(self, rng: random.Random) -> TailDraw:
        """One response's draw from ``rng``: always exactly :data:`DRAW_UNIFORMS` numbers.

        A fixed count makes draw *k* of a generator a function of its seed and *k* alone
        (not of what earlier draws happened to need), and lognormals come from the inverse
        normal CDF for the same reason (``random.gauss`` keeps a spare value between calls).
        """
        u_ttft, u_spike, u_spike_s, u_stall, u_stall_s, u_stall_at, u_fail, u_fail_at = (
            rng.random() for _ in range(DRAW_UNIFORMS)
        )
        ttft = self.ttft_s * _lognormal_factor(u_ttft, self.ttft_p99_ratio)
        if u_spike < self.spike_probability:
            ttft += self.spike_s * _lognormal_factor(u_spike_s, self.spike_p99_ratio)
        stall = 0.0
        if u_stall < self.stall_probability:
            stall = self.stall_s * _lognormal_factor(u_stall_s, self.stall_p99_ratio)
        failure: Failure | None = None
        if u_fail < self.rate_limit_probability:
            failure = "rate_limit"
        elif u_fail < self.rate_limit_probability + self.server_error_probability:
            failure = "server_error"
        elif u_fail < self.failure_probability:
            failure = "drop"
        return TailDraw(ttft, stall, u_stall_at, failure, u_fail_at)

    def service_time(self, processed_tokens: int) -> float:
        return self.service_overhead_s + self.service_s_per_1k_tokens * processed_tokens / 1000

    def first_token_time(self, uncached_tokens: int, ttft_s: float | None = None) -> float:
        """Time to first token after the service time; ``ttft_s`` is a drawn one (tails)."""
        prefill = (
            uncached_tokens / self.prefill_tokens_per_s if self.prefill_tokens_per_s > 0 else 0.0
        )
        return (self.ttft_s if ttft_s is None else ttft_s) + prefill

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


def _lognormal_factor(uniform: float, p99_ratio: float) -> float:
    """The lognormal multiplier of median 1 and p99 ``p99_ratio`` at quantile ``uniform``."""
    if p99_ratio == 1:
        return 1.0
    # random() may return exactly 0.0, which has no normal quantile.
    z = _STANDARD_NORMAL.inv_cdf(uniform if uniform > 0 else 2.0**-53)
    return math.exp(z * math.log(p99_ratio) / Z99)


_CONSTANT: dict[str, LatencyProfile] = {
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

# Tail profiles: the constant profiles above, plus what a shared production endpoint adds.
# The shapes are standard (a lognormal for waiting times, rare spikes and failures drawn
# independently); the numbers are round assumptions at a stress level, not measurements of
# any provider: they are there to make hedging, retries and fallbacks measurable.
# ``docs/sim.md`` argues each.
_FAST_TAIL = replace(
    _CONSTANT["fast"],
    name="fast-tail",
    # Normal service varies: p99 TTFT = 3 x median (0.2 s -> 0.6 s).
    ttft_p99_ratio=3.0,
    # 1 % of requests wait seconds before their first token (a saturated replica's queue, a
    # cold route, a retry inside the provider): median 5 s, p99 15 s.
    spike_probability=0.01,
    spike_s=5.0,
    spike_p99_ratio=3.0,
    # 1 % of responses pause once mid-stream (preemption, KV-cache eviction and recompute,
    # a network hiccup): median 1 s, p99 5 s.
    stall_probability=0.01,
    stall_s=1.0,
    stall_p99_ratio=5.0,
    source="fast + assumed tails: TTFT p99/p50 = 3; 1% spikes of 5 s; 1% stalls of 1 s",
)

PROFILES: Mapping[str, LatencyProfile] = {
    **_CONSTANT,
    "fast-tail": _FAST_TAIL,
    # A frontier model's TTFT is already long, so normal variation adds relatively less
    # (p99/p50 = 2: 0.8 s -> 1.6 s); the same spikes and stalls.
    "frontier-tail": replace(
        _FAST_TAIL,
        name="frontier-tail",
        ttft_s=0.800,
        decode_tokens_per_s=65.0,
        prefill_tokens_per_s=5_000.0,
        ttft_p99_ratio=2.0,
        source="frontier + assumed tails: TTFT p99/p50 = 2; 1% spikes of 5 s; 1% stalls of 1 s",
    ),
    # The other shape of a tail: no rare spikes, but a wide body (p99 TTFT = 10 x median).
    # Every turn varies a lot and no single turn dominates a rollout, which is where a delayed
    # duplicate helps least; kept to measure that.
    "fast-jitter": replace(
        _FAST_TAIL,
        name="fast-jitter",
        ttft_p99_ratio=10.0,
        spike_probability=0.0,
        spike_s=0.0,
        spike_p99_ratio=1.0,
        source="fast + assumed tails: lognormal TTFT p99/p50 = 10, no spikes; 1% stalls of 1 s",
    ),
    # fast-tail on a bad day: 4 % of requests fail — 2 % rate limited (retry after 1 s),
    # 1 % server errors before output, 1 % streams dropped mid-way.
    "flaky": replace(
        _FAST_TAIL,
        name="flaky",
        rate_limit_probability=0.02,
        server_error_probability=0.01,
        drop_probability=0.01,
        retry_after_s=1.0,
        source="fast-tail + assumed failures: 2% 429 (retry after 1 s), 1% 500, 1% drops",
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
