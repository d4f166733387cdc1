"""The embedded simulated model: scenarios, the latency model and the engine."""

from hotloop.sim.engine import PlannedItem, PrefixCache, SimEngine
from hotloop.sim.latency import PROFILES, LatencyProfile, estimate_tokens, get_profile
from hotloop.sim.scenario import (
    Scenario,
    ScriptedCall,
    ToolEffects,
    ToolSpec,
    Turn,
    bundled_scenarios,
    load_scenario,
)
from hotloop.sim.tools import run_tool, tool_output

__all__ = [
    "PROFILES",
    "LatencyProfile",
    "PlannedItem",
    "PrefixCache",
    "Scenario",
    "ScriptedCall",
    "SimEngine",
    "ToolEffects",
    "ToolSpec",
    "Turn",
    "bundled_scenarios",
    "estimate_tokens",
    "get_profile",
    "load_scenario",
    "run_tool",
    "tool_output",
]
