"""The tool-result cache: a read served again is never read twice, and never served stale.

A tool opts in with ``@tool(reads=[...], cache=True)`` (or ``cache=Cache(ttl=..., scope=...)``).
Only tools that cannot write may: a ``pure`` tool, or one that declares ``reads`` and no
``writes``. A call's key is the tool's name and its validated arguments, canonicalised (keys
sorted, compact JSON), so ``{"a": 1, "b": 2}`` and ``{"b":2,"a":1}`` are one call.

What holds:

* **A write invalidates at once.** When a call that may write is admitted (the moment its
  arguments are complete, in the model's order), every cached result whose declared reads
  overlap its writes is dropped — hierarchically: a write to ``repo/src/a.py`` drops a cached
  read of ``repo``. A tool that declares no effects may touch anything: it drops everything.
  The write invalidates again when it finishes, for reads that other runs sharing the store
  started in between. It reaches every store a write may concern: the run's, the client's,
  the process's and every store given to ``Cache(store=...)``. So a read admitted after a
  write never gets a result from before it.
* **A result from before a write is never stored after it.** A read remembers the store's
  epoch when it starts; when it finishes, its result is stored only if no overlapping
  invalidation happened since.
* **Single flight.** Identical calls in flight at once on one event loop run once: a second
  call with the same key while the first runs waits for it and takes its result
  (``coalesced``), unless a write overlapping its reads was admitted in between; then it
  runs by itself, and the first one's result goes only to the calls that joined it before.
* **Errors are not cached**, nor results past their ``ttl``.

Scopes (where results are kept): ``"run"`` (this run only, the default), ``"client"`` (every
run on the same client transport, across runs) and ``"process"``. A store is any
:class:`ResultStore`; :class:`MemoryStore` is the default one, and ``Cache(store=...)`` takes
another (a shared store, later).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hotloop.checks import number
from hotloop.errors import InvalidMessage
from hotloop.runtime.scheduler import overlap
from hotloop.wire import codec

__all__ = ["Cache", "CacheScope", "MemoryStore", "ResultStore", "RunResults"]

CacheScope = Literal["run", "client", "process"]

#: Invalidations a store remembers, to refuse results of reads that started before them.
_LOG = 4096


@dataclass(frozen=True, slots=True)
class Cache:
    """How a tool's results are cached: for ``ttl`` seconds (None: until invalidated), kept in
    ``scope``, in ``store`` (None: an in-memory store per scope)."""

    ttl: float | None = None
    scope: CacheScope = "run"
    store: ResultStore | None = None

    def __post_init__(self) -> None:
        number("ttl", self.ttl, optional=True)
        if self.ttl is not None and not self.ttl > 0:
            raise ValueError("a cache ttl must be positive seconds (None: no expiry)")
        if self.scope not in ("run", "client", "process"):
            raise ValueError(f"cache scope must be run, client or process, not {self.scope!r}")
        if self.store is not None:
            missing = [
                name
                for name in ("get", "put", "invalidate", "epoch")
                if not hasattr(self.store, name)
            ]
            if missing:
                raise TypeError(
                    f"Cache(store=...) takes a ResultStore (get, put, invalidate, epoch); "
                    f"{self.store!r} has no {', '.join(missing)}"
                )


@dataclass(slots=True)
class _Entry:
    output: str
    reads: frozenset[str]
    expires: float | None


class ResultStore(Protocol):
    """Where cached results live. ``epoch`` counts invalidations; see :class:`MemoryStore`."""

    epoch: int

    def get(self, key: str, now: float) -> str | None: ...

    def put(
        self, key: str, output: str, reads: frozenset[str], expires: float | None, since: int
    ) -> bool: ...

    def invalidate(self, writes: frozenset[str] | None) -> int: ...

    def drop(self, key: str) -> None: ...


class MemoryStore:
    """Results in a dict, at most ``max_entries`` (least recently used out first).

    Safe to share between threads (runs on several event loops, with the ``"process"``
    scope): each operation holds the store's lock.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        number("max_entries", max_entries, integer=True)
        if max_entries < 0:
            raise ValueError("max_entries must be 0 or more")
        self.max_entries = max_entries
        self.epoch = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Recent invalidations: (epoch, writes; None: everything).
        self._log: deque[tuple[int, frozenset[str] | None]] = deque(maxlen=_LOG)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires is not None and now >= entry.expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry.output

    def put(
        self, key: str, output: str, reads: frozenset[str], expires: float | None, since: int
    ) -> bool:
        """Store a result read from epoch ``since``, unless an invalidation since then
        overlaps its reads (it may predate a write); True if stored."""
        with self._lock:
            if self._changed_since(since, reads):
                return False
            self._entries[key] = _Entry(output, reads, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def changed_since(self, since: int, reads: frozenset[str]) -> bool:
        """Whether an invalidation after epoch ``since`` may have changed what ``reads`` read."""
        with self._lock:
            return self._changed_since(since, reads)

    def _changed_since(self, since: int, reads: frozenset[str]) -> bool:
        if since == self.epoch:
            return False
        if not self._log or self._log[0][0] > since + 1:
            return True  # older than what is remembered: assume the worst
        return any(
            epoch > since and (writes is None or overlap(writes, reads))
            for epoch, writes in self._log
        )

    def invalidate(self, writes: frozenset[str] | None) -> int:
        """Drop every result whose reads overlap ``writes`` (None: all); how many."""
        with self._lock:
            self.epoch += 1
            self._log.append((self.epoch, writes))
            if writes is None:
                dropped = len(self._entries)
                self._entries.clear()
                return dropped
            stale = [key for key, entry in self._entries.items() if overlap(writes, entry.reads)]
            for key in stale:
                del self._entries[key]
            return len(stale)


@dataclass(slots=True)
class _Flight:
    """A call running now that identical calls may join."""

    future: asyncio.Future[str | None]
    reads: frozenset[str]
    epoch: int


_PROCESS = MemoryStore()
_CLIENTS: weakref.WeakKeyDictionary[object, MemoryStore] = weakref.WeakKeyDictionary()
#: The stores tools were declared with (``Cache(store=...)``), by id: shared, so every run's
#: writes invalidate them, whether or not the run looked anything up in them (held weakly
#: where they allow it).
_SHARED: weakref.WeakValueDictionary[int, ResultStore] = weakref.WeakValueDictionary()
_SHARED_STRONGLY: dict[int, ResultStore] = {}
#: Calls running now, by event loop, store and key, and by the store's epoch when each
#: started: every run on that loop sharing a store joins the latest flight still valid (a run
#: on another loop, in another thread, cannot await it). An older one, started before a write
#: to what it reads, still runs for the calls that joined it before the write.
_FLIGHTS: dict[tuple[asyncio.AbstractEventLoop, int, str], dict[int, _Flight]] = {}


def declared(cache: Cache) -> Cache:
    """A tool caches its results in ``cache``: a store of its own is shared from now on."""
    store = cache.store
    if store is not None:
        try:
            _SHARED[id(store)] = store
        except TypeError:  # no weak references to it: kept for the process's life
            _SHARED_STRONGLY[id(store)] = store
    return cache


def canonical_key(name: str, args: Any, arguments: str) -> str:
    """The cache key of a call: its tool and validated arguments, keys sorted."""
    try:
        encoded = codec.canonical(args)
    except InvalidMessage:
        encoded = codec.canonical(codec.loads(arguments or "{}"))
    return f"{name}\0{encoded.decode()}"


class RunResults:
    """One run's view of the stores its tools cache in: lookups, joins, stores, invalidations.

    The runner asks it before executing a cached tool (:meth:`lookup`), tells it what came back
    (:meth:`finish`), and tells it of every write admitted and finished (:meth:`invalidate`).
    """

    def __init__(self, client: object, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._run = MemoryStore()
        self._client = client
        #: Stores of this run's own (not a tool's: see :meth:`private`).
        self._own: list[ResultStore] = []

    def private(self) -> Cache:
        """A store of this run's own (the speculated results): its writes reach it, nobody
        else's."""
        store = MemoryStore()
        self._own.append(store)
        return Cache(store=store)

    def store(self, cache: Cache) -> ResultStore:
        if cache.store is not None:
            return cache.store
        if cache.scope == "run":
            return self._run
        if cache.scope == "process":
            return _PROCESS
        try:
            store = _CLIENTS.get(self._client)
            if store is None:
                store = _CLIENTS[self._client] = MemoryStore()
        except TypeError:  # a client that cannot be weakly referenced: this run only
            return self._run
        return store

    def _stores(self) -> Iterable[ResultStore]:
        """Every store a write of this run may concern, each once."""
        seen: dict[int, ResultStore] = {id(self._run): self._run, id(_PROCESS): _PROCESS}
        for store in (*self._own, *_SHARED.values(), *_SHARED_STRONGLY.values()):
            seen[id(store)] = store
        try:
            client = _CLIENTS.get(self._client)
        except TypeError:
            client = None
        if client is not None:
            seen[id(client)] = client
        return seen.values()

    def lookup(
        self, cache: Cache, key: str, reads: frozenset[str]
    ) -> tuple[str, str | asyncio.Future[str | None] | None, int]:
        """``("hit", output, epoch)``, ``("coalesced", future, epoch)`` (the running call's
        result: ``None`` if it failed) or ``("miss", None, epoch)``; ``epoch`` is the store's
        now, to give :meth:`finish`."""
        store = self.store(cache)
        output = store.get(key, self.clock())
        if output is not None:
            return "hit", output, store.epoch
        loop = asyncio.get_running_loop()
        flights = _FLIGHTS.get((loop, id(store), key))
        flight = _latest(flights)
        if flight is not None and not _changed(store, flight.epoch, reads):
            return "coalesced", flight.future, store.epoch
        if flights is None:
            flights = _FLIGHTS[(loop, id(store), key)] = {}
        epoch = store.epoch
        flights[epoch] = _Flight(loop.create_future(), reads, epoch)
        return "miss", None, epoch

    def peek(
        self, cache: Cache, key: str, reads: frozenset[str]
    ) -> str | asyncio.Future[str | None] | None:
        """A stored result or a valid flight to join, else ``None``; registers nothing."""
        store = self.store(cache)
        output = store.get(key, self.clock())
        if output is not None:
            return output
        flight = _latest(_FLIGHTS.get((asyncio.get_running_loop(), id(store), key)))
        if flight is not None and not _changed(store, flight.epoch, reads):
            return flight.future
        return None

    def take(
        self, cache: Cache, key: str, reads: frozenset[str]
    ) -> str | asyncio.Future[str | None] | None:
        """:meth:`peek`, and a result found is removed: it serves once (the speculation
        store's lookup)."""
        found = self.peek(cache, key, reads)
        if isinstance(found, str):
            self.store(cache).drop(key)
        return found

    def finish(
        self,
        cache: Cache,
        key: str,
        reads: frozenset[str],
        epoch: int,
        output: str | None,
        *,
        keep: bool = True,
    ) -> None:
        """The call :meth:`lookup` missed with ``epoch`` ended: ``output`` (None: it failed)
        goes to the calls that joined it, and is stored unless ``keep`` is false."""
        store = self.store(cache)
        place = (asyncio.get_running_loop(), id(store), key)
        flights = _FLIGHTS.get(place)
        flight = None if flights is None else flights.pop(epoch, None)
        if flights is not None and not flights:
            del _FLIGHTS[place]
        if flight is not None and not flight.future.done():
            flight.future.set_result(output)
        if output is not None and keep:
            expires = None if cache.ttl is None else self.clock() + cache.ttl
            store.put(key, output, reads, expires, epoch)

    def keep(
        self, cache: Cache, key: str, reads: frozenset[str], output: str, age: float, since: int
    ) -> None:
        """Store ``output``, valid at the store's epoch ``since``, as if the call had run and
        ended ``age`` seconds ago (a speculated result a call took: the next identical call
        is a hit), unless a write since then overlaps what it read."""
        expires = None if cache.ttl is None else self.clock() - age + cache.ttl
        self.store(cache).put(key, output, reads, expires, since)

    def changed(self, cache: Cache, since: int, reads: frozenset[str]) -> bool:
        """Whether a write since the store's epoch ``since`` may have changed what ``reads``
        read."""
        return _changed(self.store(cache), since, reads)

    def invalidate(self, writes: frozenset[str] | None) -> int:
        """A call that may write ``writes`` (None: anything) was admitted or finished."""
        # Every store counts it, even one that keeps nothing now: a call set to start before
        # it (see ToolExecutor.reserve) must not keep what it reads from before it.
        return sum(store.invalidate(writes) for store in self._stores())


def _latest(flights: dict[int, _Flight] | None) -> _Flight | None:
    """The flight started last: at the highest epoch (a new one starts only after a write)."""
    if not flights:
        return None
    return next(reversed(flights.values()))


def _changed(store: ResultStore, since: int, reads: frozenset[str]) -> bool:
    changed = getattr(store, "changed_since", None)
    if changed is None:
        return store.epoch != since
    return bool(changed(since, reads))
