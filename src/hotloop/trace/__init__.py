"""Traces of runs: timelines (waterfalls), spans and their sinks."""

from hotloop.trace.timeline import (
    PHASES,
    Bar,
    phase_totals,
    timeline_from_result,
    timeline_from_steps,
)

__all__ = ["PHASES", "Bar", "phase_totals", "timeline_from_result", "timeline_from_steps"]
