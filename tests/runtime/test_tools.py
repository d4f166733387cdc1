"""Typed tools, pure: schemas from hints and docstrings, validation, effects, results.

No gateway and no model here: a tool is a function plus a schema, so everything it promises
(the schema the model sees, the errors the model gets back, the resource keys the scheduler
reads) is checked directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
import pytest

from hotloop.errors import HotloopError
from hotloop.runtime import Effects, Tool, ToolArgumentsError, ToolDefinitionError, tool


class Point(pydantic.BaseModel):
    x: int
    y: int = 0


@tool(reads=["file:{path}"])
async def read_file(path: str, max_lines: int = 100) -> str:
    """Read a file of the repository.

    The whole file unless ``max_lines`` cuts it.

    Args:
        path: Path relative to the
            repository root.
        max_lines: How many lines to return at most.

    Returns:
        The text of the file.
    """
    return f"{path}:{max_lines}"


# -- schemas ------------------------------------------------------------------------------


def test_schema_from_hints_and_google_docstring() -> None:
    assert read_file.name == "read_file"
    assert read_file.description == "Read a file of the repository."
    assert read_file.parameters == {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Path relative to the repository root."},
            "max_lines": {
                "type": "integer",
                "default": 100,
                "description": "How many lines to return at most.",
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    }


def test_definition_is_a_responses_tools_entry() -> None:
    assert read_file.definition() == {
        "type": "function",
        "name": "read_file",
        "description": "Read a file of the repository.",
        "parameters": read_file.parameters,
        "strict": False,
    }


def test_name_and_description_overrides() -> None:
    @tool(name="lookup", description="Look a thing up.", pure=True)
    def find(key: str) -> str:
        """Ignored in favour of the explicit description."""
        return key

    assert find.name == "lookup"
    assert find.description == "Look a thing up."


def test_a_parameter_without_a_type_hint_is_refused_by_name() -> None:
    with pytest.raises(ToolDefinitionError, match=r"tool 'anything': parameter 'value' has no"):

        @tool
        def anything(value, flag: bool = False):  # type: ignore[no-untyped-def]
            return value


def test_no_docstring_and_an_explicit_any() -> None:
    @tool
    def anything(value: Any, flag: bool = False) -> Any:
        return value

    assert anything.description == ""
    assert anything.parameters["required"] == ["value"]
    assert anything.parameters["properties"]["flag"] == {"default": False, "type": "boolean"}
    assert anything.parse('{"value": [1, "a"]}') == {"value": [1, "a"], "flag": False}


def test_pydantic_types_in_schema() -> None:
    @tool(pure=True)
    def plot(mode: Literal["fast", "slow"], ids: list[int], origin: Point) -> str:
        """Plot points.

        Args:
            mode: How to plot.
            ids: Which series.
            origin: Where the axes cross.
        """
        return mode

    schema = plot.parameters
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["mode", "ids", "origin"]
    properties = schema["properties"]
    assert properties["mode"] == {
        "type": "string",
        "enum": ["fast", "slow"],
        "description": "How to plot.",
    }
    assert properties["ids"] == {
        "type": "array",
        "items": {"type": "integer"},
        "description": "Which series.",
    }
    # The nested model is a $ref into $defs, with its own required list; no pydantic titles.
    assert properties["origin"]["$ref"] == "#/$defs/Point"
    assert schema["$defs"]["Point"]["required"] == ["x"]
    assert schema["$defs"]["Point"]["properties"]["x"] == {"type": "integer"}
    assert "title" not in json.dumps(schema)

    args = plot.parse('{"mode": "fast", "ids": [1, 2], "origin": {"x": 3}}')
    assert args["mode"] == "fast"
    assert args["ids"] == [1, 2]
    assert args["origin"] == Point(x=3, y=0)


def test_docstring_sections_after_args_are_not_arguments() -> None:
    @tool(pure=True)
    def f(a: int) -> int:
        """Do f.

        Args:
            a (int): The a.

        Raises:
            ValueError: never.
        """
        return a

    assert f.parameters["properties"]["a"]["description"] == "The a."
    assert "ValueError" not in f.parameters["properties"]


# -- definition errors --------------------------------------------------------------------


def test_star_args_are_a_definition_error() -> None:
    with pytest.raises(ToolDefinitionError, match=r"\*args"):

        @tool
        def f(*values: int) -> int:
            return sum(values)

    with pytest.raises(ToolDefinitionError, match=r"\*\*kwargs"):

        @tool
        def g(**options: int) -> int:
            return len(options)


def test_template_naming_an_unknown_argument_is_a_definition_error() -> None:
    with pytest.raises(ToolDefinitionError, match=r"'file:\{name\}'.*unknown argument 'name'"):

        @tool(writes=["file:{name}"])
        def write(path: str) -> str:
            return path


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"reads": "file:{path}"}, r"reads= takes a list of resource keys, not one string"),
        ({"writes": "file"}, r"writes= takes a list of resource keys, not one string"),
        ({"reads": [""]}, r"a resource is a non-empty key template"),
        ({"writes": [3]}, r"a resource is a non-empty key template .* not 3"),
        ({"reads": ["file:{path"]}, r"'file:\{path' is not a valid template"),
        ({"reads": ["file:{}"]}, r"placeholder with no argument name"),
        ({"reads": ["file:{0}"]}, r"unknown argument '0'"),
    ],
)
def test_resource_declarations_are_checked_when_the_tool_is_defined(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ToolDefinitionError, match=expected):

        @tool(**options)
        def read(path: str) -> str:
            return path


def test_unresolvable_hints_are_a_definition_error() -> None:
    def f(x: NotAType) -> str:  # type: ignore[name-defined]  # noqa: F821
        return "x"

    with pytest.raises(ToolDefinitionError, match="cannot read type hints"):
        tool(f)


def test_errors_are_hotloop_errors() -> None:
    assert issubclass(ToolDefinitionError, HotloopError)
    assert issubclass(ToolArgumentsError, HotloopError)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", r"invalid arguments for read_file: \(arguments\): Invalid JSON"),
        ('{"path": 3}', r"path: Input should be a valid string"),
        ('{"path": "a", "max_lines": "many"}', r"max_lines: Input should be a valid integer"),
        ('{"max_lines": 3}', r"path: Field required"),
        ('{"path": "a", "mode": "x"}', r"mode: Extra inputs are not permitted"),
        ("[1, 2]", r"invalid arguments for read_file"),
    ],
)
def test_invalid_arguments_raise_with_a_clear_message(arguments: str, expected: str) -> None:
    with pytest.raises(ToolArgumentsError, match=expected):
        read_file.parse(arguments)


def test_valid_arguments_fill_defaults() -> None:
    assert read_file.parse('{"path": "a.py"}') == {"path": "a.py", "max_lines": 100}
    # An empty argument string means no arguments (models send "" for parameterless tools).
    with pytest.raises(ToolArgumentsError, match="path: Field required"):
        read_file.parse("")


# -- running ------------------------------------------------------------------------------


async def test_async_and_sync_functions_run() -> None:
    calls: list[str] = []

    @tool(pure=True)
    def sync_tool(x: int) -> str:
        calls.append("sync")
        return f"sync {x}"

    assert not sync_tool.is_async
    assert read_file.is_async
    assert await sync_tool.invoke(sync_tool.parse('{"x": 2}')) == "sync 2"
    assert await read_file.invoke(read_file.parse('{"path": "a"}')) == "a:100"
    assert calls == ["sync"]


async def test_sync_functions_run_off_the_event_loop() -> None:
    loop_thread: list[bool] = []

    @tool(pure=True)
    def where() -> str:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop_thread.append(False)
        else:
            loop_thread.append(True)
        return "ok"

    await where.invoke({})
    assert loop_thread == [False]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, 2]}, '{"a":[1,2]}'),
        ([1, "x"], '[1,"x"]'),
        (3, "3"),
        (None, "null"),
        (Point(x=1), '{"x":1,"y":0}'),
        ("plain", "plain"),
    ],
)
async def test_non_str_results_are_json_encoded(value: Any, expected: str) -> None:
    @tool(pure=True)
    async def give() -> Any:
        return value

    assert await give.invoke({}) == expected


# -- effects ------------------------------------------------------------------------------


def test_undeclared_tools_are_exclusive() -> None:
    @tool
    def shell(command: str) -> str:
        return command

    assert shell.effects == Effects(exclusive=True)
    assert shell.resources({"command": "ls"}) == (frozenset(), frozenset())


def test_declared_effects_are_not_exclusive() -> None:
    @tool(pure=True)
    def add(a: int, b: int) -> int:
        return a + b

    @tool(reads=[])
    def nothing() -> str:
        return ""

    assert add.effects.pure and add.effects.idempotent and not add.effects.exclusive
    assert add.resources({"a": 1, "b": 2}) == (frozenset(), frozenset())
    # Declaring an empty read set is a declaration: it touches nothing shared.
    assert not nothing.effects.exclusive


def test_templates_expand_from_validated_arguments() -> None:
    @tool(reads=["file:{src}", "config"], writes=["file:{dst}"], idempotent=True)
    def copy(src: str, dst: str) -> str:
        return dst

    args = copy.parse('{"src": "a.py", "dst": "b.py"}')
    assert copy.resources(args) == (
        frozenset({"file:a.py", "config"}),
        frozenset({"file:b.py"}),
    )
    assert copy.effects.idempotent and not copy.effects.pure


def test_callable_resource_specs() -> None:
    def files(args: Mapping[str, Any]) -> list[str]:
        return [f"file:{path}" for path in args["paths"]]

    @tool(writes=[files, "index"])
    def format_files(paths: list[str]) -> str:
        return "ok"

    args = format_files.parse('{"paths": ["a", "b"]}')
    assert format_files.resources(args) == (
        frozenset(),
        frozenset({"file:a", "file:b", "index"}),
    )

    @tool(reads=[lambda args: f"file:{args['path']}"])  # one key, not a list of them
    def show(path: str) -> str:
        return path

    assert show.resources(show.parse('{"path": "a.py"}'))[0] == frozenset({"file:a.py"})


def test_default_timeout_and_override() -> None:
    @tool(pure=True, timeout=0.5)
    def quick() -> str:
        return ""

    assert read_file.timeout == 60.0
    assert quick.timeout == 0.5


# -- Tool.from_schema ---------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "force": {"type": "boolean"},
        "tags": {"type": "array"},
        "meta": {"type": "object"},
        "note": {"type": ["string", "null"]},
    },
    "required": ["path"],
    "additionalProperties": False,
}


async def _echo(**args: Any) -> dict[str, Any]:
    return args


SCHEMA_TOOL = Tool.from_schema(
    "edit", SCHEMA, _echo, description="Edit.", effects=Effects(writes=("file:{path}",))
)


def test_from_schema_definition_and_resources() -> None:
    assert SCHEMA_TOOL.definition()["parameters"] == SCHEMA
    assert SCHEMA_TOOL.description == "Edit."
    assert SCHEMA_TOOL.resources({"path": "x"}) == (frozenset(), frozenset({"file:x"}))


def test_from_schema_accepts_valid_arguments() -> None:
    arguments = (
        '{"path": "a", "count": 2, "ratio": 1, "force": true, "tags": [], "meta": {}, "note": null}'
    )
    assert SCHEMA_TOOL.parse(arguments)["ratio"] == 1
    assert SCHEMA_TOOL.parse('{"path": "a", "ratio": 0.5}') == {"path": "a", "ratio": 0.5}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{oops", "not JSON"),
        ("[]", "expected a JSON object"),
        ("{}", "missing path"),
        ('{"path": "a", "extra": 1}', "unexpected extra"),
        ('{"path": 1}', "path must be string"),
        ('{"path": "a", "count": 1.5}', "count must be integer"),
        ('{"path": "a", "count": true}', "count must be integer"),
        ('{"path": "a", "ratio": "x"}', "ratio must be number"),
        ('{"path": "a", "force": 1}', "force must be boolean"),
        ('{"path": "a", "tags": {}}', "tags must be array"),
        ('{"path": "a", "meta": []}', "meta must be object"),
    ],
)
def test_from_schema_rejects_invalid_arguments(arguments: str, expected: str) -> None:
    with pytest.raises(ToolArgumentsError, match=f"invalid arguments for edit: {expected}"):
        SCHEMA_TOOL.parse(arguments)


async def test_from_schema_invokes_with_keywords() -> None:
    args = SCHEMA_TOOL.parse('{"path": "a", "count": 2}')
    assert json.loads(await SCHEMA_TOOL.invoke(args)) == {"path": "a", "count": 2}


def test_from_schema_allows_extra_keys_unless_forbidden() -> None:
    open_tool = Tool.from_schema(
        "open", {"type": "object", "properties": {}}, _echo, effects=Effects()
    )
    assert open_tool.parse('{"anything": 1}') == {"anything": 1}
    assert open_tool.parse("") == {}
