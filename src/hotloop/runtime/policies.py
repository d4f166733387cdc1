"""Policies around a model call: what each attempt of a turn sends, and what a failure becomes.

The runner sends each turn in attempts (the first, then re-sends after failures). A policy is
consulted at two points, and only changes the :class:`~hotloop.transport.base.ModelRequest`:

* :meth:`Policy.before_request`, before every attempt: it may send the turn to another model
  (per-step routing, a fallback that stuck);
* :meth:`Policy.after_failure`, when an attempt failed: it may ask for another attempt, to the
  same model or another one, where the runner alone would have raised.

Policies compose: ``Agent(policies=[...])`` consults them in order, and each sees the request
as the previous ones left it. Every attempt is one the runner makes anyway, so what protects a
re-sent turn protects these too: calls that started in a failed attempt are matched by name and
arguments and reused, never executed twice, and calls that may write still wait for a response
that completes. Attempts stay bounded by ``Agent.max_attempts``; the turn deadline
(``turn_timeout``) covers them all.

Hooks are plain methods, called on the event loop: they must not block or await. What a
policy must remember across the turns of one run goes in :attr:`TurnState.memo` (one dict per
run and policy); a policy object itself is shared by every run of its agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotloop.errors import HotloopError
from hotloop.transport.base import ModelRequest, TransportError

if TYPE_CHECKING:
    from hotloop.runtime.agent import Agent

__all__ = ["Fallback", "Policy", "RetryOnTimeout", "RouteTurns", "TurnState"]


@dataclass(slots=True)
class TurnState:
    """What a policy knows when it decides about one attempt of a turn.

    ``turn`` and ``attempt`` count from 1. ``failure`` is why the previous attempt failed
    (``after_failure`` only) and ``delivered`` whether it had delivered events. ``memo`` is
    this policy's own dict for this run.
    """

    agent: Agent
    turn: int
    attempt: int
    request: ModelRequest
    failure: HotloopError | None = None
    delivered: bool = False
    memo: dict[str, Any] = field(default_factory=dict)


class Policy:
    """A policy around model calls; override the hooks it needs (both default to no change)."""

    def before_request(self, state: TurnState) -> ModelRequest | None:
        """The request to send for this attempt instead of ``state.request``, or ``None``."""
        return None

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        """The request for another attempt after ``state.failure``, or ``None`` to let the
        runner decide (it re-sends only replay-safe failures)."""
        return None


def _code(failure: HotloopError | None) -> str | None:
    code = getattr(failure, "code", None)
    return code if isinstance(code, str) else None


class RetryOnTimeout(Policy):
    """Timeouts that act: a turn that missed its first event or stalled is sent again.

    The runner re-sends a turn that missed its first event by itself; a stall after events
    arrived is not replay safe, so it raises. With this policy that turn goes out again too (on
    a fresh lane or socket: the transport retires the one that stalled), and calls it had
    started are reused. ``codes`` are the :class:`~hotloop.runtime.runner.TurnTimeout` codes it
    acts on; the whole-turn deadline is never retried.
    """

    def __init__(self, codes: Collection[str] = ("first_event_timeout", "stall_timeout")) -> None:
        self.codes = frozenset(codes) - {"turn_timeout"}

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        if isinstance(state.failure, TransportError) and _code(state.failure) in self.codes:
            return state.request
        return None


class Fallback(Policy):
    """Model A, then B (then C ...): a turn that fails on one model goes to the next.

    ``models`` are the fallbacks in order, after the agent's own model. Any failure of an
    attempt counts (a refused or failed request, a timeout, a lost connection, an error event),
    or only those whose ``code`` is in ``codes``. The fallback attempt sends the whole history
    (the next model continues no response of the failed one); once a run has fallen back it
    stays on that model (``sticky``), continuing incrementally from the fallback's own
    responses; with ``sticky=False`` each turn tries the agent's model first again.
    """

    def __init__(
        self, *models: str, codes: Collection[str] | None = None, sticky: bool = True
    ) -> None:
        if not models:
            raise ValueError("Fallback needs at least one model to fall back to")
        self.models = models
        self.codes = frozenset(codes) if codes is not None else None
        self.sticky = sticky

    def before_request(self, state: TurnState) -> ModelRequest | None:
        model = state.memo.get("model")
        if model is None or model == state.request.model:
            return None
        return dataclasses.replace(state.request, model=model)

    def after_failure(self, state: TurnState) -> ModelRequest | None:
        if self.codes is not None and _code(state.failure) not in self.codes:
            return None
        chain = (state.agent.model, *self.models)
        current = state.request.model
        position = chain.index(current) if current in chain else 0
        if position + 1 >= len(chain):
            return None  # no model left: the failure stands
        model = chain[position + 1]
        if self.sticky:
            state.memo["model"] = model
        return dataclasses.replace(state.request, model=model, previous_response_id=None)


class RouteTurns(Policy):
    """Per-step routing: ``choose(state)`` names the model for each turn (``None``: the agent's).

    Each model keeps its own chain: a turn switched to a model that answered before in this run
    continues that model's last response (whose prompt its cache holds), sending every item
    that came after it; over a WebSocket that response must still live on the connection, or
    the whole history goes. A model's first turn continues the run's last response. The step
    record's ``request_bytes``, ``incremental`` and ``usage`` show what a switch cost.
    ``state.turn`` and ``state.request`` (its history, and which items are new) are what a
    choice usually rests on.
    """

    def __init__(self, choose: Callable[[TurnState], str | None]) -> None:
        self.choose = choose

    def before_request(self, state: TurnState) -> ModelRequest | None:
        if state.attempt > 1:
            return None  # a re-send keeps the model its attempt chose (or a fallback's)
        model = self.choose(state)
        if model is None or model == state.request.model:
            return None
        return dataclasses.replace(state.request, model=model)
