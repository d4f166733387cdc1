"""Persistence for ``store: true`` responses, and the batched request log.

:class:`Store` is what the gateway needs from storage, and nothing more: save one response
(its parent id and its *segment*: the request's new input items plus the response's output
items), load a response's whole conversation, load the response object, and write batches of
usage records. Every method is a coroutine, so a store shared by several gateway replicas
(over the network) fits the same protocol. Two implementations:

* :class:`SQLiteStore` keeps each response as one row, so storing a continuation writes only
  what is new and loading follows the parent chain with one recursive query. SQLite runs on
  one dedicated worker thread, so the event loop never blocks on disk. A file persists across
  restarts; without one it is an in-memory database.
* :class:`MemoryStore` keeps everything in this process, bounded by a response count and by
  bytes (oldest first out), for tests and single-process gateways. Each response keeps its
  conversation snapshot, which shares its history with its parent's, so a load costs nothing.

``store: false`` responses never reach this module.

Every response belongs to a *tenant* (``""`` when the gateway has no API keys): it is saved
with the tenant of the request that created it, and a load for any other tenant finds
nothing, exactly as for an id that was never stored.

:class:`RequestLog` takes usage and request records off the critical path: ``record`` only
appends to a bounded queue, and a background task writes batches. When the queue is full the
record is dropped and counted (``dropped``) rather than slowing a response down.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hotloop.errors import HotloopError
from hotloop.protocol.conversation import Conversation
from hotloop.wire import codec
from hotloop.wire.items import Item, item_from_dict

__all__ = [
    "MemoryStore",
    "RequestLog",
    "RequestRecord",
    "SQLiteStore",
    "Store",
    "StoredResponse",
    "open_store",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    segment BLOB NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    tenant TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS request_log (
    response_id TEXT,
    transport TEXT,
    model TEXT,
    status TEXT,
    input_tokens INTEGER,
    cached_tokens INTEGER,
    output_tokens INTEGER,
    duration_ms REAL,
    created_at REAL
);
"""

_CHAIN = """
WITH RECURSIVE chain(id, parent_id, segment, depth) AS (
    SELECT id, parent_id, segment, 0 FROM responses WHERE id = ? AND tenant = ?
    UNION ALL
    SELECT r.id, r.parent_id, r.segment, chain.depth + 1
    FROM responses r JOIN chain ON r.id = chain.parent_id
)
SELECT segment FROM chain ORDER BY depth DESC
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored response's conversation (input and output items, whole chain)."""

    response_id: str
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One line of the request log."""

    response_id: str
    transport: str
    model: str
    status: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    duration_ms: float


class Store(Protocol):
    """Where ``store: true`` responses and the request log live.

    The gateway opens the store it is given at start-up and closes it at shutdown.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def save(
        self,
        response_id: str,
        parent_id: str | None,
        segment: Sequence[Item],
        response: bytes,
        *,
        tenant: str = "",
    ) -> None:
        """Persist one response of ``tenant``: ``segment`` continues the conversation of
        ``parent_id`` (``None``: it stands alone), ``response`` is the response object as JSON.
        Returns once a :meth:`load` from any gateway sharing the store would find it."""
        ...

    async def load(self, response_id: str, *, tenant: str = "") -> StoredResponse | None:
        """The whole conversation (input and output items) up to and including a response;
        ``None`` when it was never stored or belongs to another tenant."""
        ...

    async def load_response(self, response_id: str, *, tenant: str = "") -> bytes | None:
        """The response object as saved (JSON), for ``GET /v1/responses/{id}``; ``None``
        when it was never stored or belongs to another tenant."""
        ...

    async def write_log(self, records: Sequence[RequestRecord]) -> None:
        """Record a batch of the request log (usage per response)."""
        ...


class SQLiteStore:
    """A :class:`Store` in SQLite, driven from asyncio through one worker thread.

    ``path=None`` is an in-memory database that lives as long as the store.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotloop-store")
        self._db: sqlite3.Connection | None = None
        self.writes = 0
        self.reads = 0

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            target = str(self.path) if self.path is not None else ":memory:"
            db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            # A file written before responses had a tenant gains the column (rows: tenant "").
            columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
            if "tenant" not in columns:
                db.execute("ALTER TABLE responses ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
            self._db = db
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Open (or create) the database: a file that cannot be opened is a ``HotloopError``
        naming it, at start-up rather than at the first stored response."""
        try:
            await self._run(self._connect)
        except sqlite3.Error as exc:
            raise HotloopError(f"cannot open the store {self.path}: {exc}") from exc

    async def save(
        self,
        response_id: str,
        parent_id: str | None,
        segment: Sequence[Item],
        response: bytes,
        *,
        tenant: str = "",
    ) -> None:
        """Persist one response; returns once it is committed (before the terminal event)."""
        blob = codec.dumps([item.to_dict() for item in segment])

        def write() -> None:
            self._connect().execute(
                "INSERT OR REPLACE INTO responses"
                " (id, parent_id, segment, response, created_at, tenant)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, parent_id, blob, response, time.time(), tenant),
            )

        await self._run(write)
        self.writes += 1

    async def load(self, response_id: str, *, tenant: str = "") -> StoredResponse | None:
        """The stored conversation of ``response_id``, or ``None`` if ``tenant`` never stored it."""

        def read() -> list[bytes]:
            rows = self._connect().execute(_CHAIN, (response_id, tenant)).fetchall()
            return [row[0] for row in rows]

        segments: list[bytes] = await self._run(read)
        self.reads += 1
        if not segments:
            return None
        conversation = Conversation.start()
        for blob in segments:
            raw = codec.loads(blob)
            conversation = conversation.extend([item_from_dict(entry, "stored") for entry in raw])
        return StoredResponse(response_id=response_id, conversation=conversation)

    async def load_response(self, response_id: str, *, tenant: str = "") -> bytes | None:
        """The stored response object (JSON), or ``None``."""

        def read() -> bytes | None:
            row = (
                self._connect()
                .execute(
                    "SELECT response FROM responses WHERE id = ? AND tenant = ?",
                    (response_id, tenant),
                )
                .fetchone()
            )
            return None if row is None else bytes(row[0])

        blob: bytes | None = await self._run(read)
        return blob

    async def write_log(self, records: Sequence[RequestRecord]) -> None:
        """Insert a batch of request records in one statement."""
        now = time.time()
        rows = [
            (
                r.response_id,
                r.transport,
                r.model,
                r.status,
                r.input_tokens,
                r.cached_tokens,
                r.output_tokens,
                r.duration_ms,
                now,
            )
            for r in records
        ]

        def write() -> None:
            self._connect().executemany(
                "INSERT INTO request_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )

        await self._run(write)

    async def count_log(self) -> int:
        """How many request records are stored."""

        def read() -> int:
            return int(self._connect().execute("SELECT COUNT(*) FROM request_log").fetchone()[0])

        result: int = await self._run(read)
        return result

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._executor.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class _Saved:
    conversation: Conversation
    response: bytes
    #: What the entry counts against the byte bound: its whole conversation and response.
    nbytes: int
    tenant: str = ""


class MemoryStore:
    """A :class:`Store` in this process's memory, bounded by responses and by bytes.

    Past either bound the least recently saved or loaded response is dropped (never the one
    just saved, which a client may continue the moment it sees it): continuing a dropped
    response is ``previous_response_not_found``, as for one never stored. Each entry counts its
    whole conversation, so history shared along a chain is over-counted and the byte bound is
    conservative: the memory held is at most ``max_bytes`` plus the newest entry. A response's
    history is fixed when it is saved: a parent that was never saved (or already dropped)
    contributes nothing. The request log keeps the latest ``max_log_records`` records.
    """

    def __init__(
        self,
        *,
        max_responses: int = 100_000,
        max_bytes: int = 1024 * 1024 * 1024,
        max_log_records: int = 100_000,
    ) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self._responses: OrderedDict[str, _Saved] = OrderedDict()
        self._log: deque[RequestRecord] = deque(maxlen=max_log_records)
        self.nbytes = 0
        self.writes = 0
        self.reads = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._responses)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._responses.clear()
        self._log.clear()
        self.nbytes = 0

    async def save(
        self,
        response_id: str,
        parent_id: str | None,
        segment: Sequence[Item],
        response: bytes,
        *,
        tenant: str = "",
    ) -> None:
        """Keep one response; its conversation extends its parent's, sharing the history."""
        parent = self._responses.get(parent_id) if parent_id is not None else None
        if parent is not None and parent.tenant != tenant:
            parent = None
        base = parent.conversation if parent is not None else Conversation.start()
        conversation = base.extend(segment)
        old = self._responses.pop(response_id, None)
        if old is not None:
            self.nbytes -= old.nbytes
        saved = _Saved(conversation, response, conversation.nbytes + len(response), tenant)
        self._responses[response_id] = saved
        self.nbytes += saved.nbytes
        self.writes += 1
        self._shrink()

    def _shrink(self) -> None:
        responses = self._responses
        while len(responses) > 1 and (
            len(responses) > self.max_responses or self.nbytes > self.max_bytes
        ):
            _, dropped = responses.popitem(last=False)
            self.nbytes -= dropped.nbytes
            self.evictions += 1

    async def load(self, response_id: str, *, tenant: str = "") -> StoredResponse | None:
        self.reads += 1
        saved = self._responses.get(response_id)
        if saved is None or saved.tenant != tenant:
            return None
        self._responses.move_to_end(response_id)
        return StoredResponse(response_id=response_id, conversation=saved.conversation)

    async def load_response(self, response_id: str, *, tenant: str = "") -> bytes | None:
        saved = self._responses.get(response_id)
        return None if saved is None or saved.tenant != tenant else saved.response

    async def write_log(self, records: Sequence[RequestRecord]) -> None:
        self._log.extend(records)

    async def count_log(self) -> int:
        """How many request records are kept."""
        return len(self._log)

    def log_records(self) -> list[RequestRecord]:
        """The request records kept, oldest first."""
        return list(self._log)


def open_store(path: Path | None) -> Store:
    """The default store: SQLite in ``path`` when there is one, else a :class:`MemoryStore`."""
    if path is not None:
        return SQLiteStore(path)
    return MemoryStore()


class RequestLog:
    """A bounded queue of request records, written to the store in batches off-path."""

    def __init__(self, store: Store, *, flush_interval: float, max_queue: int) -> None:
        self._store = store
        self._flush_interval = flush_interval
        self._queue: asyncio.Queue[RequestRecord] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hotloop-request-log")

    def record(self, record: RequestRecord) -> None:
        """Queue a record; never blocks, never raises (a full queue drops and counts)."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1

    async def flush(self) -> None:
        batch: list[RequestRecord] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if batch:
            await self._store.write_log(batch)
            self.written += len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
