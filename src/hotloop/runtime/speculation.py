"""Speculative prefetch: run the reads the model is likely to ask for next, before it asks.

Turned on with ``Agent(policies=[Speculate()])``. While the model generates its next turn (and
while other tools run), the executor starts the calls it predicts; when the model then makes
one of them (same tool, same canonical arguments), the call takes the result, or joins the
execution still running, instead of starting from zero.

Predictions come from two sources:

* **declared follow-ups**: a tool says how its result maps to the calls likely to follow,
  ``@tool(..., follows=lambda args, output: [("read_file", {"path": p}) for p in ...])`` —
  a ``grep`` names the files a ``read_file`` will open;
* **what was seen**: a transition model over this client's calls, learned online across its
  runs: after a call (tool and canonical arguments), the calls that came next the last times it
  was made are predicted again (an agent that re-reads the same files after the same listing).

What holds:

* **Only reads are speculated.** A tool may be speculated if it is ``pure``, or declares reads
  and no writes; never a write, never a tool that declared no effects (it may touch anything,
  ``idempotent`` or not), never a tool that takes a ``RunContext`` or needs approval.
* **Lossless.** A speculated result is kept under the same rules as the tool-result cache
  (:mod:`hotloop.runtime.cache`): a write admitted after the speculation started, overlapping
  what it read, drops it (also while it is still running), so the model only ever gets what
  the call would have returned run at its own time. A speculated result serves one call, once.
* **Fresh.** What changes outside the run limits a result's age: a tool with no cache is
  prefetched for the model turn generated next, and only that turn's calls may take it; a
  cached tool's result serves while its ``ttl`` allows; a ``pure`` tool's does not age.
* **A budget.** At most ``max_in_flight`` speculative executions at once, and speculation stops
  while unused speculations exceed ``max_waste`` of the calls really executed (0.25: at most
  25% extra executions); it resumes as predictions are used.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict, deque

from hotloop.checks import number
from hotloop.errors import HotloopError
from hotloop.runtime.policies import Policy
from hotloop.wire import codec

__all__ = ["FollowUps", "Speculate", "Transitions"]

from hotloop.runtime.tools import FollowUps


class Speculate(Policy):
    """Speculative prefetch (see :mod:`hotloop.runtime.speculation`); a policy with no hooks
    around model calls: the runner hands it to the tool executor.

    ``follow_ups``: use the tools' declared follow-ups; ``learn``: use (and feed) the client's
    transition model, predicting up to ``per_call`` calls after each call; ``max_in_flight``
    and ``max_waste`` are the budget.
    """

    def __init__(
        self,
        *,
        follow_ups: bool = True,
        learn: bool = True,
        per_call: int = 4,
        max_in_flight: int = 4,
        max_waste: float = 0.25,
    ) -> None:
        number("per_call", per_call, integer=True)
        number("max_in_flight", max_in_flight, integer=True)
        number("max_waste", max_waste)
        if not (max_in_flight >= 1 and per_call >= 1 and max_waste >= 0):
            raise ValueError("max_in_flight and per_call must be >= 1, max_waste >= 0")
        self.follow_ups = follow_ups
        self.learn = learn
        self.per_call = per_call
        self.max_in_flight = max_in_flight
        self.max_waste = max_waste


class Transitions:
    """Which calls followed which in a client's runs: call key → the keys seen next, most
    recent first (at most ``fanout`` each, ``max_keys`` keys in all)."""

    def __init__(self, fanout: int = 4, max_keys: int = 10_000) -> None:
        self.fanout = fanout
        self.max_keys = max_keys
        self._next: OrderedDict[str, deque[tuple[str, str]]] = OrderedDict()

    def saw(self, previous: str, call: tuple[str, str]) -> None:
        """``call`` (tool name, canonical arguments) came right after the call ``previous``."""
        followers = self._next.get(previous)
        if followers is None:
            followers = self._next[previous] = deque(maxlen=self.fanout)
            if len(self._next) > self.max_keys:
                self._next.popitem(last=False)
        else:
            self._next.move_to_end(previous)
        if call in followers:
            followers.remove(call)
        followers.appendleft(call)

    def after(self, key: str) -> tuple[tuple[str, str], ...]:
        """The calls seen after the call ``key`` (see :func:`transition_key`), latest first."""
        return tuple(self._next.get(key, ()))

    def as_dict(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Everything learned: call key → the calls seen next, latest first."""
        return {key: tuple(followers) for key, followers in self._next.items()}


def transition_key(name: str, arguments: str) -> str:
    """A call's key in the transition model: the tool's name and its JSON arguments, keys
    sorted (arguments that are not JSON as given)."""
    try:
        return f"{name}\0{codec.canonical(codec.loads(arguments or '{}')).decode()}"
    except HotloopError:
        return f"{name}\0{arguments}"


_CLIENTS: weakref.WeakKeyDictionary[object, Transitions] = weakref.WeakKeyDictionary()


def transitions_of(client: object) -> Transitions:
    """The transition model of ``client`` (one per client object, kept while it lives)."""
    try:
        found = _CLIENTS.get(client)
        if found is None:
            found = _CLIENTS[client] = Transitions()
        return found
    except TypeError:  # a client that cannot be weakly referenced: nothing carries over
        return Transitions()
