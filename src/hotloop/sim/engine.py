"""The embedded simulated model: scripted turns, paced like a real inference engine.

:class:`SimEngine` answers a :class:`~hotloop.protocol.generation.GenerationRequest` in two
steps. :meth:`SimEngine.plan` decides *what* the model says — pure and deterministic: the
scenario's turn for this conversation, or the behaviour of a generic model for requests the
script does not cover. :meth:`SimEngine.generate` streams it with the timing of the
:class:`~hotloop.sim.latency.LatencyProfile`: service overhead, time to first token with
prefill of the prompt tokens missing from the engine's prefix cache, then one delta per token.

The turn is derived from the conversation itself (how many tool results it holds), so any
client works: the gateway, the official SDKs, a hand-written loop.

With a tail profile (:attr:`~hotloop.sim.latency.LatencyProfile.has_tails`) each response
draws its time to first token, an optional mid-stream stall and an optional failure once,
from the engine's own generator, seeded by ``seed`` and ``stream``: response *k* of an engine
gets draw *k*, whatever it asks, so a sequential client replays a run exactly, and a retry or
a hedge, being another request, gets a fresh draw instead of the tail it is escaping. An
engine is one replica: several engines of one model (``stream`` names each) draw
independently. Failures are :class:`~hotloop.errors.APIError` s the gateway reports as
documented: ``rate_limit_exceeded`` (429, with ``retry_after``), ``server_error`` (500,
before any output) and ``stream_dropped`` (502, after some output).

Besides scenarios, the engine has a **generic mode** (model id ``<generic_model>`` or
``<generic_model>:<turns>``) that drives any agent with no script: it calls the tools the
request offers, with arguments synthesized from their schemas, for a number of tool turns,
then answers. A scenario whose scripted call names a tool the request does not offer still
plays without it, but the turn carries a warning (and the engine logs it once), because an
agent that silently gets a one-turn answer looks like a bug in the agent.

A **summarisation request** (``metadata`` ``{"hotloop_purpose": "summary"}``, what the
runtime's ``Compact`` policy sends) plays no turn: it gets a deterministic summary of
``max_output_tokens`` tokens at the profile's decode speed, whose marker tells where the
summarised conversation stood, so that a compacted conversation still plays the scenario's
next turn (:mod:`hotloop.sim.summary`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotloop.errors import APIError, ScenarioError
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import Generation, GenerationRequest
from hotloop.protocol.requests import ToolDef
from hotloop.sim.latency import LatencyProfile, TailDraw, estimate_tokens
from hotloop.sim.scenario import Scenario, ScriptedCall
from hotloop.sim.summary import is_summary_request, is_summary_text, position, summary_text
from hotloop.sim.synth import MAX_ARGUMENT_BYTES, synthesize
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import FunctionCall, Item, Message
from hotloop.wire.responses import Usage

__all__ = [
    "GENERIC_PARALLEL_CALLS",
    "GENERIC_TURNS",
    "MAX_GENERIC_TURNS",
    "PlannedItem",
    "PrefixCache",
    "SimEngine",
    "TurnPlan",
]

#: Characters per streamed delta: one delta per (estimated) token.
CHARS_PER_TOKEN = 4
#: In the ``zero`` profile, yield to the event loop every this many deltas so other lanes and
#: connections make progress and cancellation is prompt.
_YIELD_EVERY = 64
#: Tool turns the generic model makes when its model id does not say how many.
GENERIC_TURNS = 3
#: The most tool turns a generic model id may ask for (``<generic_model>:<turns>``).
MAX_GENERIC_TURNS = 1000
#: Different tools the generic model calls per turn when the request allows parallel calls.
GENERIC_PARALLEL_CALLS = 3
#: (scenario, tool) pairs remembered for "log once"; past this many, no new pair is logged, so
#: clients sending ever new tool names cannot grow the set (or the log) without bound.
_MAX_WARNED = 1024

logger = logging.getLogger("hotloop.sim")
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One output item the model will produce: text (``name`` is None) or a function call."""

    text: str
    name: str | None = None

    @property
    def is_call(self) -> bool:
        return self.name is not None


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What the model does on one turn: its items, and what the client should be told.

    ``missing_tools`` are tools the scenario's turn calls that the request does not offer
    (their calls were dropped), ``warnings`` says so for the client, one message per tool;
    ``scenario`` names the scenario (None in generic mode).
    """

    items: tuple[PlannedItem, ...]
    scenario: str | None = None
    missing_tools: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


class PrefixCache:
    """An LRU of prompt prefixes the engine has processed, like vLLM's prefix cache.

    Keys are the rolling prefix keys of :class:`~hotloop.protocol.conversation.Conversation`;
    values are token counts. :meth:`cached_tokens` finds the longest cached prefix of a
    conversation, walking back from its end: a continuation hits at its parent in a few steps.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: int, tokens: int) -> None:
        self._entries[key] = tokens
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def cached_tokens(self, context: Conversation) -> int:
        for node in context.segments():
            for key, tokens in zip(
                reversed(node.item_keys), reversed(node.item_tokens), strict=True
            ):
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return tokens
        return 0


class SimEngine:
    """A deterministic scripted model with a faithful latency model.

    ``scenarios`` maps model names to the scenario each one plays. ``generic_model`` names the
    generic mode (see :meth:`generic_turns`); None turns it off. ``sleep`` and ``clock`` are
    injectable so tests can run on a fake clock.

    ``seed`` and ``stream`` seed the generator a tail profile draws from (``stream`` names
    this replica, say ``"large#1"``, so replicas with one seed draw independently); ``slots``
    bounds the responses it generates at once (None: no bound), later ones wait in FIFO
    order and their time in the queue adds to their latency, as on a busy server.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Scenario],
        profile: LatencyProfile,
        *,
        prefix_cache_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        generic_model: str | None = None,
        seed: int = 0,
        stream: str = "",
        slots: int | None = None,
    ) -> None:
        self.scenarios = dict(scenarios)
        self.generic_model = generic_model
        if generic_model is not None:
            taken = [name for name in self.scenarios if self.generic_turns(name) is not None]
            if taken:
                raise ScenarioError(
                    f"model id {taken[0]!r} is the generic model's; name the scenario otherwise"
                )
        self.profile = profile
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        self._clock = clock
        self._sleep = sleep
        self.stream = stream
        # String seeds are hashed with SHA-512, never with the process's salted hash().
        self._rng = random.Random(f"{seed}/{stream}")
        #: Responses that drew from the tail distributions so far (the next draw's index).
        self.draws = 0
        if slots is not None and slots < 1:
            raise ScenarioError("a replica needs at least one slot")
        self._slots = asyncio.Semaphore(slots) if slots is not None else None

    def has_free_slot(self) -> bool:
        """True when a response would start at once rather than wait in this replica's queue."""
        return self._slots is None or not self._slots.locked()

    def draw(self) -> TailDraw:
        """The next response's draw from the profile's tails (see the module docstring)."""
        self.draws += 1
        return self.profile.draw(self._rng)

    # -- what the model says ---------------------------------------------------------------

    def generic_turns(self, model: str) -> int | None:
        """How many tool turns ``model`` asks of the generic mode; None if it is not generic.

        ``<generic_model>`` makes :data:`GENERIC_TURNS`; ``<generic_model>:<N>`` makes N
        (0 to :data:`MAX_GENERIC_TURNS`, decimal digits only).
        """
        base = self.generic_model
        if base is None:
            return None
        if model == base:
            return GENERIC_TURNS
        suffix = model.removeprefix(f"{base}:")
        if suffix == model or not (suffix.isascii() and suffix.isdigit()) or len(suffix) > 4:
            return None
        turns = int(suffix)
        return turns if turns <= MAX_GENERIC_TURNS else None

    def serves(self, model: str) -> bool:
        """True for a scenario's model id and for every generic model id."""
        return model in self.scenarios or self.generic_turns(model) is not None

    def plan(self, request: GenerationRequest) -> list[PlannedItem]:
        """The items the model outputs for ``request``: scripted, or generic behaviour."""
        return list(self.plan_turn(request).items)

    def plan_turn(self, request: GenerationRequest) -> TurnPlan:
        """The turn for ``request``: its items, and the scenario's tools it lacks."""
        if is_summary_request(request):
            # A summary is no turn of the conversation: it neither follows nor advances it.
            return TurnPlan((PlannedItem(summary_text(request)),))
        context = request.context
        offered = {tool.name: tool for tool in request.tools}
        scenario_name: str | None = None
        missing: list[str] = []
        tool_turns = self.generic_turns(request.model)
        if tool_turns is not None:
            text, calls = self._generic_turn(request, tool_turns)
        else:
            scenario = self.scenarios[request.model]
            scenario_name = scenario.name
            text, calls, missing = self._scripted_turn(request, scenario)
        if request.tool_choice == "none":
            calls = []
            missing = []  # the request wants no call at all: a missing tool changes nothing
            if text is None:
                text = self._generic_text(context)
        elif request.forced_function is not None:
            forced = request.forced_function
            calls = [call for call in calls if call.name == forced][:1] or [
                self._synthesized_call(request.tools, forced)
            ]
        elif request.tool_choice == "required" and not calls and offered:
            calls = [self._synthesized_call(request.tools, next(iter(offered)))]
        if not request.parallel_tool_calls:
            calls = calls[:1]
        if not calls and text is None:
            text = self._generic_text(context)
        if text and not calls:
            # A final answer asked to follow a JSON schema (``text.format``) is a value of it.
            text = _formatted_answer(request.settings.get("text"), text)
        items = [PlannedItem(text)] if text else []
        items.extend(PlannedItem(call.arguments, call.name) for call in calls)
        if not items:
            items.append(PlannedItem(self._generic_text(context)))
        missing_tools = tuple(dict.fromkeys(missing))
        return TurnPlan(
            tuple(items),
            scenario_name,
            missing_tools,
            tuple(self._missing_tool_warning(scenario_name, name) for name in missing_tools),
        )

    def _missing_tool_warning(self, scenario: str | None, tool: str) -> str:
        """What a client is told when the scenario calls ``tool`` and the request lacks it:
        an agent with tools of its own otherwise just gets a short answer, with no hint why."""
        advice = "offer the scenario's tools"
        if self.generic_model is not None:
            advice += f", or use model {self.generic_model!r} to drive an agent with its own tools"
        return (
            f"scenario {scenario!r} calls tool {tool!r}, which the request does not offer: "
            f"the call was dropped, so the run will not follow the scenario ({advice})"
        )

    def _scripted_turn(
        self, request: GenerationRequest, scenario: Scenario
    ) -> tuple[str | None, list[ScriptedCall], list[str]]:
        """The scenario's turn: its text (None once said), the calls still to make that the
        request offers, and the tools of the other calls (not offered, so dropped)."""
        context = request.context
        offered = {tool.name for tool in request.tools}
        # A compacted conversation counts the results its summary stands for.
        results, answers = position(context)
        at = scenario.turn_for(results)
        if at is None:
            return None, [], []
        turn = scenario.turns[at]
        answered = results - scenario.calls_before(at)
        if not turn.calls and answers > 0:
            return None, [], []  # the final answer was given: the script is over
        remaining = turn.calls[answered:]
        # Only calls the request offers are ever made: never a tool it did not offer.
        calls = [call for call in remaining if call.name in offered]
        missing = [call.name for call in remaining if call.name not in offered]
        return (turn.text if answered == 0 else None), calls, missing

    def _generic_turn(
        self, request: GenerationRequest, tool_turns: int
    ) -> tuple[str | None, list[ScriptedCall]]:
        """The generic model's turn: calls of the offered tools, or the final answer.

        Calls are numbered across the conversation, call *k* naming the offered tool
        ``k mod len(tools)`` (in the order the request lists them), so consecutive turns
        rotate through every tool. A turn makes ``width`` calls (up to
        :data:`GENERIC_PARALLEL_CALLS` different tools with parallel calls, else one), and
        the conversation's tool results say where it is: turn ``results // width``, whose
        calls not yet answered are still to make — the same rule as a scenario's partial
        turn. After ``tool_turns`` turns (or with no tools) it answers with text, unless the
        request demands a call (``tool_choice`` ``"required"`` or a function): then it goes on
        calling, as the API requires.
        """
        context = request.context
        results = position(context)[0]
        if request.forced_function is not None:
            # A forced function is called on every turn, past ``tool_turns`` too: the request
            # says the turn must be that call.
            return None, [self._synthesized_call(request.tools, request.forced_function)]
        names = list(dict.fromkeys(tool.name for tool in request.tools))
        if not names or request.tool_choice == "none":
            return self._generic_answer(context, results), []
        width = min(len(names), GENERIC_PARALLEL_CALLS) if request.parallel_tool_calls else 1
        turn = results // width
        if turn >= tool_turns and request.tool_choice != "required":
            return self._generic_answer(context, results), []
        return None, [
            self._synthesized_call(request.tools, names[index % len(names)])
            for index in range(results, (turn + 1) * width)
        ]

    @classmethod
    def _generic_answer(cls, context: Conversation, results: int) -> str:
        """The generic model's final answer: how many results it had, and a quote of the
        user's last message, so a reader of a transcript sees what happened."""
        reply = cls._generic_text(context)
        if not results:
            return reply
        plural = "" if results == 1 else "s"
        return f"Done after {results} tool result{plural}. {reply}"

    @staticmethod
    def _synthesized_call(tools: Sequence[ToolDef], name: str) -> ScriptedCall:
        """A call of the tool ``name`` (its last definition in ``tools``, as offered) with
        arguments synthesized from its schema; an invalid schema is an error naming its path."""
        index = max(i for i, tool in enumerate(tools) if tool.name == name)
        tool = tools[index]
        arguments = synthesize(tool.parameters, tool.name, path=f"tools[{index}].parameters")
        if not isinstance(arguments, dict):
            arguments = {}
        encoded = codec.dumps(arguments)
        if len(encoded) > MAX_ARGUMENT_BYTES:
            encoded = b"{}"
        return ScriptedCall(name=tool.name, arguments=encoded.decode())

    @staticmethod
    def _generic_text(context: Conversation) -> str:
        last_user = ""
        for node in context.segments():
            for item in reversed(node.items):
                if (
                    isinstance(item, Message)
                    and item.role == "user"
                    and not is_summary_text(item.text)
                ):
                    last_user = item.text
                    break
            if last_user:
                break
        if last_user:
            return f"Understood. (Simulated reply to: {last_user[:120]!r}.)"
        return "Done."

    # -- how long it takes -----------------------------------------------------------------

    def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        """Stream the planned turn into ``out`` with the profile's timing; records usage.

        With ``slots``, the response first waits for one of this replica's slots. Without,
        the stream is the generator itself: no layer in between costs a thing per event.
        """
        if self._slots is None:
            return self._generate(request, out)
        return self._queued(self._slots, request, out)

    async def _queued(
        self, slots: asyncio.Semaphore, request: GenerationRequest, out: ResponseBuilder
    ) -> Generation:
        async with slots:
            async for events in self._generate(request, out):
                yield events

    async def _generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        profile = self.profile
        started = self._clock()
        plan = self.plan_turn(request)
        items = plan.items
        for message in plan.warnings:
            out.warn(message)
        if plan.scenario is not None:
            for name in plan.missing_tools:
                _log_missing_tool(request.model, plan.scenario, name)
        context = request.context
        instruction_tokens = estimate_tokens(request.instructions or "")
        cached = self.prefix_cache.cached_tokens(context)
        uncached = context.tokens - cached
        prompt_tokens = context.tokens + instruction_tokens
        service_end = started + profile.service_time(request.processed_tokens)
        interval = profile.token_interval()
        budget = request.max_output_tokens
        # ``marker`` is the next token index where a drawn event happens (a stall or a drop);
        # -1 on the constant path, which thus pays one integer comparison per token.
        marker = stall_at = drop_at = -1
        stall_s = 0.0
        if profile.has_tails:
            tail = self.draw()
            deadline = service_end + profile.first_token_time(uncached, tail.ttft_s)
            if tail.failure == "rate_limit":
                # The front end refuses at once: only the service work was spent.
                await self._sleep_until(service_end)
                raise _rate_limited(request.model, profile.retry_after_s)
            if tail.failure == "server_error":
                # The request got as far as its first token would have, then failed.
                await self._sleep_until(deadline)
                raise _server_error()
            if tail.stall_s > 0 or tail.failure == "drop":
                total = sum(-(-len(planned.text) // CHARS_PER_TOKEN) for planned in items)
                if budget is not None:
                    total = min(total, budget)
                if tail.stall_s > 0 and total >= 2:
                    # A stall is a gap between two tokens: after the first, before the last.
                    stall_at = 1 + int(tail.stall_at * (total - 1))
                    stall_s = tail.stall_s
                if tail.failure == "drop":
                    # At least one token is out; the cut may come after the last (before the
                    # response completes).
                    drop_at = 1 + int(tail.drop_at * max(total, 1))
                marker = min((i for i in (stall_at, drop_at) if i >= 0), default=-1)
        else:
            deadline = service_end + profile.first_token_time(uncached)
        output_tokens = 0
        deltas = 0
        truncated = False
        produced: list[Item] = []
        for planned in items:
            item_started = False
            emitted: list[str] = []
            text = planned.text
            for start in range(0, len(text), CHARS_PER_TOKEN):
                if budget is not None and output_tokens >= budget:
                    truncated = True
                    break
                if deltas == marker:
                    if deltas == drop_at:
                        raise _dropped(deltas)
                    deadline += stall_s
                    await self._sleep_until(deadline)
                    marker = drop_at if drop_at > deltas else -1
                if interval or deltas == 0:
                    await self._sleep_until(deadline)
                    deadline += interval
                elif deltas % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if not item_started:
                    # An item begins with its first token, as a real model's does: only a
                    # generated token says whether the item is text or a call.
                    yield _open(out, planned)
                    item_started = True
                chunk = text[start : start + CHARS_PER_TOKEN]
                emitted.append(chunk)
                output_tokens += 1
                deltas += 1
                yield out.delta(chunk)
            if not item_started:
                yield _open(out, planned)
            yield out.close_item()
            body = "".join(emitted)
            produced.append(
                FunctionCall(call_id="", name=planned.name, arguments=body)
                if planned.name is not None
                else Message(role="assistant", content=body)
            )
            if truncated:
                break
        if drop_at >= 0:
            # The cut falls after the last token: the stream ends without completing.
            raise _dropped(deltas)
        # The prompt and the prompt plus this turn's output are now in the engine's KV cache.
        self.prefix_cache.add(context.prefix_key, context.tokens)
        after = context.extend(produced)
        self.prefix_cache.add(after.prefix_key, after.tokens)
        out.set_usage(
            Usage(input_tokens=prompt_tokens, cached_tokens=cached, output_tokens=output_tokens)
        )
        if truncated:
            out.set_incomplete("max_output_tokens")

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay > 0:
            await self._sleep(delay)


def _rate_limited(model: str, retry_after: float) -> APIError:
    """A simulated 429: the status and ``retry-after`` reach HTTP clients; a streamed
    response's ``response.failed`` carries the code and says the wait in its message."""
    return APIError(
        f"Rate limit reached for {model} (simulated). Please try again in {retry_after:g} s.",
        status=429,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        retry_after=retry_after,
    )


def _server_error() -> APIError:
    """A simulated 500 before any output."""
    return APIError(
        "The server had an error while processing your request (simulated).",
        status=500,
        type="server_error",
        code="server_error",
    )


def _dropped(tokens: int) -> APIError:
    """A simulated stream cut after ``tokens`` output tokens: the response fails mid-stream,
    the gateway's documented way to end a response that cannot complete."""
    return APIError(
        f"The stream was dropped after {tokens} output tokens (simulated).",
        status=502,
        type="server_error",
        code="stream_dropped",
    )


def _log_missing_tool(model: str, scenario: str, tool: str) -> None:
    """Log, once per process for each (scenario, tool), that a request lacked the tool.

    Each response carries its own warning; the log is for whoever runs the gateway, who needs
    to hear of the mismatch once, not on every turn of every run.
    """
    key = (scenario, tool)
    with _warned_lock:
        if key in _warned or len(_warned) >= _MAX_WARNED:
            return
        _warned.add(key)
    logger.warning(
        "model %r: scenario %r calls tool %r, which the request does not offer; the call is "
        "dropped (logged once per scenario and tool)",
        model,
        scenario,
        tool,
    )


def _formatted_answer(text_setting: Any, text: str) -> str:
    """``text`` as the answer format asks: JSON synthesized from a ``json_schema`` format's
    schema, any JSON object for ``json_object``, the text itself otherwise."""
    fmt = text_setting.get("format") if isinstance(text_setting, Mapping) else None
    if not isinstance(fmt, Mapping):
        return text
    if fmt.get("type") == "json_object":
        return codec.dumps({"answer": text}).decode()
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, Mapping):
        return text
    name = str(fmt.get("name") or "answer")
    return codec.dumps(synthesize(schema, name, path="text.format.schema")).decode()


def _open(out: ResponseBuilder, planned: PlannedItem) -> Sequence[Event]:
    return out.open_call(planned.name) if planned.name is not None else out.open_text()
