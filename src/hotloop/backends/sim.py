"""The embedded simulated model as a gateway backend.

Model ids: ``hotloop-sim`` plays the gateway's default scenario; ``hotloop-sim:<name>`` plays
the bundled (or given) scenario ``<name>``, so one gateway can serve every scenario.
``hotloop-sim:generic`` is the generic mode, which drives any agent with the tools it offers
(3 tool turns; ``hotloop-sim:generic:<N>`` makes N): ``GET /v1/models`` lists the first, and
the gateway accepts every ``<N>`` through :meth:`SimBackend.accepts_model`, since a family of
a thousand ids has no place in a model list.

**Models.** What the model says (the scenario) and how fast it says it (the latency profile)
are independent axes. ``models={"small": "fast", "large": "frontier-tail"}`` adds models named
``hotloop-sim@small`` and ``hotloop-sim@large``, each with its own profile and every scenario:
``hotloop-sim@large:coding``, ``hotloop-sim@small:generic:5``. Plain ``hotloop-sim[:...]``
ids are the default model, with the backend's ``profile``.

**Replicas.** Each model runs ``replicas`` engines, each with its own prefix cache, its own
queue (``replica_slots`` responses at once) and its own generator of tail draws, seeded from
``seed`` and the replica's name (``hotloop-sim@large#1``), so replicas draw independently and a
run replays for one seed. A request goes to the replica of its model with the fewest
responses in flight (running or queued); ties go to the conversation's rendezvous order (the
rule :class:`~hotloop.backends.upstream.Replicas` uses for upstream URLs), so a sequential
conversation keeps to one replica and its prefix cache, while a hedge — the same request sent
again while the first is running — lands on another replica.

**Hedging at the gateway.** With ``hedging=HedgeSettings(...)`` and two replicas or more, the
gateway itself sends a turn that has produced no output after a delay to a second replica,
keeps the first to answer and cancels the other, and moves a turn that failed before any
output to another replica (:mod:`hotloop.backends.hedging`): a client gets it whatever it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from hotloop.backends.base import StatelessSession
from hotloop.backends.hedging import HedgeSettings, ReplicaHedging, hedging_for
from hotloop.backends.upstream import rendezvous_score
from hotloop.errors import APIError, ScenarioError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation, item_text
from hotloop.protocol.generation import Generation, GenerationRequest
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, bundled_scenarios, load_scenario

__all__ = ["DEFAULT_MODEL", "GENERIC_MODEL", "MAX_REPLICAS", "SimBackend", "model_id"]

DEFAULT_MODEL = "hotloop-sim"
#: The generic mode's model id (``GENERIC_MODEL:<N>`` for N tool turns).
GENERIC_MODEL = f"{DEFAULT_MODEL}:generic"
#: The most replicas a simulated model may have.
MAX_REPLICAS = 64
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def model_id(name: str | None, scenario: str | None = None) -> str:
    """The id of model ``name`` (None: the default model) playing ``scenario`` (None: the
    default scenario): ``hotloop-sim@large:coding``."""
    base = DEFAULT_MODEL if name is None else f"{DEFAULT_MODEL}@{name}"
    return base if scenario is None else f"{base}:{scenario}"


class _Model:
    """One simulated model: its profile and its replicas, with their load."""

    def __init__(self, engines: Sequence[SimEngine], hedging: HedgeSettings | None) -> None:
        self.engines = list(engines)
        #: Responses each replica is running or queueing.
        self.load = [0] * len(self.engines)
        #: The gateway's hedging across this model's replicas (None: off, or one replica).
        self.hedging = hedging_for(hedging, self.engines)

    def pick(self, context: Conversation, avoid: Collection[int] = ()) -> int:
        """The replica for a request: one this turn has not tried (``avoid``), then the
        fewest in flight, then the conversation's preference."""
        key = _conversation_key(context)
        load = self.load
        engines = self.engines
        return max(
            range(len(engines)),
            key=lambda index: (
                index not in avoid,
                -load[index],
                rendezvous_score(key, engines[index].stream),
            ),
        )

    def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        hedging = self.hedging
        if hedging is None:
            return self._on_replica(request, out, [])
        tried: list[int] = []
        return hedging.generate(lambda _, staged: self._on_replica(request, staged, tried), out)

    async def _on_replica(
        self, request: GenerationRequest, out: ResponseBuilder, tried: list[int]
    ) -> Generation:
        # Picked at the first step, which the gateway takes as soon as it has the stream:
        # no other request is placed in between, so concurrent requests see each other.
        index = self.pick(request.context, tried)
        tried.append(index)
        self.load[index] += 1
        try:
            async for events in self.engines[index].generate(request, out):
                yield events
        finally:
            self.load[index] -= 1


class SimBackend:
    """A :class:`~hotloop.backends.base.Backend` over :class:`~hotloop.sim.engine.SimEngine`.

    Its sessions are stateless: every connection shares the engines. ``models`` maps model
    names to profiles (see the module docstring); ``replicas``, ``seed`` and
    ``replica_slots`` apply to every model; ``hedging`` makes the gateway hedge and fail over
    each model's turns across its replicas (:mod:`hotloop.backends.hedging`); ``clock`` and
    ``sleep`` reach every engine, for tests on a fake clock.
    """

    def __init__(
        self,
        scenario: Scenario | str = "coding",
        profile: LatencyProfile | str = "fast",
        *,
        extra_scenarios: Mapping[str, Scenario] | None = None,
        models: Mapping[str, LatencyProfile | str] | None = None,
        replicas: int = 1,
        seed: int = 0,
        replica_slots: int | None = None,
        hedging: HedgeSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ScenarioError(f"replicas must be between 1 and {MAX_REPLICAS}")
        default = load_scenario(scenario) if isinstance(scenario, str) else scenario
        by_name: dict[str, Scenario] = {}
        for name in bundled_scenarios():
            by_name[name] = default if name == default.name else load_scenario(name)
        by_name[default.name] = default
        by_name.update(extra_scenarios or {})
        self.scenario = default
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        profiles: dict[str | None, LatencyProfile] = {None: self.profile}
        for name, model_profile in (models or {}).items():
            if not _MODEL_NAME.fullmatch(name):
                raise ScenarioError(
                    f"model name {name!r} must be 1-64 characters of [A-Za-z0-9._-], "
                    "starting with a letter or digit"
                )
            profiles[name] = (
                get_profile(model_profile) if isinstance(model_profile, str) else model_profile
            )
        #: Each model's profile, by name (None: the default model).
        self.profiles: Mapping[str | None, LatencyProfile] = profiles
        self._models: dict[str | None, _Model] = {}
        for model_name, model_profile in profiles.items():
            base = model_id(model_name)
            scenarios = {base: default}
            scenarios.update({model_id(model_name, key): value for key, value in by_name.items()})
            self._models[model_name] = _Model(
                [
                    SimEngine(
                        scenarios,
                        model_profile,
                        generic_model=model_id(model_name, "generic"),
                        seed=seed,
                        stream=f"{base}#{index}",
                        slots=replica_slots,
                        clock=clock,
                        sleep=sleep,
                    )
                    for index in range(replicas)
                ],
                hedging,
            )
        #: The default model's first replica (the only engine of a plain backend).
        self.engine = self._models[None].engines[0]
        #: Every engine of every model.
        self.engine_list = [engine for model in self._models.values() for engine in model.engines]

    def engines(self, name: str | None = None) -> Sequence[SimEngine]:
        """The replicas of model ``name`` (None: the default model)."""
        return self._models[name].engines

    def replica_hedging(self, name: str | None = None) -> ReplicaHedging | None:
        """Model ``name``'s hedging across its replicas, with its counters (None: off)."""
        return self._models[name].hedging

    def models(self) -> Sequence[str]:
        listed: list[str] = []
        for model in self._models.values():
            engine = model.engines[0]
            listed.extend(engine.scenarios)
            if engine.generic_model is not None:
                listed.append(engine.generic_model)
        return listed

    def accepts_model(self, model: str) -> bool:
        """True for every model id the engines play, listed or not (``hotloop-sim:generic:8``)."""
        found = self._model(model)
        return found is not None and found.engines[0].serves(model)

    async def start(self) -> None:
        return None

    def open_session(self) -> StatelessSession:
        # The engines are shared by every connection (one prefix cache per replica, as one
        # engine has), so a session holds nothing of its own. A single engine is called
        # directly: the plain backend pays nothing for models and replicas.
        if len(self._models) == 1 and len(self.engine_list) == 1:
            return StatelessSession(self.engine.generate)
        return StatelessSession(self._generate)

    async def aclose(self) -> None:
        return None

    def _model(self, model: str) -> _Model | None:
        if not model.startswith(f"{DEFAULT_MODEL}@"):
            return self._models[None]
        name = model[len(DEFAULT_MODEL) + 1 :].partition(":")[0]
        return self._models.get(name)

    def _generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        found = self._model(request.model)
        if found is None:
            raise APIError(
                f"The model '{request.model}' does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
        if len(found.engines) == 1:
            return found.engines[0].generate(request, out)
        return found.generate(request, out)


def _conversation_key(context: Conversation) -> int:
    """A key naming the conversation that is the same in every process: a hash of its first
    item (``Conversation.root_key`` uses Python's salted ``hash``, which differs per run)."""
    root: Conversation | None = None
    for node in context.segments():
        root = node
    if root is None:
        return 0
    first = root.items[0]
    digest = hashlib.blake2b(f"{first.type}\0{item_text(first)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)
