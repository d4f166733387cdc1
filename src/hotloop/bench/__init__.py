"""Benchmarks of agent loops on the embedded model: strategies, the lower bound, reports."""

from hotloop.bench.lower_bound import LowerBound, Room, TurnBound, lower_bound, room

__all__ = ["LowerBound", "Room", "TurnBound", "lower_bound", "room"]
