"""Summarisation requests in simulation, and conversations compacted by a summary.

A client that compacts a long conversation (the runtime's
:class:`~hotloop.runtime.compaction.Compact`) sends its older part to the model with a request
for a summary, then goes on with one summary message in place of that part. The simulated
model plays both sides:

* **A summarisation request** is one whose ``metadata`` has ``"hotloop_purpose": "summary"``
  (:data:`SUMMARY_METADATA_KEY`, :data:`SUMMARY_METADATA_VALUE`; ``Compact`` sets it). Its
  answer is a deterministic text of exactly ``max_output_tokens`` tokens
  (:data:`SUMMARY_TOKENS` when the request sets none), streamed at the profile's decode speed
  after the usual service time and prefill, so a summary of *n* tokens takes the time a real
  one would. It plays no scenario turn: a scenario's position is never advanced by it.
* **The summary carries the scenario position.** Its text begins with a marker,
  ``[hotloop-sim summary: results=N answers=K]``: the tool results the summarised
  conversation held (N, counting those an earlier summary in it stood for) and the assistant
  messages since its last result (K). A conversation in which a message carries the marker
  counts N tool results for everything up to that message, so a compacted conversation
  (summary + recent items) is on the same scenario turn as the whole one; the latest marker
  wins. The marker is only read from messages, wherever it sits in their text (a client may
  wrap the summary in a header).

A marker is found once per conversation segment (kept on the snapshot, like the other derived
state of :class:`~hotloop.protocol.conversation.Conversation`), so a continuation looks at its
new items only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Message

__all__ = [
    "SUMMARY_METADATA_KEY",
    "SUMMARY_METADATA_VALUE",
    "SUMMARY_TOKENS",
    "is_summary_request",
    "is_summary_text",
    "position",
    "summary_text",
]

#: The ``metadata`` entry that marks a summarisation request.
SUMMARY_METADATA_KEY = "hotloop_purpose"
SUMMARY_METADATA_VALUE = "summary"
#: Tokens of a simulated summary when the request sets no ``max_output_tokens``.
SUMMARY_TOKENS = 256
#: Characters per token of the simulated summary (the engine's streaming unit).
_CHARS_PER_TOKEN = 4
_PREFIX = "[hotloop-sim summary:"
_MARK = re.compile(r"\[hotloop-sim summary: results=(\d+) answers=(\d+)\]")
_FILLER = (
    "Each result was read and what it showed was noted; the open questions and the next steps "
    "are kept. "
)
#: Where a snapshot keeps its latest marker (``Conversation.note``).
_NOTE = ("hotloop.sim", "summary-mark")
#: The note of a snapshot with no marker up to it.
_NONE: tuple[int, int, int] = (-1, 0, 0)


def is_summary_request(request: GenerationRequest) -> bool:
    """Whether ``request`` asks for a summary (its ``metadata``, see the module docstring)."""
    metadata = request.settings.get("metadata")
    return (
        isinstance(metadata, Mapping)
        and metadata.get(SUMMARY_METADATA_KEY) == SUMMARY_METADATA_VALUE
    )


def is_summary_text(text: str) -> bool:
    """Whether ``text`` carries a simulated summary's marker."""
    return _PREFIX in text and _MARK.search(text) is not None


def _mark(context: Conversation) -> tuple[int, int, int]:
    """``(results, answers, results_before)`` of the latest marker in ``context`` (results
    -1: none); ``results_before`` counts the tool results the conversation held before it."""
    pending: list[Conversation] = []
    node: Conversation | None = context
    known: tuple[int, int, int] | None = None
    while node is not None:
        known = node.noted(_NOTE)
        if known is not None:
            break
        pending.append(node)
        node = node.parent
    mark = known if known is not None else _NONE
    for segment in reversed(pending):
        results_before = segment.parent.tool_results if segment.parent is not None else 0
        for item in segment.items:
            if isinstance(item, FunctionCallOutput):
                results_before += 1
            elif isinstance(item, Message):
                text = item.text
                if _PREFIX in text:
                    found = _MARK.search(text)
                    if found is not None:
                        mark = (int(found[1]), int(found[2]), results_before)
        segment.note(_NOTE, mark)
    return mark


def position(context: Conversation) -> tuple[int, int]:
    """``(tool_results, answers_since_result)`` of ``context`` as a whole conversation: a
    summary's marker stands for the results it summarised."""
    results, answers, before = _mark(context)
    if results < 0:
        return context.tool_results, context.answers_since_result
    after = context.tool_results - before
    if after > 0:
        return results + after, context.answers_since_result
    return results, answers + context.answers_since_result


def summary_text(request: GenerationRequest) -> str:
    """The summary of ``request``'s conversation: its marker, the tools it used, then filler,
    exactly ``max_output_tokens`` tokens long (:data:`SUMMARY_TOKENS` by default; never
    shorter than the marker)."""
    context = request.context
    results, answers = position(context)
    tokens = request.max_output_tokens or SUMMARY_TOKENS
    used = Counter(item.name for item in context.all_items() if isinstance(item, FunctionCall))
    tools = ", ".join(f"{name} x{count}" for name, count in sorted(used.items())) or "none"
    head = f"[hotloop-sim summary: results={results} answers={answers}] "
    body = f"Summary of {results} tool results (tools used since the last summary: {tools}). "
    size = max(tokens * _CHARS_PER_TOKEN, len(head))
    text = head + body
    if len(text) < size:
        text += _FILLER * ((size - len(text)) // len(_FILLER) + 1)
    return text[:size]
