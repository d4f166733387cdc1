"""Settings of the wrong type are refused when the object is made, naming the setting.

A string where a number belongs (``Cache(ttl="5")``), a float where a count belongs, or ``True``
for either used to get through the constructor and fail later, inside a run, with an error about
operands (or, for a tool's timeout, not at all until its first call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hotloop.backends.hedging import HedgeSettings
from hotloop.runtime import Agent, Runner, tool
from hotloop.runtime.cache import Cache, MemoryStore
from hotloop.runtime.compaction import Compact
from hotloop.runtime.policies import Hedge, RouteTurns
from hotloop.runtime.speculation import Speculate
from hotloop.runtime.tools import ToolDefinitionError, ToolThreads
from support import ScriptedTransport, answer_events

MODEL = "sim"

WRONG: list[tuple[str, Callable[[], Any]]] = [
    ("ttl", lambda: Cache(ttl="5")),  # type: ignore[arg-type]
    ("ttl", lambda: Cache(ttl=True)),
    ("max_entries", lambda: MemoryStore(max_entries="5")),  # type: ignore[arg-type]
    ("threshold_tokens", lambda: Compact(threshold_tokens="1000")),  # type: ignore[arg-type]
    ("keep_recent_tokens", lambda: Compact(1000, 250.5)),  # type: ignore[arg-type]
    ("summary_timeout", lambda: Compact(1000, summary_timeout="60")),  # type: ignore[arg-type]
    ("max_failures", lambda: Compact(1000, max_failures=1.5)),  # type: ignore[arg-type]
    ("max_in_flight", lambda: Speculate(max_in_flight=2.5)),  # type: ignore[arg-type]
    ("per_call", lambda: Speculate(per_call="4")),  # type: ignore[arg-type]
    ("max_waste", lambda: Speculate(max_waste="0.25")),  # type: ignore[arg-type]
    ("delay", lambda: Hedge(delay="0.5")),  # type: ignore[arg-type]
    ("percentile", lambda: Hedge(percentile=None)),  # type: ignore[arg-type]
    ("min_samples", lambda: Hedge(min_samples=2.0)),  # type: ignore[arg-type]
    ("budget", lambda: Hedge(budget="10%")),  # type: ignore[arg-type]
    ("preamble_chars", lambda: RouteTurns(lambda state: None, preamble_chars="400")),  # type: ignore[arg-type]
    ("max_threads", lambda: ToolThreads(max_threads=None)),  # type: ignore[arg-type]
    ("max_turns", lambda: Agent(MODEL, max_turns="10")),  # type: ignore[arg-type]
    ("max_concurrency", lambda: Agent(MODEL, max_concurrency=True)),
    ("output_retries", lambda: Agent(MODEL, output_retries=1.0)),  # type: ignore[arg-type]
    ("turn_timeout", lambda: Agent(MODEL, turn_timeout="600")),  # type: ignore[arg-type]
    ("delay", lambda: HedgeSettings(delay="1")),  # type: ignore[arg-type]
    ("max_attempts", lambda: HedgeSettings(max_attempts=2.0)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("setting", "make"), WRONG, ids=[f"{s}-{i}" for i, (s, _) in enumerate(WRONG)]
)
def test_a_setting_of_the_wrong_type_is_refused_by_name(
    setting: str, make: Callable[[], Any]
) -> None:
    with pytest.raises(TypeError, match=rf"^{setting} must be an? (integer|number)"):
        make()


def test_settings_of_the_right_type_still_pass() -> None:
    assert Cache(ttl=5).ttl == 5 and Cache(ttl=0.5).ttl == 0.5 and Cache().ttl is None
    assert Speculate(max_waste=1).max_waste == 1
    assert Compact(1000, summary_timeout=None).summary_timeout is None
    assert Agent(MODEL, turn_timeout=None, stall_timeout=2).stall_timeout == 2


@pytest.mark.parametrize("timeout", [-1, 0, "3", True, float("nan")])
def test_a_tool_timeout_must_be_positive_seconds(timeout: Any) -> None:
    with pytest.raises(ToolDefinitionError, match=r"tool 'slow': timeout= must be positive"):

        @tool(timeout=timeout)
        async def slow(seconds: float) -> str:
            """Wait."""
            return "done"


async def test_a_run_with_a_timeout_of_the_wrong_type_sends_nothing() -> None:
    scripted = ScriptedTransport([answer_events("r0")])
    with pytest.raises(TypeError, match=r"^stall_timeout must be a number or None"):
        await Runner.run(Agent(MODEL), "go", client=scripted, stall_timeout="5")  # type: ignore[arg-type]
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("max_turns", "error"), [(0, ValueError), (-1, ValueError), ("3", TypeError)]
)
async def test_a_run_given_a_bad_max_turns_sends_nothing(
    max_turns: Any, error: type[Exception]
) -> None:
    scripted = ScriptedTransport([answer_events("r0")])
    with pytest.raises(error, match="max_turns must be"):
        await Runner.run(Agent(MODEL), "go", client=scripted, max_turns=max_turns)
    assert scripted.requests == []
