"""A run as bars on a time axis: the data every waterfall (terminal, HTML) is drawn from.

One :class:`Bar` per phase: for each model turn, the wait for the first token and the
generation; for each tool call, the wait between its arguments being complete and its start
(the scheduler holding it back), and its execution. Rows group bars: one row per model turn
(``turn 3 · model``), one per tool call (``turn 3 · read_file``). Work done beside the turns
follows, a row each: speculative executions (``speculation · read_file``, labelled used or
wasted) and requests a policy sent beside the turns (``aside · summary``). Times are
nanoseconds from the run's start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hotloop.runtime.events import RunResult, StepRecord, ToolRecord

__all__ = [
    "PHASES",
    "Bar",
    "aside_bar",
    "phase_totals",
    "speculation_bar",
    "timeline_from_result",
    "timeline_from_steps",
]

#: Bar kinds, in the order a legend lists them.
PHASES = (
    "model.wait",  # request sent → first token (network, server queue, prefill)
    "model.generation",  # first token → response complete
    "tool.wait",  # arguments complete → tool started (held by the scheduler)
    "tool.run",  # tool started → finished
    "tool.speculation",  # a read run before the model asked (Speculate)
    "model.aside",  # a request beside the turns (Compact's summaries)
)


@dataclass(frozen=True, slots=True)
class Bar:
    """One phase of a run: ``kind`` from :data:`PHASES`, on row ``row``."""

    row: str
    kind: str
    start_ns: int
    end_ns: int
    label: str = ""
    turn: int = 0

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


def _step_bars(step: StepRecord) -> list[Bar]:
    bars: list[Bar] = []
    row = f"turn {step.turn} · model"
    first = step.first_token_ns if step.first_token_ns is not None else step.first_event_ns
    done = step.response_done_ns
    if first is not None:
        server = step.server or {}
        detail = ", ".join(f"{k.removesuffix('_ns')}={v / 1e6:.1f}ms" for k, v in server.items())
        bars.append(Bar(row, "model.wait", step.request_sent_ns, first, detail, step.turn))
        if done is not None:
            bars.append(Bar(row, "model.generation", first, done, "", step.turn))
    for tool in step.tools:
        if tool.started_ns is None or tool.finished_ns is None:
            continue
        tool_row = f"turn {step.turn} · {tool.name}"
        label = tool.error or _label(tool)
        if tool.started_ns > tool.args_complete_ns:
            bars.append(
                Bar(tool_row, "tool.wait", tool.args_complete_ns, tool.started_ns, "", step.turn)
            )
        bars.append(Bar(tool_row, "tool.run", tool.started_ns, tool.finished_ns, label, step.turn))
    return bars


def timeline_from_steps(steps: Iterable[StepRecord]) -> list[Bar]:
    """The bars of a sequence of step records, in time order of their rows."""
    bars: list[Bar] = []
    for step in steps:
        bars.extend(_step_bars(step))
    return bars


def speculation_bar(name: str, start_ns: int, end_ns: int, used: bool, error: str | None) -> Bar:
    """The bar of one speculative execution of tool ``name``."""
    label = error or ("used" if used else "wasted")
    return Bar(f"speculation · {name}", "tool.speculation", start_ns, end_ns, label)


def aside_bar(purpose: str, turn: int, start_ns: int, end_ns: int, error: str | None = None) -> Bar:
    """The bar of one request sent beside the turns, before turn ``turn`` (``error``: why it
    ended without a response)."""
    label = f"before turn {turn}" if error is None else f"before turn {turn}: {error}"
    return Bar(f"aside · {purpose}", "model.aside", start_ns, end_ns, label, turn)


def timeline_from_result(result: RunResult) -> list[Bar]:
    """The bars of a finished run."""
    bars = timeline_from_steps(result.steps)
    for speculation in result.speculations:
        end = speculation.finished_ns if speculation.finished_ns is not None else result.wall_ns
        used = speculation.used_ns is not None
        bars.append(
            speculation_bar(speculation.name, speculation.started_ns, end, used, speculation.error)
        )
    for aside in result.asides:
        answered = aside.response_done_ns
        done = answered if answered is not None else max(aside.request_sent_ns, result.wall_ns)
        bars.append(
            aside_bar(
                aside.purpose or "aside", aside.turn, aside.request_sent_ns, done, aside.error
            )
        )
    return bars


def phase_totals(bars: Sequence[Bar]) -> dict[str, int]:
    """Total nanoseconds per phase kind (bars of one kind may overlap; they add up)."""
    totals = dict.fromkeys(PHASES, 0)
    for bar in bars:
        totals[bar.kind] = totals.get(bar.kind, 0) + bar.duration_ns
    return totals


def _label(tool: ToolRecord) -> str:
    """What a tool bar says besides its error: reused, served from the cache, invalidations."""
    parts = []
    if tool.reused:
        parts.append("reused")
    if tool.cache in ("hit", "coalesced"):
        parts.append(f"cache {tool.cache}")
    if tool.invalidated:
        parts.append(f"invalidated {tool.invalidated}")
    return ", ".join(parts)
