"""The embedded simulated model as a gateway backend.

Model ids: ``hotloop-sim`` plays the gateway's default scenario; ``hotloop-sim:<name>`` plays
the bundled (or given) scenario ``<name>``, so one gateway can serve every scenario.
``hotloop-sim:generic`` is the generic mode, which drives any agent with the tools it offers
(3 tool turns; ``hotloop-sim:generic:<N>`` makes N): ``GET /v1/models`` lists the first, and
the gateway accepts every ``<N>`` through :meth:`SimBackend.accepts_model`, since a family of
a thousand ids has no place in a model list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hotloop.backends.base import StatelessSession
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, bundled_scenarios, load_scenario

__all__ = ["DEFAULT_MODEL", "GENERIC_MODEL", "SimBackend"]

DEFAULT_MODEL = "hotloop-sim"
#: The generic mode's model id (``GENERIC_MODEL:<N>`` for N tool turns).
GENERIC_MODEL = f"{DEFAULT_MODEL}:generic"


class SimBackend:
    """A :class:`~hotloop.backends.base.Backend` over :class:`~hotloop.sim.engine.SimEngine`.

    Its sessions are stateless: every connection shares the one engine.
    """

    def __init__(
        self,
        scenario: Scenario | str = "coding",
        profile: LatencyProfile | str = "fast",
        *,
        extra_scenarios: Mapping[str, Scenario] | None = None,
    ) -> None:
        default = load_scenario(scenario) if isinstance(scenario, str) else scenario
        scenarios: dict[str, Scenario] = {DEFAULT_MODEL: default}
        for name in bundled_scenarios():
            scenarios[f"{DEFAULT_MODEL}:{name}"] = (
                default if name == default.name else load_scenario(name)
            )
        scenarios[f"{DEFAULT_MODEL}:{default.name}"] = default
        for name, extra in (extra_scenarios or {}).items():
            scenarios[f"{DEFAULT_MODEL}:{name}"] = extra
        self.scenario = default
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.engine = SimEngine(scenarios, self.profile, generic_model=GENERIC_MODEL)

    def models(self) -> Sequence[str]:
        return [*self.engine.scenarios, GENERIC_MODEL]

    def accepts_model(self, model: str) -> bool:
        """True for every model id the engine plays, listed or not (``hotloop-sim:generic:8``)."""
        return self.engine.serves(model)

    async def start(self) -> None:
        return None

    def open_session(self) -> StatelessSession:
        # The engine is shared by every connection (one prefix cache, as one engine has),
        # so a session holds nothing of its own.
        return StatelessSession(self.engine.generate)

    async def aclose(self) -> None:
        return None
