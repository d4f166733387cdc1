"""Structured output: the final answer as a typed value instead of text.

``Agent(output_type=T)`` asks the model for JSON that follows ``T``'s schema (Responses
``text.format``, which the Chat transport sends as ``response_format``) and validates the final
answer into ``T`` with pydantic. ``T`` is a pydantic model, a dataclass, a ``TypedDict`` or any
type pydantic can validate (``int``, ``list[str]``, ``Literal[...]``, ...). A schema whose root
is not an object (a primitive, a list) is wrapped in ``{"result": ...}`` on the wire, because
providers require an object at the root, and unwrapped on the way back.

The schema is sent with ``strict: true`` when it qualifies for the providers' strict mode (every
object closed with ``additionalProperties: false`` and every property required), else
``strict: false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from hotloop.errors import HotloopError

__all__ = ["OutputSpec", "OutputValidationError"]


class OutputValidationError(HotloopError):
    """The final answer did not validate into the agent's ``output_type``, after every retry.

    ``text`` is the last answer; ``errors`` says what was wrong with it.
    """

    def __init__(self, message: str, *, text: str, errors: str) -> None:
        super().__init__(message)
        self.text = text
        self.errors = errors


class OutputSpec:
    """What an ``output_type`` asks of the model, and how its answer is read back."""

    __slots__ = ("_adapter", "format", "name", "type", "wrapped")

    def __init__(self, output_type: Any) -> None:
        self.type = output_type
        try:
            self._adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(output_type)
            schema = self._adapter.json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as exc:
            raise HotloopError(
                f"output_type {output_type!r} cannot be described as JSON (use a pydantic "
                f"model, a dataclass, a TypedDict or a JSON-like type): {exc}"
            ) from exc
        self.name = _name(output_type)
        self.wrapped = schema.get("type") != "object"
        if self.wrapped:
            defs = schema.pop("$defs", None)
            schema = {
                "type": "object",
                "properties": {"result": schema},
                "required": ["result"],
                "additionalProperties": False,
            }
            if defs:
                schema["$defs"] = defs
        #: The ``text`` request setting that asks for this output.
        self.format: dict[str, Any] = {
            "format": {
                "type": "json_schema",
                "name": self.name,
                "schema": schema,
                "strict": _strict(schema),
            }
        }

    def parse(self, text: str) -> Any:
        """The answer as a value of the output type; raises ``pydantic.ValidationError``."""
        if self.wrapped:
            envelope = pydantic.TypeAdapter(dict[str, Any]).validate_json(text)
            if "result" not in envelope:
                return self._adapter.validate_json(text)  # the bare value, tolerated
            return self._adapter.validate_python(envelope["result"])
        return self._adapter.validate_json(text)


def problems(error: pydantic.ValidationError) -> str:
    """A validation error in a line the model can act on."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '(answer)'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )


def _name(output_type: Any) -> str:
    raw = getattr(output_type, "__name__", None) or "output"
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(raw))
    return name[:64] or "output"


def _strict(schema: Any) -> bool:
    """Whether ``schema`` qualifies for strict mode: closed objects, all properties required."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "object" or "properties" in schema:
            properties = schema.get("properties") or {}
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required") or ()) != set(properties):
                return False
        return all(_strict(value) for value in schema.values())
    if isinstance(schema, list):
        return all(_strict(value) for value in schema)
    return True
