"""Compaction in the background: a long conversation's older part becomes a summary, and the
loop never waits for it.

``Agent(policies=[Compact(threshold_tokens=...)])``. At a turn boundary (before a turn's
request) where the context the model would get passes ``threshold_tokens``, the policy sends
the older part of the conversation to a model with a request for a summary
(:meth:`~hotloop.runtime.policies.TurnState.request_aside`) and does not wait: the turn goes
out as it was, its tools run, later turns go on. At the first turn boundary after the summary
came back, the older part is replaced by one message holding the summary, and that turn sends
the compacted context whole, as a fresh chain (``previous_response_id=None``); the turns after
it continue that chain incrementally again, because the runner continues the last response as
always. Nothing is ever compacted inline.

What the model gets after the switch, in this order: the agent's instructions and tools (as
always), the conversation's leading input (the task: the items before the first model output,
kept verbatim), the summary message, then the kept recent items. The kept part starts at a
turn boundary: the first item of a model output that follows input, with every call before it
answered, so no ``function_call_output`` is ever separated from its ``function_call`` (nor
reasoning from what follows it). It is the most recent turns that fit in
``keep_recent_tokens`` when the summary is started (at least the latest turn), plus every
turn made while the summary ran. Instructions, tools, task, kept messages and summary are
byte-identical on every turn until the next compaction, so a prefix cache keeps hitting.

When the compacted context passes ``threshold_tokens`` again, the summary message and the
turns after it up to a new boundary are summarised in turn (one summary at a time).

What stays as it was: the run's history. :attr:`RunResult.items` and ``StepRecord.input_from``
/ ``output_from`` describe the whole conversation, uncompacted, and ``previous=`` continues it
(the next run compacts again once it passes the threshold); only the requests sent to the model
are compacted. Each summary request is recorded in ``RunResult.asides`` (``purpose``
``"summary"``), and traced as a ``model.aside`` span.

Tokens are estimated as the simulated model counts them (about 4 characters per token, plus a
few per item; instructions and tool definitions included), incrementally: a turn costs the
policy its new items only.

The summary request is a plain call to ``model`` (default: the agent's), with no tools:
``instructions``, then the items to summarise, then a user message asking for the summary,
``max_output_tokens`` ``summary_tokens`` and ``metadata`` ``{"hotloop_purpose": "summary"}``
(by which the simulated model knows it). A summary that fails, comes back empty, or has no
complete response within ``summary_timeout`` seconds (it is then cancelled) is dropped; the
policy tries again at a later boundary, up to ``max_failures`` times per run.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hotloop.checks import number
from hotloop.protocol.conversation import estimate_item_tokens, item_text
from hotloop.runtime.policies import Policy, TurnState
from hotloop.transport.base import ModelRequest, RequestTimings
from hotloop.wire import codec
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message
from hotloop.wire.responses import ResponseObject

__all__ = [
    "SUMMARY_HEADER",
    "SUMMARY_INSTRUCTIONS",
    "SUMMARY_METADATA",
    "SUMMARY_PROMPT",
    "Compact",
]

_log = logging.getLogger("hotloop.runtime")

#: The ``metadata`` of every summary request (a simulated model recognises it by this).
SUMMARY_METADATA: Mapping[str, str] = MappingProxyType({"hotloop_purpose": "summary"})
#: The summariser's default instructions.
SUMMARY_INSTRUCTIONS = (
    "You compact the earlier part of an agent's conversation so that the agent can go on "
    "without it. Write a summary that keeps the task's facts, what each tool call found that "
    "still matters, the decisions made and what remains to do. Leave out what no longer "
    "matters. Answer with the summary only."
)
#: The user message that ends a summary request's input.
SUMMARY_PROMPT = "Summarise the conversation above, as your instructions say."
#: What the summary message starts with, before the summary's text.
SUMMARY_HEADER = "Summary of the earlier part of this conversation:\n\n"


@dataclass(frozen=True, slots=True)
class _Compaction:
    """A compaction in effect: ``head`` (the leading input, the later messages kept, the
    summary), then the run's history from ``cut`` on; ``tokens`` is the head's estimate."""

    cut: int
    head: tuple[Item, ...]
    tokens: int


@dataclass(slots=True)
class _Pending:
    """A summary on its way, of the history up to ``cut``; the messages of the part it
    summarises that stay verbatim (``kept``)."""

    cut: int
    kept: tuple[Item, ...]
    future: asyncio.Future[ResponseObject]


@dataclass(slots=True)
class _Memory:
    """What the policy keeps for one run (in ``TurnState.memo``)."""

    #: The run's history the counts below describe (the runner appends to one list).
    history: Sequence[Item] | None = None
    #: ``prefix[i]``: the estimated tokens of ``history[:i]``.
    prefix: list[int] = field(default_factory=lambda: [0])
    #: Calls not answered yet in the items counted, and whether the last item was input.
    open_calls: set[str] = field(default_factory=set)
    after_input: bool = False
    #: Turn boundaries (see the module docstring), ascending.
    boundaries: list[int] = field(default_factory=list)
    #: The leading input's end (the first model output), once known.
    task_end: int | None = None
    #: Instructions and tool definitions, estimated once.
    fixed: int | None = None
    active: _Compaction | None = None
    pending: _Pending | None = None
    #: The compacted history last sent: a re-sent attempt of that turn carries it already.
    view: Sequence[Item] | None = None
    failures: int = 0

    @property
    def counted(self) -> int:
        """The items counted so far."""
        return len(self.prefix) - 1


def _is_message(item: Item) -> bool:
    """A message that is not the model's: the user's (or the system's, the developer's)."""
    return isinstance(item, Message) and item.role != "assistant"


def _is_input(item: Item) -> bool:
    return isinstance(item, FunctionCallOutput) or _is_message(item)


def _tokens(item: Item) -> int:
    return estimate_item_tokens(item_text(item))


def _summary_of(future: asyncio.Future[ResponseObject]) -> str | None:
    """The summary's text, or ``None`` when it failed or came back empty."""
    if future.cancelled():
        return None
    failure = future.exception()
    if failure is not None:
        _log.warning("a summary for compaction failed; the context stays as it is: %s", failure)
        return None
    response = future.result()
    if response.status not in ("completed", "incomplete"):
        _log.warning("a summary for compaction ended %s; it is not used", response.status)
        return None
    text = "".join(
        item.text
        for item in response.output
        if isinstance(item, Message) and item.role == "assistant"
    ).strip()
    return text or None


class Compact(Policy):
    """Background compaction: past ``threshold_tokens``, the older part of the context is
    summarised beside the turns and replaced at a later turn boundary; the loop never waits.

    ``keep_recent_tokens`` (default a quarter of the threshold) bounds the recent turns kept
    verbatim when a summary starts; ``model`` writes the summaries (``None``: the agent's
    model), following ``instructions``, in at most ``summary_tokens`` tokens, within
    ``summary_timeout`` seconds (``None``: no limit). A compaction starts only when the part
    to summarise is larger than a summary. See the module docstring
    for what the model gets, and what the run's history keeps. Counters (shared by every run
    of the agent): ``summaries`` sent, ``compactions`` switched to, ``failed`` summaries.
    """

    def __init__(
        self,
        threshold_tokens: int,
        keep_recent_tokens: int | None = None,
        *,
        model: str | None = None,
        instructions: str = SUMMARY_INSTRUCTIONS,
        summary_tokens: int = 512,
        summary_timeout: float | None = 120.0,
        max_failures: int = 3,
    ) -> None:
        number("threshold_tokens", threshold_tokens, integer=True)
        number("keep_recent_tokens", keep_recent_tokens, integer=True, optional=True)
        number("summary_tokens", summary_tokens, integer=True)
        number("summary_timeout", summary_timeout, optional=True)
        number("max_failures", max_failures, integer=True)
        keep = threshold_tokens // 4 if keep_recent_tokens is None else keep_recent_tokens
        if threshold_tokens <= 0 or not 0 < keep < threshold_tokens:
            raise ValueError(
                "threshold_tokens must be positive, and keep_recent_tokens between 0 and it"
            )
        if not 16 <= summary_tokens < threshold_tokens:
            raise ValueError("summary_tokens must be at least 16 and below threshold_tokens")
        if summary_timeout is not None and not summary_timeout > 0:
            raise ValueError("summary_timeout must be positive (or None: no timeout)")
        if not max_failures >= 1:
            raise ValueError(
                "max_failures must be at least 1: a run sends no summary once that many failed"
            )
        self.threshold_tokens = threshold_tokens
        self.keep_recent_tokens = keep
        self.model = model
        self.instructions = instructions
        self.summary_tokens = summary_tokens
        self.summary_timeout = summary_timeout
        self.max_failures = max_failures
        self.summaries = 0
        self.compactions = 0
        self.failed = 0

    def before_request(self, state: TurnState) -> ModelRequest | None:
        request = state.request
        memory: _Memory | None = state.memo.get("compaction")
        if memory is not None and memory.view is not None and request.history is memory.view:
            return None  # a re-sent attempt of a compacted turn: it is compacted already
        history = request.history
        if memory is None or memory.history is not history or len(history) < memory.counted:
            # A run's first turn (the runner appends to one history list for the whole run).
            failures = memory.failures if memory is not None else 0
            memory = state.memo["compaction"] = _Memory(history, failures=failures)
        self._count(memory, history)
        switched = self._adopt(memory, history)
        if memory.pending is None and memory.failures < self.max_failures:
            self._maybe_start(state, memory, history)
        active = memory.active
        if active is None:
            return None
        view = (*active.head, *history[active.cut :])
        memory.view = view
        if switched or request.previous_response_id is None or request.new_from < active.cut:
            # The switch: the compacted context goes whole, as a fresh chain.
            return dataclasses.replace(request, history=view, new_from=0, previous_response_id=None)
        # Continuing a response of the compacted chain: the same new items, renumbered.
        new_from = request.new_from - active.cut + len(active.head)
        return dataclasses.replace(request, history=view, new_from=new_from)

    # -- what the policy knows of the conversation -------------------------------------------

    def _count(self, memory: _Memory, history: Sequence[Item]) -> None:
        """Count the items added since the last turn."""
        prefix = memory.prefix
        for index in range(len(prefix) - 1, len(history)):
            item = history[index]
            prefix.append(prefix[-1] + _tokens(item))
            is_input = _is_input(item)
            if not is_input:
                if memory.task_end is None:
                    memory.task_end = index
                if memory.after_input and not memory.open_calls:
                    memory.boundaries.append(index)
            if isinstance(item, FunctionCall):
                memory.open_calls.add(item.call_id)
            elif isinstance(item, FunctionCallOutput):
                memory.open_calls.discard(item.call_id)
            memory.after_input = is_input

    def _fixed(self, state: TurnState, memory: _Memory) -> int:
        if memory.fixed is None:
            request = state.request
            text = len(request.instructions or "")
            if request.tools:
                text += len(codec.dumps(list(request.tools)))
            memory.fixed = (text + 3) // 4
        return memory.fixed

    # -- summaries ----------------------------------------------------------------------------

    def _adopt(self, memory: _Memory, history: Sequence[Item]) -> bool:
        """Switch to a summary that came back; whether this turn switches."""
        pending = memory.pending
        if pending is None or not pending.future.done():
            return False
        memory.pending = None
        text = _summary_of(pending.future)
        if text is None:
            memory.failures += 1
            self.failed += 1
            return False
        summary = Message(role="user", content=SUMMARY_HEADER + text)
        task_end = memory.task_end or 0
        head = (*history[:task_end], *pending.kept, summary)
        tokens = memory.prefix[task_end] + sum(_tokens(item) for item in head[task_end:])
        memory.active = _Compaction(pending.cut, head, tokens)
        self.compactions += 1
        return True

    def _maybe_start(self, state: TurnState, memory: _Memory, history: Sequence[Item]) -> None:
        """Start a summary if the context the model gets passes the threshold."""
        task_end = memory.task_end
        if task_end is None:
            return  # no model output yet: nothing to summarise
        prefix, size, active = memory.prefix, len(history), memory.active
        start = active.cut if active is not None else task_end
        context = self._fixed(state, memory) + prefix[size] - prefix[start]
        context += active.tokens if active is not None else prefix[start]
        if context <= self.threshold_tokens:
            return
        boundaries = memory.boundaries
        first = bisect.bisect_right(boundaries, start)
        if first >= len(boundaries):
            return  # a single turn since the last cut: nothing older to summarise
        cut = boundaries[-1]  # at least the latest turn stays
        for boundary in boundaries[first:]:
            if prefix[size] - prefix[boundary] <= self.keep_recent_tokens:
                cut = boundary
                break
        kept, kept_since_start = self._kept(memory, history, cut, start)
        if prefix[cut] - prefix[start] - kept_since_start <= self.summary_tokens:
            return  # what would be summarised is no larger than its summary
        if active is not None:
            older: tuple[Item, ...] = (*active.head, *history[active.cut : cut])
        else:
            older = tuple(history[:cut])
        summary_request = ModelRequest(
            model=self.model or state.agent.model,
            history=(*older, Message(role="user", content=SUMMARY_PROMPT)),
            instructions=self.instructions,
            settings=_settings(self.summary_tokens),
            timings=RequestTimings(),
        )
        future = state.request_aside(summary_request, "summary", timeout=self.summary_timeout)
        if future is None:
            return  # outside a run: no client to send it with
        memory.pending = _Pending(cut, kept, future)
        self.summaries += 1

    def _kept(
        self, memory: _Memory, history: Sequence[Item], cut: int, start: int
    ) -> tuple[tuple[Item, ...], int]:
        """The messages before ``cut`` and after the leading input that stay verbatim (the
        user's later messages: the latest ones, up to ``keep_recent_tokens``), in order; and
        the tokens of those at or after ``start`` (not summarised before)."""
        task_end = memory.task_end or 0
        chosen: list[int] = []
        total = 0
        for index in range(cut - 1, task_end - 1, -1):
            item = history[index]
            if not _is_message(item):
                continue
            tokens = memory.prefix[index + 1] - memory.prefix[index]
            if total + tokens > self.keep_recent_tokens:
                break
            total += tokens
            chosen.append(index)
        chosen.reverse()
        since_start = sum(
            memory.prefix[index + 1] - memory.prefix[index] for index in chosen if index >= start
        )
        return tuple(history[index] for index in chosen), since_start


def _settings(summary_tokens: int) -> Mapping[str, Any]:
    return MappingProxyType(
        {"max_output_tokens": summary_tokens, "metadata": dict(SUMMARY_METADATA)}
    )
