"""Where traces go, and the :class:`Tracer` that feeds them without blocking the loop.

A :class:`Tracer` is the runner's ``trace`` hook (``Runner.run(..., trace=tracer)``). On the
event loop it only appends the finished :class:`~hotloop.runtime.RunResult` to a bounded
buffer: a lock taken for a few instructions, never I/O. A worker thread turns results into
spans (:func:`~hotloop.trace.spans.spans_from_result`) and hands each run's spans to every
sink. When the buffer is full the run is dropped and counted (:attr:`Tracer.dropped`): a slow
sink costs traces, never latency.

Sinks take one trace per :meth:`SpanSink.export` call:

* :class:`MemorySink` keeps spans in a list (tests, the demo);
* :class:`JSONLSink` appends one JSON object per span to a file, in batches, from its own
  worker thread with its own bounded buffer and ``dropped`` counter;
* :class:`hotloop.trace.otel.OTelSink` (the ``otel`` extra) exports to OpenTelemetry.

Call :meth:`Tracer.flush` or :meth:`Tracer.close` (or use it as a context manager) before
reading the sinks; both wait for the worker threads, so from async code run them in a thread
(``await asyncio.to_thread(tracer.close)``) or after the loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from hotloop.errors import HotloopError
from hotloop.runtime.events import RunResult
from hotloop.trace.spans import Span, span_from_dict, span_to_dict, spans_from_result
from hotloop.wire import codec

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "JSONLSink",
    "MemorySink",
    "SpanSink",
    "Tracer",
    "capture_content_from_env",
    "read_spans",
]

T = TypeVar("T")

#: OpenTelemetry's switch for recording GenAI message content, honoured by :class:`Tracer`.
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def capture_content_from_env() -> bool:
    """Whether :data:`CAPTURE_CONTENT_ENV` asks for content on spans.

    ``true`` does, as do ``span_only`` and ``span_and_event`` (the values of newer GenAI
    instrumentations); anything else, or nothing, does not.
    """
    value = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower()
    return value in ("true", "span_only", "span_and_event")


class SpanSink(Protocol):
    """Receives finished traces. ``export`` gets one whole trace, parents before children."""

    def export(self, spans: Sequence[Span]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything exported so far is written; ``False`` on timeout."""
        ...

    def close(self) -> None: ...


class _BatchWorker(Generic[T]):
    """A bounded buffer drained in batches by one daemon thread.

    :meth:`offer` never waits for the worker: it holds the lock only to append (the worker
    holds it only to take a batch), and what does not fit is counted in :attr:`dropped`.
    """

    def __init__(
        self, name: str, handle: Callable[[list[T]], None], max_queue: int, batch_size: int
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.dropped = 0
        self.handled = 0
        self.errors = 0
        self._handle = handle
        self._buffer: deque[T] = deque()
        self._busy = 0
        self._closed = False
        lock = threading.Lock()
        self._lock = lock
        self._ready = threading.Condition(lock)
        self._idle = threading.Condition(lock)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def offer(self, items: Sequence[T]) -> int:
        """Buffer ``items`` (as many as fit); returns how many were taken."""
        with self._lock:
            room = 0 if self._closed else self.max_queue - len(self._buffer)
            taken = len(items) if len(items) <= room else max(room, 0)
            if taken:
                self._buffer.extend(items[:taken] if taken < len(items) else items)
                self._ready.notify()
            self.dropped += len(items) - taken
            return taken

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._buffer and not self._closed:
                    self._ready.wait()
                if not self._buffer:
                    self._idle.notify_all()
                    return
                count = min(self.batch_size, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(count)]
                self._busy = count
            try:
                self._handle(batch)
            except Exception:  # a failing sink must not stop the worker: count it
                self.errors += 1
            with self._lock:
                self._busy = 0
                self.handled += count
                if not self._buffer:
                    self._idle.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: not self._buffer and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> bool:
        with self._lock:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class MemorySink:
    """Keeps every exported span in :attr:`spans`, in export order."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Span]) -> None:
        with self._lock:
            self.spans.extend(spans)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


class JSONLSink:
    """Appends spans to ``path``, one JSON object a line, written in batches by a thread.

    :meth:`export` only buffers (at most ``max_queue`` spans; the rest is counted in
    :attr:`dropped`). Each batch is written and flushed at once, so the file is readable
    while runs go on; :meth:`close` writes what is buffered and closes the file.
    """

    def __init__(
        self, path: str | Path, *, max_queue: int = 65_536, batch_size: int = 1024
    ) -> None:
        self.path = Path(path)
        self._file = self.path.open("ab")
        try:
            self._worker: _BatchWorker[Span] = _BatchWorker(
                f"hotloop-jsonl-{self.path.name}", self._write, max_queue, batch_size
            )
        except BaseException:
            self._file.close()
            raise

    @property
    def dropped(self) -> int:
        return self._worker.dropped

    @property
    def written(self) -> int:
        return self._worker.handled

    def export(self, spans: Sequence[Span]) -> None:
        self._worker.offer(spans)

    def _write(self, batch: list[Span]) -> None:
        self._file.write(b"".join(codec.dumps(span_to_dict(span)) + b"\n" for span in batch))
        self._file.flush()

    def flush(self, timeout: float | None = None) -> bool:
        return self._worker.flush(timeout)

    def close(self) -> None:
        self._worker.close()
        self._file.close()


def read_spans(path: str | Path) -> list[Span]:
    """The spans of a JSONL trace file, in file order; raises ``HotloopError`` if malformed."""
    spans: list[Span] = []
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                spans.append(span_from_dict(codec.decode_object(line)))
            except HotloopError as exc:
                raise HotloopError(f"{path}:{number}: {exc}") from exc
    return spans


class Tracer:
    """The runner's ``trace`` hook: records finished runs as traces, off the event loop.

    ``Runner.run(agent, input, client=client, trace=tracer)`` records the run under
    ``run_name``; ``trace=tracer.named("naive")`` under another name. At most ``max_queue``
    runs wait for the worker; beyond that a run is dropped and counted in :attr:`dropped`.
    Wall-clock times for sinks that want them come from one offset taken here.

    ``capture_content=True`` records prompts, completions, tool arguments and tool results on
    the spans every sink gets; ``None`` (the default) follows
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (off unless it says ``true``).
    """

    def __init__(
        self,
        sinks: Sequence[SpanSink],
        *,
        max_queue: int = 256,
        run_name: str = "run",
        capture_content: bool | None = None,
    ) -> None:
        self.sinks = tuple(sinks)
        self.run_name = run_name
        self.capture_content = (
            capture_content_from_env() if capture_content is None else capture_content
        )
        self.epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._worker: _BatchWorker[tuple[RunResult, str]] = _BatchWorker(
            "hotloop-tracer", self._export, max_queue, batch_size=16
        )

    @property
    def dropped(self) -> int:
        """Runs not recorded because the buffer was full (or the tracer closed)."""
        return self._worker.dropped

    @property
    def recorded(self) -> int:
        """Runs turned into spans and handed to the sinks."""
        return self._worker.handled

    @property
    def errors(self) -> int:
        """Batches whose conversion or export raised (the worker goes on)."""
        return self._worker.errors

    def __call__(self, result: RunResult) -> None:
        self._worker.offer(((result, self.run_name),))

    def record(self, result: RunResult, run_name: str | None = None) -> None:
        """Record ``result`` under ``run_name`` (default: the tracer's); never blocks."""
        self._worker.offer(((result, run_name or self.run_name),))

    def named(self, run_name: str) -> Callable[[RunResult], None]:
        """A hook that records runs under ``run_name``."""

        def hook(result: RunResult) -> None:
            self._worker.offer(((result, run_name),))

        return hook

    def _export(self, batch: list[tuple[RunResult, str]]) -> None:
        failed: Exception | None = None
        for result, run_name in batch:
            spans = spans_from_result(
                result,
                run_name=run_name,
                epoch_offset_ns=self.epoch_offset_ns,
                capture_content=self.capture_content,
            )
            for sink in self.sinks:
                try:
                    sink.export(spans)
                except Exception as exc:  # one failing sink must not starve the others
                    failed = exc
        if failed is not None:
            raise failed

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every recorded run reached the sinks and they wrote it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._worker.flush(timeout)
        for sink in self.sinks:
            done = sink.flush(_remaining(deadline)) and done
        return done

    def close(self) -> None:
        """Write everything recorded, stop the worker, close the sinks."""
        self._worker.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
