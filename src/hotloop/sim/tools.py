"""Executing a scenario's tools in simulation: their latency and a deterministic output.

The gateway never runs tools (clients do); the demo, the benchmarks and the runtime's tests use
these to play a scenario's tools faithfully: each call sleeps the tool's ``latency_ms`` and
returns ``output_bytes`` of text.

The text depends on the call and on the **state** the call saw. A :class:`ScenarioState` is the
simulated world of one run: it counts the writes made to each resource key. A tool's declared
effects (``reads``/``writes`` templates such as ``repo/{path}``) are filled from the call's
arguments; a write adds one to the count of each key it writes, and a read's output carries, in
its header and in its digest, the version of each key it reads: the number of writes to that key,
to a key below it or to a key above it (keys are hierarchical, ``/`` separating the levels, so
a read of ``repo`` sees every write to ``repo/src/a.py``). A read served from a cache after a
write therefore differs visibly from what executing it returns, while two runs of one scenario,
each with a state of its own, still send the model identical histories. A call that saw no
write at all returns exactly what :func:`tool_output` returns for the call alone.

A call whose scenario declares what it lists (``lists`` on the scripted call, e.g. the paths a
``grep`` matched) prints each list on a line of its own after the header, ``paths: ["a.py",
"b.py"]``; :func:`listed` reads it back and :func:`follow_ups` turns a result into the calls
its tool's ``follows`` predict, from the text alone.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from hotloop.errors import HotloopError
from hotloop.sim.scenario import ToolSpec, canonical_arguments
from hotloop.wire import codec

__all__ = [
    "ScenarioState",
    "follow_ups",
    "listed",
    "resource_keys",
    "run_tool",
    "tool_latency",
    "tool_output",
]

_FILLER = (
    "def handler(event, context):\n    total = sum(line.amount for line in event.lines)\n"
    "    return {'status': 'ok', 'total': total}\n"
)


def tool_output(spec: ToolSpec, arguments: str, versions: Mapping[str, int] | None = None) -> str:
    """The deterministic result text of calling ``spec`` with ``arguments``.

    ``versions`` are the versions of the resource keys the call saw (see
    :class:`ScenarioState`); keys at version 0 change nothing, so with no write seen the text
    depends on the call alone. The text is ``output_bytes`` long unless its header is longer.
    """
    seen = sorted((key, version) for key, version in (versions or {}).items() if version)
    state = " ".join(f"{key}@{version}" for key, version in seen)
    source = f"{spec.name}\0{arguments}" + (f"\0{state}" if state else "")
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    head = f"[{spec.name} {digest}{' ' + state if state else ''}] "
    lists = spec.listings.get(canonical_arguments(arguments)) if spec.listings else None
    if lists:
        head += "\n" + "".join(
            f"{heading}: {codec.dumps(list(names)).decode()}\n" for heading, names in lists.items()
        )
    size = max(spec.output_bytes, len(head))
    body = (_FILLER * (size // len(_FILLER) + 1))[: size - len(head)]
    return head + body


def listed(output: str, heading: str) -> list[str]:
    """The names a result lists under ``heading`` (its ``heading: [...]`` line), or none."""
    prefix = f"{heading}: ["
    for line in output.splitlines():
        if line.startswith(prefix):
            try:
                names = codec.loads(line[len(heading) + 2 :])
            except HotloopError:
                return []
            return [name for name in names if isinstance(name, str)]
    return []


def _filled(value: Any, arguments: Mapping[str, Any]) -> Any:
    """A follow-up's argument value, its ``{arg}`` templates filled (a lone ``{arg}`` keeps the
    argument's own value and type)."""
    if not isinstance(value, str) or "{" not in value:
        return value
    if value.startswith("{") and value.endswith("}") and value[1:-1] in arguments:
        return arguments[value[1:-1]]
    return _expand((value,), arguments)[0]


def follow_ups(
    spec: ToolSpec, arguments: Mapping[str, Any], output: str
) -> list[tuple[str, dict[str, Any]]]:
    """The calls ``spec``'s ``follows`` predict after a result ``output`` of a call with
    ``arguments``, in declaration order then listing order, as (tool, arguments)."""
    predicted: list[tuple[str, dict[str, Any]]] = []
    for follow in spec.follows:
        base = {key: _filled(value, arguments) for key, value in follow.arguments.items()}
        if follow.source is None or follow.argument is None:
            predicted.append((follow.tool, base))
            continue
        for name in listed(output, follow.source):
            predicted.append((follow.tool, {**base, follow.argument: name}))
    return predicted


class _Fill(dict[str, Any]):
    """Template arguments; a field the call does not give stays as written (``{path}``)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _expand(templates: Iterable[str], arguments: Mapping[str, Any]) -> tuple[str, ...]:
    keys: list[str] = []
    for template in templates:
        try:
            key = template.format_map(_Fill(arguments)) if "{" in template else template
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            key = template  # a template the arguments cannot fill names the resource as written
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def resource_keys(spec: ToolSpec, arguments: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The resource keys a call reads and writes: ``spec``'s effect templates, filled in.

    ``arguments`` is the call's JSON arguments; a template field they do not give, or arguments
    that are not a JSON object, leave the template as written.
    """
    try:
        decoded = codec.loads(arguments) if arguments else {}
    except HotloopError:
        decoded = {}
    values: Mapping[str, Any] = decoded if isinstance(decoded, dict) else {}
    return _expand(spec.effects.reads, values), _expand(spec.effects.writes, values)


def _overlap(key: str, other: str) -> bool:
    """Whether one key is the other or one of its ancestors (``repo`` and ``repo/a.py``)."""
    if key == other:
        return True
    shorter, longer = (key, other) if len(key) < len(other) else (other, key)
    return longer.startswith(shorter) and longer[len(shorter)] == "/"


class ScenarioState:
    """The simulated world one run of a scenario acts on: how often each resource was written.

    Make one per run (:func:`hotloop.testing.scenario_tools` makes one each time it is called):
    a state shared by two runs would make the second see the first one's writes. A call's
    reads are observed when it starts (:meth:`observe`) and its writes take effect when it
    finishes (:meth:`complete`), so a read that runs while an overlapping write is in flight
    sees the state before that write, as a read racing a write may in a real system.

    An ``idempotent`` tool repeating the last write made to a key (same tool, same arguments,
    and no write to a key above or below it since) leaves that key's version unchanged: doing
    it again changes nothing.
    """

    def __init__(self) -> None:
        self._writes: dict[str, int] = {}
        self._last: dict[str, tuple[str, str]] = {}

    @property
    def writes(self) -> Mapping[str, int]:
        """How many writes each written key received (only keys written at least once)."""
        return dict(self._writes)

    def version(self, key: str) -> int:
        """The writes that touched ``key``: to it, to a key below it or to a key above it."""
        return sum(count for written, count in self._writes.items() if _overlap(key, written))

    def observe(self, spec: ToolSpec, arguments: str) -> dict[str, int]:
        """The versions of the keys a call of ``spec`` with ``arguments`` reads, now."""
        reads, _ = resource_keys(spec, arguments)
        return {key: self.version(key) for key in reads}

    def complete(self, spec: ToolSpec, arguments: str, observed: Mapping[str, int]) -> str:
        """Apply the call's writes and return its output.

        ``observed`` is what :meth:`observe` returned when the call started. The output carries
        those versions and the versions of the keys the call wrote, after its writes.
        """
        _, writes = resource_keys(spec, arguments)
        call = (spec.name, arguments)
        for key in writes:
            if spec.effects.idempotent and self._last.get(key) == call:
                continue
            self._writes[key] = self._writes.get(key, 0) + 1
            # A write above or below a key changes it too: its last write is no longer last.
            for other in [other for other in self._last if _overlap(key, other)]:
                del self._last[other]
            self._last[key] = call
        return tool_output(
            spec, arguments, {**observed, **{key: self.version(key) for key in writes}}
        )

    def execute(self, spec: ToolSpec, arguments: str) -> str:
        """Run a call instantly: observe its reads, apply its writes, return its output."""
        return self.complete(spec, arguments, self.observe(spec, arguments))


async def tool_latency(spec: ToolSpec, *, time_scale: float = 1.0) -> None:
    """Sleep for the tool's latency times ``time_scale`` (0 = no sleep at all)."""
    if spec.latency_ms > 0 and time_scale > 0:
        await asyncio.sleep(spec.latency_ms / 1000 * time_scale)


async def run_tool(
    spec: ToolSpec,
    arguments: str,
    *,
    time_scale: float = 1.0,
    state: ScenarioState | None = None,
) -> str:
    """Sleep for the tool's latency (times ``time_scale``; 0 = instant), return its output.

    With ``state`` the output depends on the writes made to it before (see
    :class:`ScenarioState`), and the call's own writes are applied to it; without, on the call
    alone.
    """
    if state is None:
        await tool_latency(spec, time_scale=time_scale)
        return tool_output(spec, arguments)
    observed = state.observe(spec, arguments)
    await tool_latency(spec, time_scale=time_scale)
    return state.complete(spec, arguments, observed)
