"""Persistence for ``store: true`` responses, and the batched request log.

:class:`ResponseStore` keeps each stored response as one row: its parent id and its *segment*
(the request's new input items plus the response's output items), so storing a continuation
writes only what is new, and loading a conversation follows the parent chain with one
recursive query. SQLite runs on one dedicated worker thread, so the event loop never blocks on
disk; ``store: false`` responses never reach this module.

:class:`RequestLog` takes usage and request records off the critical path: ``record`` only
appends to a bounded queue, and a background task writes batches. When the queue is full the
record is dropped and counted (``dropped``) rather than slowing a response down.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotloop.protocol.conversation import Conversation
from hotloop.wire import codec
from hotloop.wire.items import Item, item_from_dict

__all__ = ["RequestLog", "RequestRecord", "ResponseStore", "StoredResponse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    segment BLOB NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL
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
    SELECT id, parent_id, segment, 0 FROM responses WHERE id = ?
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


class ResponseStore:
    """SQLite-backed storage of responses, driven from asyncio through one worker thread."""

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
            self._db = db
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._connect)

    async def save(
        self, response_id: str, parent_id: str | None, segment: Sequence[Item], response: bytes
    ) -> None:
        """Persist one response; returns once it is committed (before the terminal event)."""
        blob = codec.dumps([item.to_dict() for item in segment])

        def write() -> None:
            self._connect().execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (response_id, parent_id, blob, response, time.time()),
            )

        await self._run(write)
        self.writes += 1

    async def load(self, response_id: str) -> StoredResponse | None:
        """The stored conversation of ``response_id``, or ``None`` if it was never stored."""

        def read() -> list[bytes]:
            rows = self._connect().execute(_CHAIN, (response_id,)).fetchall()
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

    async def load_response(self, response_id: str) -> Any:
        """The stored response object (decoded JSON), or ``None``."""

        def read() -> bytes | None:
            row = (
                self._connect()
                .execute("SELECT response FROM responses WHERE id = ?", (response_id,))
                .fetchone()
            )
            return None if row is None else bytes(row[0])

        blob = await self._run(read)
        return None if blob is None else codec.loads(blob)

    async def write_log(self, records: Sequence[RequestRecord]) -> None:
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


class RequestLog:
    """A bounded queue of request records, written to the store in batches off-path."""

    def __init__(self, store: ResponseStore, *, flush_interval: float, max_queue: int) -> None:
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
