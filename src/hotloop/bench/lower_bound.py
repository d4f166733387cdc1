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

**The room** (:func:`room`) is how much of that bound work avoidance could remove at most:
the bound again, with two kinds of call answered ahead of the model (the model still gets
their result, so what it is sent is unchanged):

* **repeats**: a call of a tool that cannot write (its declared effects) made before, same tool
  and canonical arguments, with no call in between (in script order) that may write what it
  reads: hierarchically overlapping writes, or a tool that declares no effects. A perfect cache
  serves it the moment the call it repeats is done (at once if that one is done already);
* **predicted reads**: a call of such a tool that a call of an *earlier* turn's declared
  ``follows`` predicts (from that call's arguments and its simulated output), again with no
  overlapping write in between. A perfect predictor starts it the moment its prediction can
  exist and what it reads is final: when the predicting call is done (its output names it)
  and every earlier call that may write what it reads is done. It is done a tool time later,
  which may still be after the model asks for it: then the call waits for the rest.

``room = lower bound - bound with the repeats and the predicted reads answered early``: what a
perfect cache and a perfect predictor working from the same declarations could save, and no
more; a lossless runtime cannot run a read before the output that predicts it, or before the
write it must see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotloop.protocol.conversation import estimate_item_tokens
from hotloop.runtime.scheduler import CallEffects, overlap
from hotloop.sim.engine import CHARS_PER_TOKEN
from hotloop.sim.latency import LatencyProfile
from hotloop.sim.scenario import Scenario, ScriptedCall, ToolSpec, canonical_arguments
from hotloop.sim.tools import follow_ups, tool_output
from hotloop.wire import codec

__all__ = [
    "Avoidable",
    "Early",
    "LowerBound",
    "Room",
    "TurnBound",
    "avoidable",
    "lower_bound",
    "room",
]

#: A call of a scenario: (0-based turn, index of the call in the turn).
CallRef = tuple[int, int]


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


@dataclass(frozen=True, slots=True)
class Early:
    """How a call is answered ahead of the model: once the first of ``after`` is done and every
    call of ``waits`` is (writes it must see), its result is there at once (``runs`` False: a
    cached result) or after its own tool time (a prefetch)."""

    after: tuple[CallRef, ...]
    waits: tuple[CallRef, ...] = ()
    runs: bool = False


def _tool_ends(
    scenario: Scenario,
    turn: int,
    ready: list[float],
    early: Mapping[CallRef, Early],
    done: dict[CallRef, float],
    start: float,
) -> list[float]:
    """When each call of ``turn`` is done (s from the turn's ``start``), each call's end also
    recorded in ``done`` (s from the rollout's start)."""
    calls = scenario.turns[turn].calls
    effects = [_effects(scenario.tools[call.name], call.arguments) for call in calls]
    ends: list[float] = []
    for index, call in enumerate(calls):
        begin = ready[index]
        for earlier in range(index):
            if effects[index].conflicts_with(effects[earlier]):
                begin = max(begin, ends[earlier])
        latency = scenario.tools[call.name].latency_ms / 1000
        how = early.get((turn, index))
        if how is None:
            ends.append(begin + latency)
        else:  # answered ahead of the model: see Early
            there = max(
                min(done[ref] for ref in how.after),
                max((done[ref] for ref in how.waits), default=0.0),
            )
            ends.append(max(begin, there + (latency if how.runs else 0.0) - start))
        done[(turn, index)] = start + ends[-1]
    return ends


def lower_bound(
    scenario: Scenario, profile: LatencyProfile, *, early: Mapping[CallRef, Early] | None = None
) -> LowerBound:
    """The critical-path lower bound of ``scenario`` under ``profile``; see the module doc.

    The calls in ``early`` (turn, index) are answered ahead of the model, as their
    :class:`Early` says.
    """
    early = early or {}
    done: dict[CallRef, float] = {}  # every call's end, in seconds from the rollout's start
    start = 0.0
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
        ends = _tool_ends(scenario, index, ready, early, done, start)
        bound = TurnBound(index + 1, first, model_end, max(ends, default=0.0))
        turns.append(bound)
        start += bound.total_s
        # What the next turn sends: this turn's tool results.
        new_tokens = sum(
            estimate_item_tokens(tool_output(scenario.tools[call.name], call.arguments))
            for call in turn.calls
        )
    return LowerBound(scenario.name, profile.name, tuple(turns))


@dataclass(frozen=True, slots=True)
class Avoidable:
    """The calls of a scenario work avoidance could answer ahead of the model (see the module
    doc): exact repeats a perfect cache serves, and reads an earlier turn's declared follow-ups
    predict (and that are not repeats); each with how early it could be answered."""

    repeats: Mapping[CallRef, Early]
    predicted: Mapping[CallRef, Early]


def _writes_between(
    effects: list[tuple[CallRef, CallEffects]], after: int, before: int, reads: frozenset[str]
) -> bool:
    """Whether a call strictly between positions ``after`` and ``before`` may write ``reads``."""
    return any(
        other.exclusive or overlap(other.writes, reads) for _, other in effects[after + 1 : before]
    )


def avoidable(scenario: Scenario) -> Avoidable:
    """Which calls are repeats and which are predicted reads; see the module doc."""
    flat: list[tuple[CallRef, ScriptedCall]] = [
        ((turn, index), call)
        for turn, scripted in enumerate(scenario.turns)
        for index, call in enumerate(scripted.calls)
    ]
    effects = [(ref, _effects(scenario.tools[call.name], call.arguments)) for ref, call in flat]
    keys = [(call.name, canonical_arguments(call.arguments)) for _, call in flat]
    # What each call's follow-ups predict: (tool, canonical arguments) → positions predicting it.
    predictions: list[set[tuple[str, str]]] = []
    for _, call in flat:
        spec = scenario.tools[call.name]
        output = tool_output(spec, call.arguments)
        predictions.append(
            {
                (name, codec.canonical(args).decode())
                for name, args in follow_ups(spec, codec.loads(call.arguments), output)
            }
        )
    repeats: dict[CallRef, Early] = {}
    predicted: dict[CallRef, Early] = {}
    for position, (ref, call) in enumerate(flat):
        if not scenario.tools[call.name].writes_nothing:
            continue
        reads = effects[position][1].reads
        # The calls since the last write that may change what this one reads, nearest first.
        since: list[int] = []
        for earlier in range(position - 1, -1, -1):
            if _writes_between(effects, earlier, position, reads):
                break
            since.append(earlier)
        originals = tuple(flat[at][0] for at in since if keys[at] == keys[position])
        predictors = tuple(
            flat[at][0]
            for at in since
            if flat[at][0][0] < ref[0] and keys[position] in predictions[at]
        )
        if originals:
            repeats[ref] = Early(originals)
        elif predictors:
            # The writes it must see: every earlier call that may write what it reads.
            waits = tuple(
                other_ref
                for other_ref, other in effects[:position]
                if other.exclusive or overlap(other.writes, reads)
            )
            predicted[ref] = Early(predictors, waits, runs=True)
    return Avoidable(repeats, predicted)


@dataclass(frozen=True, slots=True)
class Room:
    """The bound, and the bounds without the avoidable calls (s): what a runtime could save."""

    bound: LowerBound
    without_repeats: LowerBound
    without_avoidable: LowerBound
    calls: Avoidable

    @property
    def room_s(self) -> float:
        return self.bound.total_s - self.without_avoidable.total_s

    def describe(self) -> dict[str, Any]:
        """The room as report data."""
        return {
            "lower_bound_s": self.bound.total_s,
            "without_repeats_s": self.without_repeats.total_s,
            "without_repeats_and_predicted_s": self.without_avoidable.total_s,
            "room_s": self.room_s,
            "repeats": len(self.calls.repeats),
            "predicted_reads": len(self.calls.predicted),
        }


def room(scenario: Scenario, profile: LatencyProfile) -> Room:
    """The lower bound with and without the calls work avoidance could skip (module doc)."""
    calls = avoidable(scenario)
    return Room(
        lower_bound(scenario, profile),
        lower_bound(scenario, profile, early=calls.repeats),
        lower_bound(scenario, profile, early={**calls.repeats, **calls.predicted}),
        calls,
    )
