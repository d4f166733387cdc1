"""The ``Response`` object and its usage record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from hotloop.errors import InvalidMessage
from hotloop.wire.items import Item, JSONDict, item_from_dict

__all__ = ["ECHOED_SETTINGS", "ResponseObject", "Usage"]

#: Request fields echoed back in every response object.
ECHOED_SETTINGS = (
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "temperature",
    "top_p",
    "text",
    "truncation",
    "metadata",
    "reasoning",
    "max_output_tokens",
    "user",
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _whole_number(value: Any, param: str) -> int:
    # Garbage must raise InvalidMessage, never int()'s ValueError/TypeError/OverflowError.
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidMessage(f"{param} must be an integer", param=param)


def _object_or_none(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidMessage(f"response.{key} must be an object", param=f"response.{key}")
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting of one response."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> JSONDict:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        if not isinstance(data, dict):
            raise InvalidMessage("usage must be an object", param="usage")
        details = data.get("input_tokens_details") or {}
        out_details = data.get("output_tokens_details") or {}
        if not isinstance(details, dict) or not isinstance(out_details, dict):
            raise InvalidMessage("usage details must be objects", param="usage")
        return cls(
            input_tokens=_whole_number(data.get("input_tokens"), "usage.input_tokens"),
            cached_tokens=_whole_number(
                details.get("cached_tokens"), "usage.input_tokens_details.cached_tokens"
            ),
            output_tokens=_whole_number(data.get("output_tokens"), "usage.output_tokens"),
            reasoning_tokens=_whole_number(
                out_details.get("reasoning_tokens"), "usage.output_tokens_details.reasoning_tokens"
            ),
        )


@dataclass(frozen=True, slots=True)
class ResponseObject:
    """A Responses API ``response`` object.

    ``settings`` holds the echoed request settings (:data:`ECHOED_SETTINGS`); ``extra`` keeps
    any other field a server sent, so nothing is lost on a round trip.
    """

    id: str
    created_at: int
    model: str
    status: str
    output: tuple[Item, ...] = ()
    usage: Usage | None = None
    error: Mapping[str, Any] | None = None
    incomplete_details: Mapping[str, Any] | None = None
    previous_response_id: str | None = None
    settings: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = frozenset(
        {
            "id",
            "object",
            "created_at",
            "model",
            "status",
            "output",
            "usage",
            "error",
            "incomplete_details",
            "previous_response_id",
            *ECHOED_SETTINGS,
        }
    )

    def with_status(self, status: str, **changes: Any) -> ResponseObject:
        """A copy with another ``status`` (and any other field changed)."""
        return replace(self, status=status, **changes)

    def to_dict(self) -> JSONDict:
        out: JSONDict = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "model": self.model,
            "status": self.status,
            "output": [item.to_dict() for item in self.output],
            "usage": self.usage.to_dict() if self.usage is not None else None,
            "error": dict(self.error) if self.error is not None else None,
            "incomplete_details": (
                dict(self.incomplete_details) if self.incomplete_details is not None else None
            ),
            "previous_response_id": self.previous_response_id,
        }
        # The SDK types mark tools, tool_choice and parallel_tool_calls required.
        out["tools"] = []
        out["tool_choice"] = "auto"
        out["parallel_tool_calls"] = True
        for key in ECHOED_SETTINGS:
            if key in self.settings:
                out[key] = self.settings[key]
            elif key not in out:
                out[key] = None
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ResponseObject:
        if not isinstance(data, dict):
            raise InvalidMessage("response must be an object", param="response")
        rid = data.get("id")
        if not isinstance(rid, str):
            raise InvalidMessage("response.id must be a string", param="response.id")
        raw_output = data.get("output")
        if raw_output is None:
            raw_output = []
        elif not isinstance(raw_output, list):
            raise InvalidMessage("response.output must be a list", param="response.output")
        usage = data.get("usage")
        previous = data.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise InvalidMessage(
                "response.previous_response_id must be a string",
                param="response.previous_response_id",
            )
        return cls(
            id=rid,
            created_at=_whole_number(data.get("created_at"), "response.created_at"),
            model=str(data.get("model") or ""),
            status=str(data.get("status") or ""),
            output=tuple(
                item_from_dict(entry, f"response.output[{i}]") for i, entry in enumerate(raw_output)
            ),
            usage=Usage.from_dict(usage) if usage is not None else None,
            error=_object_or_none(data, "error"),
            incomplete_details=_object_or_none(data, "incomplete_details"),
            previous_response_id=previous,
            settings={key: data[key] for key in ECHOED_SETTINGS if key in data},
            extra={key: value for key, value in data.items() if key not in cls._KNOWN},
        )
