"""Typed records for Responses API input and output items.

Items are what a conversation is made of: messages, function calls, function call outputs,
reasoning. Each record is a frozen, slotted dataclass. Fields the record does not model are
kept in ``extra`` and written back unchanged, so an item we do not fully understand survives a
round trip (accept every item shape the clients send).

:func:`item_from_dict` is the one entry point from decoded JSON; :meth:`to_dict` goes back.
Neither touches a JSON library: :mod:`hotloop.wire.codec` does bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from hotloop.errors import InvalidMessage

__all__ = [
    "ContentPart",
    "FunctionCall",
    "FunctionCallOutput",
    "Item",
    "ItemReference",
    "Message",
    "Reasoning",
    "UnknownItem",
    "item_from_dict",
    "items_from_input",
]

JSONDict: TypeAlias = dict[str, Any]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _require_str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidMessage(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value


def _extra(data: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    if len(data) <= len(known) and all(key in known for key in data):
        return _EMPTY
    return {key: value for key, value in data.items() if key not in known}


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One part of a message's content: ``input_text``, ``output_text``, ``input_image``, ...

    ``text`` is set for the text kinds; everything else stays in ``extra``.
    """

    type: str
    text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = frozenset({"type", "text"})

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ContentPart:
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where} must be an object", param=where)
        return cls(
            type=_require_str(data, "type", where),
            text=_optional_str(data, "text", where),
            extra=_extra(data, cls._KNOWN),
        )

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": self.type}
        if self.text is not None:
            out["text"] = self.text
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Message:
    """A message from ``user``, ``assistant``, ``system`` or ``developer``.

    ``content`` is a plain string (as clients may send it) or a tuple of parts.
    """

    role: str
    content: str | tuple[ContentPart, ...]
    id: str | None = None
    status: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    type = "message"
    _KNOWN = frozenset({"type", "role", "content", "id", "status"})
    _ROLES = frozenset({"user", "assistant", "system", "developer"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Message:
        role = _require_str(data, "role", where)
        if role not in cls._ROLES:
            raise InvalidMessage(
                f"{where}.role must be one of user, assistant, system, developer; got {role!r}",
                param=f"{where}.role",
            )
        raw = data.get("content")
        content: str | tuple[ContentPart, ...]
        if isinstance(raw, str):
            content = raw
        elif isinstance(raw, list):
            content = tuple(
                ContentPart.from_dict(part, f"{where}.content[{i}]") for i, part in enumerate(raw)
            )
        else:
            raise InvalidMessage(
                f"{where}.content must be a string or a list of parts", param=f"{where}.content"
            )
        return cls(
            role=role,
            content=content,
            id=_optional_str(data, "id", where),
            status=_optional_str(data, "status", where),
            extra=_extra(data, cls._KNOWN),
        )

    @property
    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": "message"}
        if self.id is not None:
            out["id"] = self.id
        out["role"] = self.role
        if self.status is not None:
            out["status"] = self.status
        if isinstance(self.content, str):
            out["content"] = self.content
        else:
            out["content"] = [part.to_dict() for part in self.content]
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A call the model made: ``name`` with JSON-encoded ``arguments``, answered by ``call_id``."""

    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    type = "function_call"
    _KNOWN = frozenset({"type", "call_id", "name", "arguments", "id", "status"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FunctionCall:
        return cls(
            call_id=_require_str(data, "call_id", where),
            name=_require_str(data, "name", where),
            arguments=_require_str(data, "arguments", where),
            id=_optional_str(data, "id", where),
            status=_optional_str(data, "status", where),
            extra=_extra(data, cls._KNOWN),
        )

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": "function_call"}
        if self.id is not None:
            out["id"] = self.id
        out["call_id"] = self.call_id
        out["name"] = self.name
        out["arguments"] = self.arguments
        if self.status is not None:
            out["status"] = self.status
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class FunctionCallOutput:
    """The result of a function call, sent back by the client.

    ``output`` is a string, or a tuple of content parts.
    """

    call_id: str
    output: str | tuple[ContentPart, ...]
    id: str | None = None
    status: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    type = "function_call_output"
    _KNOWN = frozenset({"type", "call_id", "output", "id", "status"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FunctionCallOutput:
        raw = data.get("output")
        output: str | tuple[ContentPart, ...]
        if isinstance(raw, str):
            output = raw
        elif isinstance(raw, list):
            output = tuple(
                ContentPart.from_dict(part, f"{where}.output[{i}]") for i, part in enumerate(raw)
            )
        else:
            raise InvalidMessage(
                f"{where}.output must be a string or a list of parts", param=f"{where}.output"
            )
        return cls(
            call_id=_require_str(data, "call_id", where),
            output=output,
            id=_optional_str(data, "id", where),
            status=_optional_str(data, "status", where),
            extra=_extra(data, cls._KNOWN),
        )

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text or "" for part in self.output)

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": "function_call_output"}
        if self.id is not None:
            out["id"] = self.id
        out["call_id"] = self.call_id
        if isinstance(self.output, str):
            out["output"] = self.output
        else:
            out["output"] = [part.to_dict() for part in self.output]
        if self.status is not None:
            out["status"] = self.status
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A reasoning item; ``summary`` parts and ``encrypted_content`` stay as sent."""

    id: str | None
    summary: tuple[ContentPart, ...] = ()
    encrypted_content: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    type = "reasoning"
    _KNOWN = frozenset({"type", "id", "summary", "encrypted_content"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Reasoning:
        raw = data.get("summary", [])
        if not isinstance(raw, list):
            raise InvalidMessage(f"{where}.summary must be a list", param=f"{where}.summary")
        return cls(
            id=_optional_str(data, "id", where),
            summary=tuple(
                ContentPart.from_dict(part, f"{where}.summary[{i}]") for i, part in enumerate(raw)
            ),
            encrypted_content=_optional_str(data, "encrypted_content", where),
            extra=_extra(data, cls._KNOWN),
        )

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": "reasoning"}
        if self.id is not None:
            out["id"] = self.id
        out["summary"] = [part.to_dict() for part in self.summary]
        if self.encrypted_content is not None:
            out["encrypted_content"] = self.encrypted_content
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class ItemReference:
    """``{"type": "item_reference", "id": ...}``: an item of an earlier response, by id."""

    id: str
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    type = "item_reference"
    _KNOWN = frozenset({"type", "id"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ItemReference:
        return cls(id=_require_str(data, "id", where), extra=_extra(data, cls._KNOWN))

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"type": "item_reference", "id": self.id}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class UnknownItem:
    """An item of a type hotloop does not model; kept verbatim so it passes through."""

    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        kind = self.data.get("type")
        return kind if isinstance(kind, str) else "unknown"

    def to_dict(self) -> JSONDict:
        return dict(self.data)


Item: TypeAlias = (
    Message | FunctionCall | FunctionCallOutput | Reasoning | ItemReference | UnknownItem
)

_DECODERS: dict[str, Any] = {
    "message": Message.from_dict,
    "function_call": FunctionCall.from_dict,
    "function_call_output": FunctionCallOutput.from_dict,
    "reasoning": Reasoning.from_dict,
    "item_reference": ItemReference.from_dict,
}


def item_from_dict(data: Any, where: str = "input") -> Item:
    """Build the typed record for one decoded item.

    A missing ``type`` means ``message`` (the Agents SDK sends ``{"role", "content"}``
    with no ``type``). Unknown types become :class:`UnknownItem`. A malformed known item
    raises :class:`~hotloop.errors.InvalidMessage` naming the field.
    """
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where} must be an object", param=where)
    kind = data.get("type", "message")
    if not isinstance(kind, str):
        raise InvalidMessage(f"{where}.type must be a string", param=f"{where}.type")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return UnknownItem(data)
    item: Item = decoder(data, where)
    return item


def items_from_input(raw: Any, where: str = "input") -> tuple[Item, ...]:
    """Turn a request's ``input`` (a string or a list of items) into typed items."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (Message(role="user", content=raw),)
    if not isinstance(raw, list):
        raise InvalidMessage(f"{where} must be a string or a list of items", param=where)
    return tuple(item_from_dict(entry, f"{where}[{i}]") for i, entry in enumerate(raw))
