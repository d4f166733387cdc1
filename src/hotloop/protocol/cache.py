"""The connection-scoped cache: ``response_id → conversation snapshot``.

One :class:`ResponseCache` belongs to one WebSocket connection (its
:class:`~hotloop.protocol.server_session.ServerSession`) and is never visible to another.
It is bounded by entry count and by bytes (LRU). Each entry counts the bytes of its whole
conversation, which over-counts history shared by several entries of one chain: the bound is
conservative. The latest response of each lane is never evicted by the bounds (so they are
exceeded only by those), and the common continuation always hits.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hotloop.protocol.conversation import Conversation

__all__ = ["CachedResponse", "ResponseCache"]


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """What continuing a response needs: its full conversation (input and output items)."""

    response_id: str
    conversation: Conversation
    lane: str | None
    stored: bool


class ResponseCache:
    """An LRU of :class:`CachedResponse`, bounded by count and bytes."""

    def __init__(self, max_entries: int = 128, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._latest_by_lane: dict[str | None, str] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    def get(self, response_id: str) -> CachedResponse | None:
        """The cached response, or ``None`` on a miss."""
        entry = self._entries.get(response_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(response_id)
        return entry

    def put(self, entry: CachedResponse) -> None:
        """Cache ``entry`` as the latest response of its lane, then apply the bounds."""
        old = self._entries.pop(entry.response_id, None)
        if old is not None:
            self.nbytes -= old.conversation.nbytes
        self._entries[entry.response_id] = entry
        self.nbytes += entry.conversation.nbytes
        self._latest_by_lane[entry.lane] = entry.response_id
        self._shrink()

    def evict(self, response_id: str) -> None:
        """Drop one entry (a failed same-lane continuation evicts its parent)."""
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.nbytes -= entry.conversation.nbytes
            self.evictions += 1
            if self._latest_by_lane.get(entry.lane) == response_id:
                del self._latest_by_lane[entry.lane]

    def clear(self) -> None:
        self._entries.clear()
        self._latest_by_lane.clear()
        self.nbytes = 0

    def _shrink(self) -> None:
        protected = set(self._latest_by_lane.values())
        if len(self._entries) <= self.max_entries and self.nbytes <= self.max_bytes:
            return
        for response_id in list(self._entries):
            if len(self._entries) <= self.max_entries and self.nbytes <= self.max_bytes:
                break
            if response_id in protected:
                continue
            entry = self._entries.pop(response_id)
            self.nbytes -= entry.conversation.nbytes
            self.evictions += 1
