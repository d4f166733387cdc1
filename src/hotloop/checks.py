"""Type checks on the numbers users pass to hotloop's constructors.

A setting of the wrong type (``Cache(ttl="5")``, ``Speculate(max_in_flight=2.5)``,
``HedgeSettings(delay="1")``, ``True`` for a count) is refused when the object is made, with a
``TypeError`` that names the setting, instead of failing later, inside a run or a turn, with an
error about operands. Ranges are each constructor's own check (a ``ValueError``).
"""

from __future__ import annotations

import numbers

__all__ = ["is_number", "number"]


def is_number(value: object, *, integer: bool = False) -> bool:
    """Whether ``value`` is a real number (``integer``: a whole one); a ``bool`` is neither."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral if integer else numbers.Real)


def number(name: str, value: object, *, integer: bool = False, optional: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a number (``integer``: an int; ``optional``: or
    None)."""
    if (optional and value is None) or is_number(value, integer=integer):
        return
    kind = "an integer" if integer else "a number"
    raise TypeError(f"{name} must be {kind}{' or None' if optional else ''}, not {value!r}")
