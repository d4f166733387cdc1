"""The embedded simulated model as a gateway backend.

Model ids: ``hotloop-sim`` plays the gateway's default scenario; ``hotloop-sim:<name>`` plays
the bundled (or given) scenario ``<name>``, so one gateway can serve every scenario.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hotloop.backends.base import StatelessSession
from hotloop.sim.engine import SimEngine
from hotloop.sim.latency import LatencyProfile, get_profile
from hotloop.sim.scenario import Scenario, bundled_scenarios, load_scenario

__all__ = ["DEFAULT_MODEL", "SimBackend"]

DEFAULT_MODEL = "hotloop-sim"


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
        self.engine = SimEngine(scenarios, self.profile)

    def models(self) -> Sequence[str]:
        return list(self.engine.scenarios)

    async def start(self) -> None:
        return None

    def open_session(self) -> StatelessSession:
        # The engine is shared by every connection (one prefix cache, as one engine has),
        # so a session holds nothing of its own.
        return StatelessSession(self.engine.generate)

    async def aclose(self) -> None:
        return None
