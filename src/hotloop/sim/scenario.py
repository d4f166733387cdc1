"""Scenarios: what the simulated model does on each turn, and the tools it uses.

A scenario is a JSON file (bundled ones live in ``hotloop/sim/scenarios/``)::

    {
      "name": "coding",
      "description": "…",
      "instructions": "You are a coding agent…",
      "task": "The test suite fails on …",        # the user message a demo starts with
      "tools": {
        "read_file": {
          "description": "Read a file of the repository.",
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                         "required": ["path"]},
          "latency_ms": 40,                        # how long executing it takes
          "output_bytes": 2400,                    # size of the result it returns
          "effects": {"reads": ["repo/{path}"]},   # or {"writes": [...]}, {"pure": true}, ...
          "cache": true                            # its results may be cached (reads only)
        },
        "grep": {
          …,
          "follows": [{"tool": "read_file", "argument": "path", "from": "paths"}]
        }
      },
      "turns": [
        {"text": "Let me look.", "calls": [{"name": "read_file", "arguments": {"path": "a.py"}},
                                            {"name": "grep", "arguments": {"pattern": "foo"},
                                             "lists": {"paths": ["a.py", "b.py"]}}]},
        {"text": "The fix is in."}
      ]
    }

Each turn holds optional ``text`` (a message before the calls, or the answer) and optional
``calls`` (several calls = parallel calls in one turn). A turn with neither is an error. The
model is on turn *i* when the conversation holds as many tool results as turns ``0..i-1`` made
calls; see :meth:`Scenario.turn_for`. Effects templates use ``{arg}`` placeholders filled from
the call's arguments; they tell the runtime's scheduler (a later layer) what may overlap.

Two declarations describe work a runtime may avoid. ``cache`` (a tool that cannot write): its
results may be kept and served again. ``follows``: the calls likely to follow one of its
results, each a :class:`FollowUp`: ``tool`` called with ``arguments`` (string values may be
``{arg}`` templates, filled from the call's own arguments), and, with ``from``, once per name
the result lists under that heading, the name given as ``argument``. What a result lists is
declared on the scripted call (``lists``: heading → names); the simulated output prints it
(see :func:`hotloop.sim.tools.tool_output`). A call repeated later lists the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hotloop.errors import HotloopError, ScenarioError
from hotloop.wire import codec

__all__ = [
    "FollowUp",
    "Scenario",
    "ScriptedCall",
    "ToolEffects",
    "ToolSpec",
    "Turn",
    "bundled_scenarios",
    "canonical_arguments",
    "load_scenario",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ToolEffects:
    """What a tool touches: resource key templates it reads and writes, or purity flags."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    pure: bool = False
    idempotent: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ToolEffects:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ScenarioError(f"{where} must be an object")
        unknown = set(data) - {"reads", "writes", "pure", "idempotent"}
        if unknown:
            raise ScenarioError(f"{where} has unknown keys: {sorted(unknown)}")
        return cls(
            reads=_str_tuple(data.get("reads", []), f"{where}.reads"),
            writes=_str_tuple(data.get("writes", []), f"{where}.writes"),
            pure=bool(data.get("pure", False)),
            idempotent=bool(data.get("idempotent", False)),
        )


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A call likely to follow a tool's result: ``tool`` with ``arguments`` (string values may
    be ``{arg}`` templates filled from the call's arguments); with ``source`` (JSON ``from``),
    one such call per name the result lists under that heading, the name as ``argument``."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    source: str | None = None
    argument: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FollowUp:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where} must be an object")
        unknown = set(data) - {"tool", "arguments", "from", "argument"}
        if unknown:
            raise ScenarioError(f"{where} has unknown keys: {sorted(unknown)}")
        tool, arguments = data.get("tool"), data.get("arguments", {})
        source, argument = data.get("from"), data.get("argument")
        if not isinstance(tool, str) or not tool:
            raise ScenarioError(f"{where}.tool must be a tool name")
        if not isinstance(arguments, dict):
            raise ScenarioError(f"{where}.arguments must be an object")
        if (source is None) != (argument is None) or not all(
            value is None or isinstance(value, str) for value in (source, argument)
        ):
            raise ScenarioError(f"{where}: 'from' and 'argument' go together, as strings")
        return cls(tool, MappingProxyType(dict(arguments)), source, argument)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool a scenario uses: its schema for the model, and how executing it behaves.

    ``cache``: its results may be cached; ``follows``: the calls likely to follow a result;
    ``listings``: what the results of its scripted calls list, by the call's canonical
    arguments (keys sorted), heading → names (filled from the turns' ``lists``).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    latency_ms: float = 0.0
    output_bytes: int = 256
    effects: ToolEffects = field(default_factory=ToolEffects)
    cache: bool = False
    follows: tuple[FollowUp, ...] = ()
    listings: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=lambda: _EMPTY)

    @property
    def writes_nothing(self) -> bool:
        """Whether its declared effects say it cannot write (pure, or reads and no writes)."""
        effects = self.effects
        return not effects.writes and (effects.pure or bool(effects.reads))

    def to_responses_tool(self) -> dict[str, Any]:
        """The tool as a Responses API ``tools`` entry."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
            "strict": False,
        }


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One function call the model makes: tool name and its (already JSON-encoded) arguments."""

    name: str
    arguments: str
    #: What its result lists (heading → names), for follow-ups to read; see :class:`FollowUp`.
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY, compare=False)


def canonical_arguments(arguments: str) -> str:
    """A call's JSON arguments with their keys sorted (how listings are keyed)."""
    try:
        return codec.canonical(codec.loads(arguments or "{}")).decode()
    except HotloopError:
        return arguments


@dataclass(frozen=True, slots=True)
class Turn:
    """What the model outputs on one turn: optional text, then zero or more calls."""

    text: str | None = None
    calls: tuple[ScriptedCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scripted rollout: the turns of the model and the tools they use."""

    name: str
    turns: tuple[Turn, ...]
    tools: Mapping[str, ToolSpec] = field(default_factory=lambda: _EMPTY)
    description: str = ""
    instructions: str = ""
    task: str = ""
    _call_offsets: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.turns:
            raise ScenarioError(f"scenario {self.name!r} has no turns")
        for index, turn in enumerate(self.turns):
            if turn.text is None and not turn.calls:
                raise ScenarioError(f"scenario {self.name!r} turn {index} has no text and no calls")
            if not turn.calls and index != len(self.turns) - 1:
                # turn_for() moves past a turn once its calls' results are in; a turn without
                # calls in the middle of the script would never be reached.
                raise ScenarioError(
                    f"scenario {self.name!r} turn {index} has no calls but is not the last turn "
                    "(a text-only turn ends the rollout; it would never be reached)"
                )
            for call in turn.calls:
                if self.tools and call.name not in self.tools:
                    raise ScenarioError(
                        f"scenario {self.name!r} turn {index} calls unknown tool {call.name!r}"
                    )
        offsets = [0]
        for turn in self.turns:
            offsets.append(offsets[-1] + len(turn.calls))
        object.__setattr__(self, "_call_offsets", tuple(offsets))

    def calls_before(self, turn: int) -> int:
        """How many calls turns ``0..turn-1`` make (the results turn *turn* waits for)."""
        return self._call_offsets[turn]

    @property
    def total_calls(self) -> int:
        return self._call_offsets[-1]

    def turn_for(self, tool_results: int) -> int | None:
        """The index of the turn the model is on, given how many tool results it has seen.

        Turn *i* starts once the results of every call of turns ``0..i-1`` are in. With a
        partial set of results the model stays on the last turn it had reached fully. ``None``
        means the script is over (the final answer was already given).
        """
        offsets = self._call_offsets
        # offsets[i] = calls made before turn i; find the largest i with offsets[i] <= results.
        lo, hi = 0, len(self.turns) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if offsets[mid] <= tool_results:
                lo = mid
            else:
                hi = mid - 1
        if tool_results > self.total_calls or (
            tool_results == self.total_calls and self.turns[-1].calls
        ):
            return None
        return lo

    def responses_tools(self) -> list[dict[str, Any]]:
        """Every tool of the scenario as Responses API ``tools`` entries."""
        return [spec.to_responses_tool() for spec in self.tools.values()]

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        """Build and validate a scenario from decoded JSON."""
        if not isinstance(data, dict):
            raise ScenarioError("a scenario must be a JSON object")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ScenarioError("scenario.name must be a non-empty string")
        raw_tools = data.get("tools", {})
        if not isinstance(raw_tools, dict):
            raise ScenarioError(f"scenario {name!r}: tools must be an object keyed by tool name")
        tools = {
            tool_name: _tool_from_dict(tool_name, spec, f"{name}.tools.{tool_name}")
            for tool_name, spec in raw_tools.items()
        }
        raw_turns = data.get("turns")
        if not isinstance(raw_turns, list):
            raise ScenarioError(f"scenario {name!r}: turns must be a list")
        turns = tuple(
            _turn_from_dict(turn, f"{name}.turns[{i}]") for i, turn in enumerate(raw_turns)
        )
        tools = _with_listings(name, tools, turns)
        return cls(
            name=name,
            turns=turns,
            tools=MappingProxyType(tools),
            description=str(data.get("description", "")),
            instructions=str(data.get("instructions", "")),
            task=str(data.get("task", "")),
        )


def _str_tuple(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ScenarioError(f"{where} must be a list of strings")
    return tuple(value)


def _tool_from_dict(name: str, data: Any, where: str) -> ToolSpec:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where} must be an object")
    parameters = data.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ScenarioError(f"{where}.parameters must be a JSON schema object")
    latency = data.get("latency_ms", 0)
    size = data.get("output_bytes", 256)
    if not isinstance(latency, (int, float)) or latency < 0:
        raise ScenarioError(f"{where}.latency_ms must be a non-negative number")
    if not isinstance(size, int) or size < 0:
        raise ScenarioError(f"{where}.output_bytes must be a non-negative integer")
    effects = ToolEffects.from_dict(data.get("effects"), f"{where}.effects")
    cache = data.get("cache", False)
    if not isinstance(cache, bool):
        raise ScenarioError(f"{where}.cache must be true or false")
    raw_follows = data.get("follows", [])
    if not isinstance(raw_follows, list):
        raise ScenarioError(f"{where}.follows must be a list")
    spec = ToolSpec(
        name=name,
        description=str(data.get("description", "")),
        parameters=parameters,
        latency_ms=float(latency),
        output_bytes=size,
        effects=effects,
        cache=cache,
        follows=tuple(
            FollowUp.from_dict(entry, f"{where}.follows[{i}]")
            for i, entry in enumerate(raw_follows)
        ),
    )
    if cache and not spec.writes_nothing:
        raise ScenarioError(
            f"{where}.cache: only a tool that cannot write may be cached "
            "(declare reads and no writes, or pure)"
        )
    return spec


def _with_listings(
    scenario: str, tools: dict[str, ToolSpec], turns: tuple[Turn, ...]
) -> dict[str, ToolSpec]:
    """``tools`` with what their scripted calls list (a repeated call lists the same)."""
    listings: dict[str, dict[str, Mapping[str, tuple[str, ...]]]] = {}
    for index, turn in enumerate(turns):
        for call in turn.calls:
            if not call.lists:
                continue
            if call.name not in tools:
                raise ScenarioError(f"scenario {scenario!r} turn {index}: lists on unknown tool")
            key = canonical_arguments(call.arguments)
            known = listings.setdefault(call.name, {}).setdefault(key, call.lists)
            if dict(known) != dict(call.lists):
                raise ScenarioError(
                    f"scenario {scenario!r} turn {index}: {call.name} repeats a call with "
                    "different lists (a repeated call lists the same names)"
                )
    for tool, found in listings.items():
        tools[tool] = replace(tools[tool], listings=MappingProxyType(found))
    for spec in tools.values():
        for follow in spec.follows:
            if follow.tool not in tools:
                raise ScenarioError(
                    f"scenario {scenario!r}: {spec.name} follows unknown tool {follow.tool!r}"
                )
    return tools


def _turn_from_dict(data: Any, where: str) -> Turn:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where} must be an object")
    text = data.get("text")
    if text is not None and not isinstance(text, str):
        raise ScenarioError(f"{where}.text must be a string")
    raw_calls = data.get("calls", [])
    if not isinstance(raw_calls, list):
        raise ScenarioError(f"{where}.calls must be a list")
    calls = []
    for i, call in enumerate(raw_calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ScenarioError(f"{where}.calls[{i}] needs a string 'name'")
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ScenarioError(f"{where}.calls[{i}].arguments must be an object")
        lists = call.get("lists", {})
        if not isinstance(lists, dict) or not all(
            isinstance(names, list) and all(isinstance(n, str) for n in names)
            for names in lists.values()
        ):
            raise ScenarioError(f"{where}.calls[{i}].lists must map headings to lists of strings")
        calls.append(
            ScriptedCall(
                name=call["name"],
                arguments=codec.dumps(arguments).decode(),
                lists=MappingProxyType({key: tuple(names) for key, names in lists.items()}),
            )
        )
    return Turn(text=text, calls=tuple(calls))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a bundled scenario by name (``"coding"``) or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario file {path}: {exc}") from exc
    else:
        resource = resources.files("hotloop.sim").joinpath("scenarios", f"{name_or_path}.json")
        if not resource.is_file():
            known = ", ".join(sorted(bundled_scenarios())) or "none"
            raise ScenarioError(f"unknown scenario {name_or_path!r}; bundled: {known}")
        raw = resource.read_bytes()
    try:
        return Scenario.from_dict(codec.loads(raw))
    except HotloopError as exc:
        if isinstance(exc, ScenarioError):
            raise
        raise ScenarioError(f"scenario {name_or_path!s} is not valid JSON: {exc}") from exc


def bundled_scenarios() -> Sequence[str]:
    """Names of the scenarios shipped with hotloop."""
    folder = resources.files("hotloop.sim").joinpath("scenarios")
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )
