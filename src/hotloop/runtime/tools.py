"""Typed tools: a Python function becomes a tool the model can call.

::

    @tool(reads=["repo/{path}"])
    async def read_file(path: str) -> str:
        \"\"\"Read a file of the repository.

        Args:
            path: Path relative to the repository root.
        \"\"\"

The JSON schema comes from the type hints (through pydantic) and the docstring (its first
paragraph describes the tool; a Google-style ``Args:`` section describes the parameters).
Arguments are parsed and validated once per call, straight from the JSON string the model
streamed (``model_validate_json``), before the function runs.

Effects tell the scheduler what may overlap: ``reads`` / ``writes`` are resource keys, as
templates filled from the validated arguments (``"repo/{path}"``) or callables of them;
``pure=True`` touches nothing shared. A tool that declares none of these is **exclusive**: it
runs alone, which is always safe. ``idempotent=True`` says running it twice is harmless.
``timeout`` bounds one call (seconds). Synchronous functions run in a worker thread so they
never block the event loop; a timed-out thread cannot be killed and finishes in the background.
Those threads come from :class:`ToolThreads`, which starts a new thread whenever none is idle,
so a call always starts at once (its timeout never counts time spent queued behind hung calls)
up to ``max_threads`` busy threads; beyond that it raises :class:`ToolPoolExhausted`.

A tool whose first parameter is annotated :class:`RunContext` receives the run's context
there (``deps`` passed to ``Runner.run``, the call's id, the turn); it never appears in the
schema. Methods work as tools: ``@tool`` on a method in a class body gives each instance its
own bound tool (``self`` is not a parameter the model sees), and ``tool(obj.method)`` wraps
a bound method directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import re
import string
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    TypeAlias,
    TypeVar,
    get_origin,
    get_type_hints,
    overload,
)

import pydantic
import pydantic_core

from hotloop.checks import is_number, number
from hotloop.errors import HotloopError
from hotloop.runtime.cache import Cache, declared

if TYPE_CHECKING:
    from hotloop.runtime.agent import Agent
    from hotloop.runtime.events import RunResult

__all__ = [
    "Effects",
    "RunContext",
    "ResourceSpec",
    "Tool",
    "ToolArgumentsError",
    "ToolDefinitionError",
    "ToolPoolExhausted",
    "ToolThreads",
    "tool",
]

#: A resource key template (``"repo/{path}"``) or a function of the validated arguments.
ResourceSpec: TypeAlias = str | Callable[[Mapping[str, Any]], Iterable[str]]


Deps = TypeVar("Deps")


@dataclass(frozen=True, slots=True)
class RunContext(Generic[Deps]):
    """What a tool may know of the run that calls it; annotate its first parameter with it.

    ``deps`` is what the caller passed to ``Runner.run(..., deps=...)`` (a database handle, the
    user, a request context), typed by the annotation (``RunContext[MyDeps]``). ``call_id``,
    ``tool_name`` and ``turn`` identify this call; ``agent`` is the agent's name. :meth:`run`
    runs a sub-agent within the call.
    """

    deps: Deps
    call_id: str
    tool_name: str
    turn: int
    agent: str
    #: Runs another agent as part of this call (see :meth:`run`); set by the runner.
    runner: Callable[[Agent, Any], Awaitable[RunResult]] | None = field(default=None, repr=False)

    async def run(self, agent: Agent, input: Any) -> RunResult:
        """Run ``agent`` on ``input`` inside this call: a sub-agent.

        It shares the caller's client (over a WebSocket: its own lane of the same socket, no
        new connection) and ``deps``; its result is kept on the call's record, so traces nest
        the sub-run under this call.
        """
        if self.runner is None:
            raise RuntimeError("this context was not made by a run: it cannot run agents")
        return await self.runner(agent, input)


def _is_context(annotation: Any) -> bool:
    return annotation is RunContext or get_origin(annotation) is RunContext


class ToolDefinitionError(HotloopError):
    """A function cannot be turned into a tool (e.g. ``*args``, an unknown template field)."""


class ToolArgumentsError(HotloopError):
    """The model's arguments are not valid JSON or do not match the tool's schema."""


class ToolPoolExhausted(HotloopError):
    """Every thread synchronous tools may use is busy (typically with calls that hung)."""


_Job: TypeAlias = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
#: How long an idle worker thread waits for another call before it exits.
_IDLE_SECONDS = 30.0


class ToolThreads:
    """Worker threads for synchronous tools that hung calls cannot exhaust silently.

    A call goes to an idle thread, or to a new one when none is idle: it starts at once, so
    its timeout measures the tool, never a queue. A call that times out keeps its thread (a
    thread cannot be killed) until the function returns; at most ``max_threads`` threads are
    busy at once, and a call beyond that raises :class:`ToolPoolExhausted` without running.
    Idle threads exit after 30 s, and when :meth:`close` is called.
    """

    def __init__(self, max_threads: int = 64) -> None:
        number("max_threads", max_threads, integer=True)
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Threads running a call now (hung ones included)."""
        return self._busy

    def run(self, fn: Callable[..., Any], /, **kwargs: Any) -> asyncio.Future[Any]:
        """Start ``fn(**kwargs)`` in a worker thread now; raises :class:`ToolPoolExhausted`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()
        job: _Job = (functools.partial(context.run, fn, **kwargs), loop, future)
        with self._lock:
            if self._closed:
                raise ToolPoolExhausted("the tool threads are closed")
            if self._idle:
                inbox = self._idle.pop()
            elif self._busy >= self.max_threads:
                raise ToolPoolExhausted(
                    f"all {self.max_threads} tool threads are busy (calls that hung or are "
                    "still running); the call was not started"
                )
            else:
                inbox = queue.SimpleQueue()
                threading.Thread(
                    target=self._work, args=(inbox,), name="hotloop-tool", daemon=True
                ).start()
            self._busy += 1
        inbox.put(job)
        return future

    def _work(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            try:
                job = inbox.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # handed a job just as it timed out: take it
            if job is None:
                return
            call, loop, future = job
            try:
                result: Any = call()
                error: BaseException | None = None
            except BaseException as exc:  # reported to the caller, never lost in the thread
                result, error = None, exc
            with self._lock:
                self._busy -= 1
                closed = self._closed
                if not closed:
                    self._idle.append(inbox)
            with_result = functools.partial(_settle_future, future, result, error)
            # A loop that closed meanwhile has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(with_result)
            if closed:
                return

    def close(self) -> None:
        """Let idle threads exit now; busy ones exit when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller gave up (a timeout, a cancelled run)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


#: The threads of synchronous tools invoked without threads of their own.
_DEFAULT_THREADS = ToolThreads()


@dataclass(frozen=True, slots=True)
class Effects:
    """What a tool touches. ``exclusive`` tools conflict with every other call."""

    reads: tuple[ResourceSpec, ...] = ()
    writes: tuple[ResourceSpec, ...] = ()
    pure: bool = False
    idempotent: bool = False
    exclusive: bool = True


def _expand(specs: tuple[ResourceSpec, ...], args: Mapping[str, Any]) -> frozenset[str]:
    keys: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            keys.add(spec.format_map(args) if "{" in spec else spec)
        else:
            found = spec(args)
            if isinstance(found, str):
                found = (found,)  # one key, not its characters
            for key in found:
                if not isinstance(key, str) or not key:
                    raise TypeError(f"a resource key is a non-empty string, not {key!r}")
                keys.add(key)
    return frozenset(keys)


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)(?:\s*\(.*\))?:\s*(.*)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description paragraph and the ``Args:`` descriptions of a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    description_done = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = description_done = True
            continue
        if in_args:
            if line and not line[0].isspace():
                in_args = False  # the next section (Returns:, Raises:, ...)
                continue
            match = _ARG_LINE.match(line)
            if match:
                current = match.group(1).lstrip("*")
                params[current] = match.group(2).strip()
            elif current and line.strip():
                params[current] += " " + line.strip()
            continue
        if description_done or (not description and not line.strip()):
            continue
        if not line.strip():
            # The description is the first paragraph only; keep reading for ``Args:``.
            description_done = True
            continue
        description.append(line.strip())
    return " ".join(description), params


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _strip_titles(value) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [_strip_titles(value) for value in schema]
    return schema


#: How a tool's result maps to the calls likely to follow: ``(tool name, arguments)`` pairs.
FollowUps = Callable[[Mapping[str, Any], str], Iterable[tuple[str, Mapping[str, Any]]]]


def _checked_follows(name: str, follows: FollowUps | None) -> FollowUps | None:
    """``follows`` if it is a plain function (it is called on the loop, never awaited)."""
    if follows is None:
        return None
    if not callable(follows):
        raise ToolDefinitionError(
            f"tool {name!r}: follows= takes a function of (args, output), not {follows!r}"
        )
    if inspect.iscoroutinefunction(follows) or inspect.isasyncgenfunction(follows):
        raise ToolDefinitionError(
            f"tool {name!r}: follows= must be a plain function returning (tool name, "
            "arguments) pairs, not an async one: it is called while the loop runs, never awaited"
        )
    try:
        inspect.signature(follows).bind(None, None)
    except TypeError as exc:
        raise ToolDefinitionError(
            f"tool {name!r}: follows= is called with (args, output): {exc}"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin): its first call tells
    return follows


def _checked_timeout(name: str, timeout: float | None) -> float | None:
    """``timeout=`` of tool ``name``: positive seconds, or None (no timeout)."""
    if timeout is not None and not (is_number(timeout) and timeout > 0):
        raise ToolDefinitionError(
            f"tool {name!r}: timeout= must be positive seconds or None, not {timeout!r}"
        )
    return timeout


def _checked_cache(name: str, effects: Effects, cache: Cache | None) -> Cache | None:
    """``cache`` if a tool with ``effects`` may be cached: it cannot write."""
    if cache is None:
        return None
    if not isinstance(cache, Cache):
        raise ToolDefinitionError(f"tool {name!r}: cache= takes True or a Cache, not {cache!r}")
    if effects.writes or (effects.exclusive and not effects.pure):
        raise ToolDefinitionError(
            f"tool {name!r}: only a tool that cannot write may be cached: declare its reads= "
            "(and no writes=), or pure=True"
        )
    return declared(cache)


class Tool:
    """A callable the model can use; build one with :func:`tool`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        effects: Effects,
        timeout: float | None = 60.0,
        approval: bool = False,
        cache: Cache | None = None,
        follows: FollowUps | None = None,
    ) -> None:
        if not callable(fn):
            raise ToolDefinitionError(f"a tool needs a function, got {fn!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", type(fn).__name__))
        if effects.pure and effects.writes:
            raise ToolDefinitionError(
                f"tool {self.name!r}: pure=True means it touches nothing shared, so it cannot "
                "also declare writes="
            )
        self.effects = effects
        self.timeout = _checked_timeout(self.name, timeout)
        #: Each call waits for approval before it runs (see ``Runner.run``'s ``approver``).
        self.approval = approval
        #: How its results are cached (None: never); see :mod:`hotloop.runtime.cache`.
        self.cache = _checked_cache(self.name, effects, cache)
        #: The calls likely to follow one of its results (speculative prefetch), or None.
        self.follows = _checked_follows(self.name, follows)
        self.is_async = inspect.iscoroutinefunction(fn)
        #: The function's first parameter is ``self``: a method not bound to an instance yet.
        self.unbound = _first_parameter(fn) == "self" and not inspect.ismethod(fn)
        self.takes_context = False
        doc_description, doc_params = _parse_docstring(fn.__doc__)
        self.description = description if description is not None else doc_description
        self._model: type[pydantic.BaseModel] | None = self._build_model(fn, doc_params)
        self.parameters: dict[str, Any] = self._schema(self._model)
        self._check_templates()
        kept = self.cache
        if self.takes_context and kept and (kept.scope != "run" or kept.store is not None):
            raise ToolDefinitionError(
                f"tool {self.name!r} takes a RunContext: its result may depend on the run's "
                "deps (the user), and a cached one would be served to other runs; cache it for "
                "its run only (Cache(scope='run'), no store=)"
            )

    def __get__(self, instance: object, owner: type | None = None) -> Tool:
        """``@tool`` on a method: each instance's attribute is a tool bound to it."""
        if instance is None or not self.unbound:
            return self
        bound = _copy(self)
        bound.fn = self.fn.__get__(instance, owner)
        bound.unbound = False
        return bound

    @classmethod
    def from_schema(
        cls,
        name: str,
        parameters: Mapping[str, Any],
        fn: Callable[..., Awaitable[Any]],
        *,
        description: str = "",
        effects: Effects,
        timeout: float | None = 60.0,
        approval: bool = False,
        cache: Cache | None = None,
        follows: FollowUps | None = None,
    ) -> Tool:
        """A tool described by a JSON schema instead of type hints (e.g. a scenario's tools).

        Arguments are checked against the schema's common subset (required keys, no unknown
        keys when ``additionalProperties`` is false, JSON types) and passed as keywords.
        """
        self = cls.__new__(cls)
        self.fn = fn
        self.name = name
        self.effects = effects
        self.timeout = _checked_timeout(name, timeout)
        self.approval = approval
        self.cache = _checked_cache(name, effects, cache)
        self.follows = _checked_follows(name, follows)
        self.is_async = True
        self.unbound = False
        self.takes_context = False
        self.description = description
        self.parameters = dict(parameters)
        self._model = None
        return self

    def _build_model(
        self, fn: Callable[..., Any], docs: Mapping[str, str]
    ) -> type[pydantic.BaseModel]:
        try:
            hints = get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: cannot read type hints: {exc}") from exc
        fields: dict[str, Any] = {}
        parameters = list(inspect.signature(fn).parameters.values())
        if self.unbound:
            parameters = parameters[1:]  # self: given by the instance, never by the model
        if parameters and _is_context(hints.get(parameters[0].name)):
            self.takes_context = True
            parameters = parameters[1:]
        for param in parameters:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ToolDefinitionError(
                    f"tool {self.name!r}: *args and **kwargs cannot be described to a model"
                )
            if param.name not in hints:
                raise ToolDefinitionError(
                    f"tool {self.name!r}: parameter {param.name!r} has no type hint; annotate "
                    f"it (for example {param.name}: str) so the model knows what to send"
                )
            annotation = hints[param.name]
            if _is_context(annotation):
                raise ToolDefinitionError(
                    f"tool {self.name!r}: the RunContext parameter must be the first one"
                )
            try:
                pydantic.TypeAdapter(annotation).json_schema()
            except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as exc:
                raise ToolDefinitionError(
                    f"tool {self.name!r}: parameter {param.name!r} has a type that cannot be "
                    f"described as JSON ({_type_name(annotation)}); use JSON-like types "
                    "(str, int, float, bool, lists, dicts, enums, pydantic models, dataclasses)"
                ) from exc
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (
                annotation,
                pydantic.Field(default, description=docs.get(param.name)),
            )
        config = pydantic.ConfigDict(extra="forbid")
        model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{self.name}_arguments", __config__=config, **fields
        )
        return model

    def _schema(self, model: type[pydantic.BaseModel]) -> dict[str, Any]:
        schema: dict[str, Any] = _strip_titles(model.model_json_schema())
        schema["additionalProperties"] = False
        return schema

    def _check_templates(self) -> None:
        names = set(self._model.model_fields) if self._model is not None else set()
        for spec in (*self.effects.reads, *self.effects.writes):
            if callable(spec):
                continue
            if not isinstance(spec, str) or not spec:
                raise ToolDefinitionError(
                    f"tool {self.name!r}: a resource is a non-empty key template (such as "
                    f"'repo/{{path}}') or a function of the arguments, not {spec!r}"
                )
            if "{" not in spec:
                continue  # a plain key, used as written
            try:
                fields = [field for _, field, _, _ in string.Formatter().parse(spec)]
            except ValueError as exc:
                raise ToolDefinitionError(
                    f"tool {self.name!r}: resource {spec!r} is not a valid template: {exc}"
                ) from exc
            for field_name in fields:
                if field_name is None:
                    continue
                placeholder = re.split(r"[.\[]", field_name, maxsplit=1)[0]
                if not placeholder:
                    raise ToolDefinitionError(
                        f"tool {self.name!r}: resource {spec!r} has a placeholder with no "
                        "argument name; name the argument, as in 'repo/{path}'"
                    )
                if placeholder not in names:
                    raise ToolDefinitionError(
                        f"tool {self.name!r}: resource {spec!r} names unknown argument "
                        f"{placeholder!r}"
                    )

    def definition(self) -> dict[str, Any]:
        """The tool as a Responses API ``tools`` entry."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": False,
        }

    def parse(self, arguments: str) -> dict[str, Any]:
        """Validate the model's JSON arguments; raises :class:`ToolArgumentsError`."""
        if self._model is None:
            return _check_schema(self.name, self.parameters, arguments)
        try:
            model = self._model.model_validate_json(arguments or "{}")
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(arguments)'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from exc
        return dict(model)

    def resources(self, args: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
        """The resource keys this call reads and writes; raises :class:`ToolArgumentsError`
        when the declarations cannot be worked out from ``args`` (a template naming what the
        arguments lack, a function that raises or returns no keys)."""
        try:
            return _expand(self.effects.reads, args), _expand(self.effects.writes, args)
        except Exception as exc:
            raise ToolArgumentsError(
                f"the resources of {self.name} cannot be worked out from these arguments: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @property
    def dispatch_early(self) -> bool:
        """Whether a call may run before its response completes: it reads, or is idempotent.

        Reads only (declared, not exclusive, no writes), ``pure`` and ``idempotent`` tools.
        """
        effects = self.effects
        return effects.pure or effects.idempotent or not (effects.exclusive or effects.writes)

    async def invoke(
        self,
        args: Mapping[str, Any],
        threads: ToolThreads | None = None,
        context: RunContext[Any] | None = None,
    ) -> str:
        """Run the tool with validated ``args``; its result as the text sent to the model.

        ``context`` goes to a tool that takes one (:attr:`takes_context`). A synchronous
        function runs on one of ``threads`` (default: threads shared by the process); raises
        :class:`ToolPoolExhausted` when every one is busy.
        """
        if self.unbound:
            raise ToolDefinitionError(
                f"tool {self.name!r} is a method: use it from an instance (obj.{self.name})"
            )
        fn = self.fn
        if self.takes_context:
            fn = functools.partial(fn, context)
        if self.is_async:
            result = await fn(**args)
        else:
            result = await (threads or _DEFAULT_THREADS).run(fn, **args)
        if isinstance(result, str):
            return result
        return pydantic_core.to_json(result).decode()

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _first_parameter(fn: Callable[..., Any]) -> str | None:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return next(iter(parameters), None)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def _copy(tool: Tool) -> Tool:
    clone = Tool.__new__(Tool)
    for name in (
        "fn",
        "name",
        "effects",
        "timeout",
        "approval",
        "cache",
        "follows",
        "is_async",
        "unbound",
        "takes_context",
    ):
        setattr(clone, name, getattr(tool, name))
    clone.description = tool.description
    clone.parameters = tool.parameters
    clone._model = tool._model
    return clone


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _check_schema(name: str, schema: Mapping[str, Any], arguments: str) -> dict[str, Any]:
    try:
        args = pydantic_core.from_json(arguments or "{}")
    except ValueError as exc:
        raise ToolArgumentsError(f"invalid arguments for {name}: not JSON ({exc})") from exc
    if not isinstance(args, dict):
        raise ToolArgumentsError(f"invalid arguments for {name}: expected a JSON object")
    properties = schema.get("properties") or {}
    missing = [key for key in schema.get("required") or () if key not in args]
    if missing:
        raise ToolArgumentsError(f"invalid arguments for {name}: missing {', '.join(missing)}")
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(args) - set(properties))
        if unknown:
            raise ToolArgumentsError(
                f"invalid arguments for {name}: unexpected {', '.join(unknown)}"
            )
    for key, value in args.items():
        kind = (properties.get(key) or {}).get("type")
        if isinstance(kind, str) and kind in _JSON_TYPES:
            allowed = _JSON_TYPES[kind]
            if not isinstance(value, allowed) or (kind in ("integer", "number") and value is True):
                raise ToolArgumentsError(f"invalid arguments for {name}: {key} must be {kind}")
    return args


_Fn: TypeAlias = Callable[..., Awaitable[Any]] | Callable[..., Any]


@overload
def tool(fn: _Fn, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    reads: Sequence[ResourceSpec] | None = None,
    writes: Sequence[ResourceSpec] | None = None,
    pure: bool = False,
    idempotent: bool = False,
    timeout: float | None = 60.0,
    approval: bool = False,
    cache: bool | Cache = False,
    follows: FollowUps | None = None,
) -> Callable[[_Fn], Tool]: ...


def tool(
    fn: _Fn | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    reads: Sequence[ResourceSpec] | None = None,
    writes: Sequence[ResourceSpec] | None = None,
    pure: bool = False,
    idempotent: bool = False,
    timeout: float | None = 60.0,
    approval: bool = False,
    cache: bool | Cache = False,
    follows: FollowUps | None = None,
) -> Tool | Callable[[_Fn], Tool]:
    """Turn a function into a :class:`Tool`; see the module docstring for the effects.

    ``approval=True``: every call waits for approval before it runs. ``cache=True`` (or a
    :class:`~hotloop.runtime.cache.Cache`): a tool that only reads keeps its results, and a
    repeated call gets them without running (see :mod:`hotloop.runtime.cache`).
    ``follows(args, output)``: the calls likely to follow a result, as ``(tool name,
    arguments)`` pairs, for speculative prefetch (see :mod:`hotloop.runtime.speculation`).
    """
    caching = Cache() if cache is True else (cache or None)
    declared = pure or reads is not None or writes is not None
    effects = Effects(
        reads=tuple(reads or ()),
        writes=tuple(writes or ()),
        pure=pure,
        idempotent=idempotent or pure,
        exclusive=not declared,
    )

    def wrap(function: _Fn) -> Tool:
        for option, given in (("reads", reads), ("writes", writes)):
            if isinstance(given, str | bytes):
                label = name or getattr(function, "__name__", "tool")
                raise ToolDefinitionError(
                    f"tool {label!r}: {option}= takes a list of resource keys, not one string: "
                    f"{option}=[{given!r}]"
                )
        return Tool(
            function,
            name=name,
            description=description,
            effects=effects,
            timeout=timeout,
            approval=approval,
            cache=caching,
            follows=follows,
        )

    return wrap(fn) if fn is not None else wrap
