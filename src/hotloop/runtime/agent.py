"""``Agent``: a model, its instructions, its tools, and how their calls are scheduled."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from hotloop.checks import number
from hotloop.runtime.output import OutputSpec
from hotloop.runtime.policies import Policy
from hotloop.runtime.tools import (
    Effects,
    ResourceSpec,
    RunContext,
    Tool,
    ToolDefinitionError,
    tool,
)

__all__ = ["Agent"]


class Agent:
    """What to run: ``model`` with ``instructions`` and ``tools``.

    ``tools`` are tools (:func:`~hotloop.runtime.tools.tool`) or plain functions (wrapped
    with ``tool(fn)``: no declared effects, so each call runs alone).

    ``settings`` are extra Responses request fields sent every turn (``tool_choice``,
    ``max_output_tokens``, ``parallel_tool_calls``, ...). ``max_turns`` bounds a run.
    ``eager`` starts each tool the moment its arguments are complete in the stream (default);
    ``False`` waits for the whole turn, as naive loops do. ``max_concurrency`` bounds the
    calls running at once (1 = one at a time). ``max_attempts`` bounds how often one turn is
    sent again after a replay-safe transport failure.

    ``eager_writes`` (default ``False``): only calls that read, or are ``pure`` or
    ``idempotent``, start while their response streams; every other call waits until the
    response has completed (``status == "completed"``), and never runs from a response that
    ends ``incomplete``, fails or is cut. ``True`` dispatches every call eagerly.

    Deadlines of one model turn, in seconds (``None``: none): ``first_event_timeout`` from
    sending the request to its first event, ``stall_timeout`` between two events,
    ``turn_timeout`` for the whole response (every attempt). ``max_tool_threads`` bounds the
    threads synchronous tools of one run may keep busy.

    ``output_type`` makes the final answer a typed value (``RunResult.output``): the request
    asks for JSON of its schema, and an answer that does not validate goes back to the model
    with the errors, up to ``output_retries`` times (then ``OutputValidationError``).

    ``policies`` decide what each attempt of a turn sends and which failures get another
    attempt (``hotloop.runtime.policies``: fallbacks, timeouts that act, per-turn routing).

    ``approval``: ``"writes"`` makes every call that may write (a tool that declares ``writes``
    or declares nothing) wait for approval before it runs, ``"all"`` every call; tools can ask
    for it themselves (``@tool(approval=True)``). See ``Runner.run``'s ``approver``.
    """

    __slots__ = (
        "_by_name",
        "approval",
        "definitions",
        "eager",
        "eager_writes",
        "first_event_timeout",
        "instructions",
        "max_attempts",
        "max_concurrency",
        "max_tool_threads",
        "max_turns",
        "model",
        "name",
        "output",
        "output_retries",
        "policies",
        "settings",
        "stall_timeout",
        "tools",
        "turn_timeout",
    )

    def __init__(
        self,
        model: str,
        instructions: str | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        *,
        name: str = "agent",
        settings: Mapping[str, Any] | None = None,
        max_turns: int = 50,
        eager: bool = True,
        max_concurrency: int = 8,
        max_attempts: int = 3,
        eager_writes: bool = False,
        first_event_timeout: float | None = 60.0,
        stall_timeout: float | None = 60.0,
        turn_timeout: float | None = 600.0,
        max_tool_threads: int = 64,
        approval: Literal["writes", "all"] | None = None,
        output_type: Any = None,
        output_retries: int = 1,
        policies: Sequence[Policy] = (),
    ) -> None:
        wrapped = [_as_tool(entry) for entry in tools]
        names = [tool.name for tool in wrapped]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(duplicates)}")
        for setting, count in (
            ("max_turns", max_turns),
            ("max_concurrency", max_concurrency),
            ("max_attempts", max_attempts),
            ("max_tool_threads", max_tool_threads),
            ("output_retries", output_retries),
        ):
            number(setting, count, integer=True)
        for setting, seconds in (
            ("first_event_timeout", first_event_timeout),
            ("stall_timeout", stall_timeout),
            ("turn_timeout", turn_timeout),
        ):
            number(setting, seconds, optional=True)
        if max_turns < 1 or max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_turns, max_concurrency and max_attempts must be at least 1")
        if max_tool_threads < 1:
            raise ValueError("max_tool_threads must be at least 1")
        if output_retries < 0:
            raise ValueError("output_retries must not be negative")
        if approval not in (None, "writes", "all"):
            raise ValueError(f"approval must be None, 'writes' or 'all', not {approval!r}")
        for timeout in (first_event_timeout, stall_timeout, turn_timeout):
            if timeout is not None and timeout <= 0:
                raise ValueError("timeouts must be positive (or None)")
        self.model = model
        self.instructions = instructions
        self.tools: tuple[Tool, ...] = tuple(wrapped)
        self.name = name
        merged = dict(settings or {})
        self.output = OutputSpec(output_type) if output_type is not None else None
        if self.output is not None:
            # The answer's format rides in ``text``, next to whatever else it holds.
            merged["text"] = {**(merged.get("text") or {}), **self.output.format}
        self.output_retries = output_retries
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.settings: Mapping[str, Any] = MappingProxyType(merged)
        self.max_turns = max_turns
        self.eager = eager
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.eager_writes = eager_writes
        self.first_event_timeout = first_event_timeout
        self.stall_timeout = stall_timeout
        self.turn_timeout = turn_timeout
        self.max_tool_threads = max_tool_threads
        self.approval = approval
        self._by_name = {tool.name: tool for tool in self.tools}
        # Built once: the tool list is re-sent every turn, never re-derived.
        self.definitions: tuple[dict[str, Any], ...] = tuple(tool.definition() for tool in wrapped)

    def tool(self, name: str) -> Tool | None:
        return self._by_name.get(name)

    def needs_approval(self, tool: Tool) -> bool:
        """Whether a call of ``tool`` waits for approval: the tool says so, or the agent does
        (``approval="all"``, or ``"writes"`` for every tool that may write: one that declares
        ``writes`` or declares nothing)."""
        if tool.approval or self.approval == "all":
            return True
        effects = tool.effects
        return self.approval == "writes" and bool(effects.writes or effects.exclusive)

    def as_tool(
        self,
        name: str | None = None,
        description: str | None = None,
        *,
        reads: Sequence[ResourceSpec] | None = None,
        writes: Sequence[ResourceSpec] | None = None,
        timeout: float | None = 600.0,
    ) -> Tool:
        """This agent as a tool of another: the model gives it a task, it answers.

        Each call runs the agent to its final answer on the calling run's client (over a
        WebSocket, on a lane of the same socket: no new connection, and its conversation is
        its own, so nothing of the caller's is re-sent) with the caller's ``deps``; the answer
        is the tool's result, and the sub-run nests under the call in traces.

        Effects, unless given: when every tool of this agent only reads (or is ``pure`` or
        ``idempotent``), the calls read ``agent:<name>`` and start while the caller's response
        streams; otherwise they write it, and wait for the response to complete. Either way,
        calls of different sub-agents run concurrently.
        """
        agent = self
        tool_name = name or self.name
        key = f"agent:{tool_name}"
        if reads is None and writes is None:
            if all(t.dispatch_early for t in self.tools):
                reads = (key,)
            else:
                writes = (key,)

        async def delegate(context: RunContext[Any], task: str) -> str:
            """Args:
            task: The task, with everything the agent needs to know to do it.
            """
            result = await context.run(agent, task)
            return result.final_output

        return Tool(
            delegate,
            name=tool_name,
            description=description
            or f"Give the {tool_name} agent a task; it answers when done. "
            + (self.instructions or ""),
            effects=Effects(reads=tuple(reads or ()), writes=tuple(writes or ()), exclusive=False),
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, model={self.model!r}, tools={[t.name for t in self.tools]})"


def _as_tool(entry: Tool | Callable[..., Any]) -> Tool:
    """A tool as given, or a plain function wrapped as one (exclusive: it declares no effects)."""
    if isinstance(entry, Tool):
        if entry.unbound:
            raise ToolDefinitionError(
                f"tool {entry.name!r} is a method: pass it from an instance (obj.{entry.name})"
            )
        return entry
    if callable(entry):
        return tool(entry)
    raise ToolDefinitionError(f"an agent's tools must be tools or functions, got {entry!r}")
