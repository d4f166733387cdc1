"""A GBNF grammar that keeps the model's tool calls valid for the offered tools (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from hotloop.backends.llamacpp.template import CallMarkers, plain_json
from hotloop.protocol.requests import ToolDef
from hotloop.wire import codec

# -- tool-call grammar ---------------------------------------------------------------------------

_GBNF_BASE: Final = r"""space ::= | " " | "\n"{1,2} [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" space
integral-part ::= [0] | [1-9] [0-9]{0,15}
decimal-part ::= [0-9]{1,16}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space
integer ::= ("-"? integral-part) space
boolean ::= ("true" | "false") space
null ::= "null" space
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
array ::= "[" space ( value ("," space value)* )? "]" space
"""
#: The rule names the base grammar defines (a schema's rules never take them).
_RESERVED: Final = frozenset(line.split(" ::= ")[0] for line in _GBNF_BASE.splitlines()) | {"root"}
_PRIMITIVES: Final = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
    "object": "object",
    "array": "array",
}


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _json_literal(value: Any) -> str:
    return _gbnf_literal(codec.dumps(value).decode())


class _GrammarBuilder:
    """JSON schema to GBNF for the subset tool parameters use: objects with properties
    (required ones in order, then any of the optional ones in order), arrays, strings,
    numbers, booleans, null, ``enum``, ``const``, ``anyOf``/``oneOf`` and type lists.
    Anything else accepts any JSON value."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}

    def rule(self, name: str, body: str) -> str:
        base = "".join(c if c.isalnum() else "-" for c in name).strip("-") or "r"
        candidate, n = base, 1
        while candidate in self.rules or candidate in _RESERVED:
            n += 1
            candidate = f"{base}-{n}"
        self.rules[candidate] = body
        return candidate

    def schema(self, schema: Any, name: str) -> str:
        if not isinstance(schema, Mapping) or not schema:
            return "value"
        if "const" in schema:
            return f"{_json_literal(schema['const'])} space"
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            choices = " | ".join(_json_literal(v) for v in schema["enum"])
            return self.rule(name, f"({choices}) space")
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                choices = " | ".join(
                    self.schema(option, f"{name}-{i}") for i, option in enumerate(options)
                )
                return self.rule(name, choices)
        kind = schema.get("type")
        if isinstance(kind, list) and kind:
            choices = " | ".join(self.schema({**schema, "type": k}, f"{name}-{k}") for k in kind)
            return self.rule(name, choices)
        if kind == "object" and isinstance(schema.get("properties"), Mapping):
            return self._object(schema, name)
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            item = self.schema(schema["items"], f"{name}-item")
            return self.rule(name, f'"[" space ({item} ("," space {item})*)? "]" space')
        return _PRIMITIVES.get(kind, "value") if isinstance(kind, str) else "value"

    def _object(self, schema: Mapping[str, Any], name: str) -> str:
        properties: Mapping[str, Any] = schema["properties"]
        wanted = schema.get("required")
        required_names = set(wanted) if isinstance(wanted, list) else set()
        pairs = {
            key: self.rule(
                f"{name}-{key}-kv",
                f'{_json_literal(str(key))} space ":" space {self.schema(value, f"{name}-{key}")}',
            )
            for key, value in properties.items()
        }
        required = [pairs[key] for key in properties if key in required_names]
        optional = [pairs[key] for key in properties if key not in required_names]

        def tail(start: int) -> str:
            return "".join(f' ("," space {kv})?' for kv in optional[start:])

        if required:
            body = ' "," space '.join(required) + tail(0)
        elif optional:
            choices = " | ".join(f"{kv}{tail(i + 1)}" for i, kv in enumerate(optional))
            body = f"({choices})?"
        else:
            return self.rule(name, '"{" space "}" space')
        return self.rule(name, f'"{{" space {body} "}}" space')


def tool_grammar(tools: Sequence[ToolDef], markers: CallMarkers, *, parallel: bool = True) -> str:
    """A GBNF grammar for tool calls in ``markers``' syntax: each call names one of
    ``tools`` and carries arguments valid for its JSON schema; several calls in a row when
    ``parallel``. The root starts with the opening marker, so it serves as a lazy grammar
    triggered by that marker too."""
    builder = _GrammarBuilder()
    calls = []
    for tool in tools:
        arguments = builder.schema(
            plain_json(tool.parameters) or {"type": "object"}, f"{tool.name}-args"
        )
        calls.append(
            builder.rule(
                f"{tool.name}-call",
                f'{_json_literal(tool.name)} space "," space "\\"arguments\\"" space ":" space '
                f"{arguments}",
            )
        )
    call = builder.rule(
        "tool-call",
        f'{_gbnf_literal(markers.call_open)} space "{{" space "\\"name\\"" space ":" space '
        f'({" | ".join(calls)}) "}}" space {_gbnf_literal(markers.call_close)}',
    )
    root = f"{call} (space {call})*" if parallel else call
    rules = "".join(f"{name} ::= {body}\n" for name, body in builder.rules.items())
    return f"root ::= {root}\n{rules}{_GBNF_BASE}"
