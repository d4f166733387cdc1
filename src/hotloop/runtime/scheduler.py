"""Which tool calls of a turn may run now: the pure policy of the scheduler.

Calls arrive in the model's order, each as soon as its arguments are complete. Call *i* may
start when

* every earlier call that **conflicts** with it has finished, and
* fewer than ``max_concurrency`` calls are running.

Two calls conflict when either is exclusive (a tool that declared no effects), or one writes a
resource the other reads or writes. Reads of the same resource, and calls on different
resources, overlap. So writes keep the model's order against every access to their resource,
exclusive tools run alone, and everything else runs concurrently. :class:`Admission` holds no
tasks and does no I/O; the runner's executor asks it what to start and tells it what finished.

Resource keys are hierarchical: a key covers every key below it, ``/`` separating the levels.
``repo`` covers ``repo/src`` and ``repo/src/a.py``; ``repo/src`` (or ``repo/src/``) covers
``repo/src/a.py`` but not ``repo/srcs``. So a call that reads ``repo`` waits for a write to
``repo/src/a.py``, and one declaration serves ordering at every level.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Admission", "CallEffects", "covers", "overlap"]


@dataclass(frozen=True, slots=True)
class CallEffects:
    """The resources one call touches (expanded from its tool's effects and arguments)."""

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    exclusive: bool = False

    def conflicts_with(self, other: CallEffects) -> bool:
        if self.exclusive or other.exclusive:
            return True
        if self.writes and (
            overlap(self.writes, other.reads) or overlap(self.writes, other.writes)
        ):
            return True
        return bool(other.writes) and overlap(other.writes, self.reads)


def covers(key: str, other: str) -> bool:
    """Whether resource ``key`` is ``other`` or one of its ancestors (``repo`` ⊇ ``repo/a``;
    with a trailing slash too: ``repo/`` ⊇ ``repo/a``)."""
    return key == other or (other.startswith(key) and (other[len(key)] == "/" or key.endswith("/")))


def overlap(keys: frozenset[str], others: frozenset[str]) -> bool:
    """Whether some key of ``keys`` and some of ``others`` cover one another."""
    if not keys or not others:
        return False
    if keys & others:
        return True
    return any(covers(a, b) or covers(b, a) for a in keys for b in others)


#: A call that cannot run at all (invalid arguments, unknown tool): it conflicts with nothing.
NOTHING = CallEffects()


class Admission:
    """The admission state of one turn's calls, indexed in the model's call order."""

    def __init__(self, max_concurrency: int = 8) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self._effects: list[CallEffects] = []
        self._started: list[bool] = []
        self._finished: list[bool] = []
        self._held: set[int] = set()
        self._running = 0

    def __len__(self) -> int:
        return len(self._effects)

    @property
    def running(self) -> int:
        return self._running

    def submit(self, effects: CallEffects, *, held: bool = False) -> int:
        """Add the next call in the model's order; returns its index.

        A ``held`` call is not started until :meth:`release` (it still counts as not finished,
        so later calls that conflict with it wait for it).
        """
        self._effects.append(effects)
        self._started.append(False)
        self._finished.append(False)
        index = len(self._effects) - 1
        if held:
            self._held.add(index)
        return index

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def release(self) -> None:
        """Every held call may start (once admitted)."""
        self._held.clear()

    def ready(self) -> list[int]:
        """Calls that may start now, in order; they are marked running."""
        started: list[int] = []
        for index, effects in enumerate(self._effects):
            if self._running >= self.max_concurrency:
                break
            if self._started[index] or index in self._held:
                continue
            if all(
                self._finished[earlier] or not effects.conflicts_with(self._effects[earlier])
                for earlier in range(index)
            ):
                self._started[index] = True
                self._running += 1
                started.append(index)
        return started

    def finish(self, index: int) -> None:
        """Call ``index`` is done (with a result or an error)."""
        if not self._started[index] or self._finished[index]:
            raise ValueError(f"call {index} is not running")
        self._finished[index] = True
        self._running -= 1

    @property
    def all_finished(self) -> bool:
        return all(self._finished)
