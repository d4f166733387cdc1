"""Arguments synthesized from a JSON schema, for calls the scenario does not script.

A generic model forced to call a tool (``tool_choice: {"type": "function", ...}`` or
``"required"``) must still produce arguments that validate against the tool's schema. The
values are deterministic: ``default``, ``const`` or the first ``enum`` value when the schema
gives one, otherwise a plain value of the declared type that honours simple bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["synthesize"]

_MAX_DEPTH = 8


def synthesize(schema: Mapping[str, Any], name: str = "value", depth: int = 0) -> Any:
    """A value that satisfies ``schema`` (the common subset of JSON Schema tools use)."""
    if depth > _MAX_DEPTH:
        return None
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return synthesize(options[0], name, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            key: synthesize(sub if isinstance(sub, dict) else {}, key, depth + 1)
            for key, sub in properties.items()
        }
    if kind == "array":
        items = schema.get("items")
        count = max(1, int(schema.get("minItems", 1)))
        return [synthesize(items if isinstance(items, dict) else {}, name, depth + 1)] * count
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"example {name}"
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    max_length = schema.get("maxLength")
    if isinstance(max_length, int):
        text = text[:max_length]
    return text
