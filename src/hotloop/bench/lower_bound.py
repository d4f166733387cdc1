"""The critical-path lower bound of a scenario's rollout under a latency profile.

No client can finish a scenario faster than this, given how the simulated model behaves:

* each turn sends only its new items (the best case, WebSocket continuation): the provider's
  service time covers only those tokens, and only they are prefilled (the rest of the prompt is
  in the prefix cache);
* the first token arrives after ``service + ttft + prefill``; output tokens follow one decode
  interval apart, text first, then each call's arguments in order, exactly as the engine
  streams them (4 characters per token);
* each tool starts the moment its arguments are complete (eager dispatch) but not before every
  earlier call it conflicts with (by the scenario's declared effects) has finished; tools
  otherwise run with unlimited concurrency;
* the next turn starts when both the model's output and every tool of the turn are done;
  client and network overheads are zero.

The per-turn figure is therefore ``max(model end, last tool end)``; the bound is their sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotloop.protocol.conversation import estimate_item_tokens
from hotloop.runtime.scheduler import CallEffects
from hotloop.sim.engine import CHARS_PER_TOKEN
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec
from hotloop.sim.tools import tool_output
from hotloop.wire import codec

__all__ = ["LowerBound", "TurnBound", "lower_bound"]


@dataclass(frozen=True, slots=True)
class TurnBound:
    """One turn of the bound: when its first token, its output and its tools are done (s)."""

    turn: int
    first_token_s: float
    model_s: float
    tools_s: float

    @property
    def total_s(self) -> float:
        return max(self.model_s, self.tools_s)


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The bound of a whole rollout: the sum of its turns."""

    scenario: str
    profile: str
    turns: tuple[TurnBound, ...]

    @property
    def total_s(self) -> float:
        return sum(turn.total_s for turn in self.turns)

    @property
    def model_s(self) -> float:
        return sum(turn.model_s for turn in self.turns)


def _tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _effects(spec: ToolSpec, arguments: str) -> CallEffects:
    args: Mapping[str, Any] = codec.loads(arguments)
    effects = spec.effects
    declared = effects.pure or bool(effects.reads) or bool(effects.writes)
    return CallEffects(
        reads=frozenset(template.format_map(args) for template in effects.reads),
        writes=frozenset(template.format_map(args) for template in effects.writes),
        exclusive=not declared,
    )


def _tool_ends(
    scenario: Scenario, calls: tuple[ScriptedCall, ...], ready: list[float]
) -> list[float]:
    effects = [_effects(scenario.tools[call.name], call.arguments) for call in calls]
    ends: list[float] = []
    for index, call in enumerate(calls):
        start = ready[index]
        for earlier in range(index):
            if effects[index].conflicts_with(effects[earlier]):
                start = max(start, ends[earlier])
        ends.append(start + scenario.tools[call.name].latency_ms / 1000)
    return ends


def lower_bound(scenario: Scenario, profile: LatencyProfile) -> LowerBound:
    """The critical-path lower bound of ``scenario`` under ``profile``; see the module doc."""
    interval = profile.token_interval()
    new_tokens = estimate_item_tokens(scenario.task)
    turns: list[TurnBound] = []
    for index, turn in enumerate(scenario.turns):
        first = profile.service_time(new_tokens) + profile.first_token_time(new_tokens)
        emitted = 0
        ready: list[float] = []
        if turn.text:
            emitted += _tokens(turn.text)
        for call in turn.calls:
            emitted += _tokens(call.arguments)
            ready.append(first + (emitted - 1) * interval)
        model_end = first + max(emitted - 1, 0) * interval
        ends = _tool_ends(scenario, turn.calls, ready)
        turns.append(TurnBound(index + 1, first, model_end, max(ends, default=0.0)))
        # What the next turn sends: this turn's tool results.
        new_tokens = sum(
            estimate_item_tokens(tool_output(scenario.tools[call.name], call.arguments))
            for call in turn.calls
        )
    return LowerBound(scenario.name, profile.name, tuple(turns))
