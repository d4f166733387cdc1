"""Arguments synthesized from a JSON schema, for calls the scenario does not script.

A generic model forced to call a tool (``tool_choice: {"type": "function", ...}`` or
``"required"``) must still produce arguments that validate against the tool's schema. The
values are deterministic: ``default``, ``const`` or the first ``enum`` value when the schema
gives one, otherwise a plain value of the declared type that honours simple bounds.

The work is bounded whatever the schema asks (a schema is a few bytes, ``minItems`` can be a
billion): at most :data:`MAX_ITEMS` items per array, :data:`MAX_STRING` characters per string,
:data:`MAX_DEPTH` levels and :data:`MAX_ARGUMENT_BYTES` of encoded arguments; past a cap the
value is cut short (it may then break a bound of the schema). A keyword with the wrong type
(``"minItems": "x"``) is an :class:`~hotloop.errors.APIError` 400 whose ``param`` is its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hotloop.errors import APIError, InvalidMessage
from hotloop.wire import codec

__all__ = ["MAX_ARGUMENT_BYTES", "MAX_DEPTH", "MAX_ITEMS", "MAX_STRING", "synthesize"]

#: Items synthesized per array at most (``minItems`` above this is cut).
MAX_ITEMS = 64
#: Characters per synthesized string at most (``minLength`` above this is cut).
MAX_STRING = 1024
#: Encoded arguments at most, in bytes (``default``/``const`` values included).
MAX_ARGUMENT_BYTES = 16 * 1024
#: Nesting levels synthesized; deeper values are ``null``.
MAX_DEPTH = 16


def synthesize(schema: Mapping[str, Any], name: str = "value", *, path: str = "parameters") -> Any:
    """A value that satisfies ``schema`` (the common subset of JSON Schema tools use), within
    the caps above; ``path`` names ``schema`` in the request, for errors."""
    return _Synthesizer().value(schema, name, path, 0)


def _invalid(path: str, expected: str) -> APIError:
    return APIError(
        f"Invalid schema: '{path}' must be {expected}.",
        code="invalid_function_parameters",
        param=path,
    )


def _count(schema: Mapping[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"{path}.{key}", "a non-negative integer")
    return value


def _number(schema: Mapping[str, Any], key: str, path: str) -> float | None:
    value = schema.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or abs(value) > 2**53
    ):
        raise _invalid(f"{path}.{key}", "a finite number")
    return value


def _size(value: Any) -> int:
    try:
        return len(codec.dumps(value))
    except InvalidMessage:
        return MAX_ARGUMENT_BYTES + 1


class _Synthesizer:
    """One synthesis: the bytes of arguments still allowed."""

    def __init__(self) -> None:
        self.remaining = MAX_ARGUMENT_BYTES

    def _take(self, value: Any) -> bool:
        """Charge ``value`` against the budget if it fits."""
        size = _size(value)
        if size > self.remaining:
            return False
        self.remaining -= size
        return True

    def value(self, schema: Mapping[str, Any], name: str, path: str, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return None
        for key in ("default", "const"):
            if key in schema and self._take(schema[key]):
                return schema[key]
        enum = schema.get("enum")
        if enum is not None and not isinstance(enum, list):
            raise _invalid(f"{path}.enum", "an array")
        if enum and self._take(enum[0]):
            return enum[0]
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = schema.get(combinator)
            if options is None:
                continue
            if not isinstance(options, list):
                raise _invalid(f"{path}.{combinator}", "an array")
            if options and isinstance(options[0], dict):
                return self.value(options[0], name, f"{path}.{combinator}[0]", depth + 1)
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if not isinstance(kind, str):
            raise _invalid(f"{path}.type", "a string or an array of strings")
        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, name, path, depth)
        if kind in ("integer", "number"):
            minimum = _number(schema, "minimum", path)
            value: Any = 1 if minimum is None else minimum
            value = math.ceil(value) if kind == "integer" else float(value)
            self.remaining -= _size(value)
            return value
        if kind == "boolean":
            self.remaining -= 4
            return True
        if kind == "null":
            self.remaining -= 4
            return None
        return self._string(schema, name, path)

    def _object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        if not isinstance(properties, dict):
            raise _invalid(f"{path}.properties", "an object")
        out: dict[str, Any] = {}
        self.remaining -= 2
        for key, sub in properties.items():
            cost = _size(key) + 2
            if cost > self.remaining:
                break  # the budget is spent: the other properties are left out
            self.remaining -= cost
            out[key] = self.value(
                sub if isinstance(sub, dict) else {}, key, f"{path}.properties.{key}", depth + 1
            )
        return out

    def _array(self, schema: Mapping[str, Any], name: str, path: str, depth: int) -> list[Any]:
        minimum = _count(schema, "minItems", path)
        _count(schema, "maxItems", path)
        items = schema.get("items")
        self.remaining -= 2
        before = self.remaining
        first = self.value(
            items if isinstance(items, dict) else {}, name, f"{path}.items", depth + 1
        )
        size = max(1, before - self.remaining) + 1
        wanted = min(MAX_ITEMS, max(1, minimum if minimum is not None else 1))
        count = 1 + max(0, min(wanted - 1, self.remaining // size))
        self.remaining -= size * (count - 1)
        return [first] * count

    def _string(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        min_length = _count(schema, "minLength", path)
        max_length = _count(schema, "maxLength", path)
        text = f"example {name}"[:MAX_STRING]
        if min_length is not None and len(text) < min_length:
            text = text + "x" * (min(min_length, MAX_STRING) - len(text))
        if max_length is not None:
            text = text[:max_length]
        cost = _size(text)
        if cost > self.remaining:
            text = text[: max(0, self.remaining - 2 - (cost - len(text) - 2))]
            cost = _size(text)  # a name outside ASCII may still cost more: the caller checks
        self.remaining -= cost
        return text
