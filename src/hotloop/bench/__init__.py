"""Benchmarks of agent loops on the embedded model: strategies, the lower bound, reports."""

from hotloop.bench.lower_bound import LowerBound, TurnBound, lower_bound

__all__ = ["LowerBound", "TurnBound", "lower_bound"]
