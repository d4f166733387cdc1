"""Conversation snapshots that share structure, so a continuation costs only its new items.

A :class:`Conversation` is an immutable node: a parent snapshot plus the items this segment
adds (one request's new input, or one response's output). Continuing a conversation creates
one node and touches only the new items; the history is never copied, re-validated or
re-tokenized. This is the "connection-scoped cache" state that WebSocket mode keeps per
connection, so a continuation is validated and tokenized on its new items only: each
node carries the derived state a backend needs (token count, the rolling prefix key a prefix
cache is looked up with, how many tool results the model has seen), computed once per item.

A stateless request that re-sends the whole history builds one big node from scratch, which
costs time proportional to the history: that is the cost WebSocket mode removes, and the
simulated model charges it faithfully.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hotloop.wire.items import (
    FunctionCall,
    FunctionCallOutput,
    Item,
    Message,
    Reasoning,
    UnknownItem,
)

__all__ = ["Conversation", "estimate_item_tokens", "item_fingerprint", "item_text"]

_T = TypeVar("_T")

_ROOT_KEY = 0x9E3779B97F4A7C15


def item_text(item: Item) -> str:
    """The text of an item that a model reads (and that tokens are estimated from)."""
    if isinstance(item, Message):
        return item.text
    if isinstance(item, FunctionCall):
        return item.name + item.arguments
    if isinstance(item, FunctionCallOutput):
        return item.text
    if isinstance(item, Reasoning):
        return (item.encrypted_content or "") + "".join(part.text or "" for part in item.summary)
    if isinstance(item, UnknownItem):
        return str(item.data)
    return ""


def item_fingerprint(item: Item) -> int:
    """A hash of what the model sees of an item; ids, call ids and statuses do not count.

    Call ids are left out because the engine fingerprints its own output before the gateway
    names the calls; a string content and the same text as parts hash alike.

    Two requests that carry the same history (re-sent in full, or continued by id) give the
    same fingerprints, so a prefix cache hits for both.
    """
    if isinstance(item, Message):
        return hash(("message", item.role, item.text))
    if isinstance(item, FunctionCall):
        return hash(("function_call", item.name, item.arguments))
    if isinstance(item, FunctionCallOutput):
        return hash(("function_call_output", item.text))
    return hash((item.type, item_text(item)))


def estimate_item_tokens(text: str) -> int:
    """Tokens an item of ``text`` adds to a prompt (the estimate every snapshot uses)."""
    # ~4 bytes per token (OpenAI's rule of thumb), plus a few tokens of message framing.
    return (len(text) + 3) // 4 + 4


@dataclass(frozen=True, slots=True, eq=False)
class Conversation:
    """One immutable snapshot of a conversation; see the module docstring.

    ``item_keys[i]`` is the rolling prefix key after item *i* of this segment and
    ``item_tokens[i]`` the token count up to and including it, so a prefix cache can find the
    longest cached prefix without re-reading the history.
    """

    parent: Conversation | None
    items: tuple[Item, ...]
    item_keys: tuple[int, ...]
    item_tokens: tuple[int, ...]
    length: int
    tokens: int
    nbytes: int
    tool_results: int
    #: Assistant messages since the last tool result (tells "the answer was given").
    answers_since_result: int
    #: The prefix key after the conversation's first item: the same for every snapshot of
    #: one conversation, so it names the conversation (replica affinity hashes it).
    root_key: int = _ROOT_KEY
    #: What backends derived from this segment's items, computed once (see :meth:`derived`).
    _memo: dict[object, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, items: Sequence[Item] = ()) -> Conversation:
        """A conversation holding ``items`` and no history."""
        return _EMPTY.extend(items)

    @property
    def prefix_key(self) -> int:
        """The rolling key of the whole conversation (what a prefix cache stores)."""
        if self.item_keys:
            return self.item_keys[-1]
        return self.parent.prefix_key if self.parent is not None else _ROOT_KEY

    def extend(self, items: Sequence[Item]) -> Conversation:
        """A new snapshot with ``items`` appended; costs O(len(items)), never O(history)."""
        if not items:
            return self
        key = self.prefix_key
        tokens = self.tokens
        nbytes = self.nbytes
        results = self.tool_results
        answers = self.answers_since_result
        keys: list[int] = []
        token_marks: list[int] = []
        for item in items:
            key = hash((key, item_fingerprint(item)))
            text = item_text(item)
            tokens += estimate_item_tokens(text)
            nbytes += len(text) + 64
            if isinstance(item, FunctionCallOutput):
                results += 1
                answers = 0
            elif isinstance(item, Message) and item.role == "assistant":
                answers += 1
            keys.append(key)
            token_marks.append(tokens)
        return Conversation(
            root_key=self.root_key if self.length else keys[0],
            parent=self if self.length else None,
            items=tuple(items),
            item_keys=tuple(keys),
            item_tokens=tuple(token_marks),
            length=self.length + len(items),
            tokens=tokens,
            nbytes=nbytes,
            tool_results=results,
            answers_since_result=answers,
        )

    def derived(self, key: object, compute: Callable[[Sequence[Item]], _T]) -> _T:
        """``compute(self.items)``, computed once per segment and ``key`` and kept.

        A backend keeps here what it derives from the items (the rendered chat messages,
        encoded): a continuation then derives only its new segments, and the rest is
        byte-identical to what was sent before.
        """
        memo = self._memo
        try:
            value: _T = memo[key]
        except KeyError:
            value = memo[key] = compute(self.items)
        return value

    def note(self, key: object, value: object) -> None:
        """Keep ``value`` on this snapshot under ``key`` (what an upstream said about it)."""
        self._memo[key] = value

    def noted(self, key: object) -> Any:
        """What :meth:`note` (or :meth:`derived`) kept under ``key``, or None."""
        return self._memo.get(key)

    def segments(self) -> Iterator[Conversation]:
        """This node and its ancestors, newest first."""
        node: Conversation | None = self
        while node is not None:
            if node.items:
                yield node
            node = node.parent

    def all_items(self) -> list[Item]:
        """Every item, oldest first. O(history): for persistence and replies, not per turn."""
        chunks = [node.items for node in self.segments()]
        out: list[Item] = []
        for chunk in reversed(chunks):
            out.extend(chunk)
        return out

    def __repr__(self) -> str:
        return f"Conversation(length={self.length}, tokens={self.tokens})"


_EMPTY = Conversation(
    parent=None,
    items=(),
    item_keys=(),
    item_tokens=(),
    length=0,
    tokens=0,
    nbytes=0,
    tool_results=0,
    answers_since_result=0,
)
