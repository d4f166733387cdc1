"""The embedded simulated model: scripted turns, paced like a real inference engine.

:class:`SimEngine` answers a :class:`~hotloop.protocol.generation.GenerationRequest` in two
steps. :meth:`SimEngine.plan` decides *what* the model says — pure and deterministic: the
scenario's turn for this conversation, or the behaviour of a generic model for requests the
script does not cover. :meth:`SimEngine.generate` streams it with the timing of the
:class:`~hotloop.sim.latency.LatencyProfile`: service overhead, time to first token with
prefill of the prompt tokens missing from the engine's prefix cache, then one delta per token.

The turn is derived from the conversation itself (how many tool results it holds), so any
client works: the gateway, the official SDKs, a hand-written loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import Generation, GenerationRequest
from hotloop.protocol.requests import ToolDef
from hotloop.sim.latency import LatencyProfile, estimate_tokens
from hotloop.sim.scenario import Scenario, ScriptedCall
from hotloop.sim.synth import MAX_ARGUMENT_BYTES, synthesize
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import FunctionCall, Item, Message
from hotloop.wire.responses import Usage

__all__ = ["PlannedItem", "PrefixCache", "SimEngine"]

#: Characters per streamed delta: one delta per (estimated) token.
CHARS_PER_TOKEN = 4
#: In the ``zero`` profile, yield to the event loop every this many deltas so other lanes and
#: connections make progress and cancellation is prompt.
_YIELD_EVERY = 64


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One output item the model will produce: text (``name`` is None) or a function call."""

    text: str
    name: str | None = None

    @property
    def is_call(self) -> bool:
        return self.name is not None


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

    ``scenarios`` maps model names to the scenario each one plays. ``sleep`` and ``clock`` are
    injectable so tests can run on a fake clock.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Scenario],
        profile: LatencyProfile,
        *,
        prefix_cache_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.scenarios = dict(scenarios)
        self.profile = profile
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        self._clock = clock
        self._sleep = sleep

    # -- what the model says ---------------------------------------------------------------

    def plan(self, request: GenerationRequest) -> list[PlannedItem]:
        """The items the model outputs for ``request``: scripted, or generic behaviour."""
        scenario = self.scenarios[request.model]
        context = request.context
        offered = {tool.name: tool for tool in request.tools}
        position = scenario.turn_for(context.tool_results)
        text: str | None = None
        calls: list[ScriptedCall] = []
        if position is not None:
            turn = scenario.turns[position]
            answered = context.tool_results - scenario.calls_before(position)
            if not turn.calls and context.answers_since_result > 0:
                position = None  # the final answer was given: the script is over
            else:
                # Only calls the request offers are ever made: never a tool it did not offer.
                calls = [call for call in turn.calls[answered:] if call.name in offered]
                text = turn.text if answered == 0 else None
        if request.tool_choice == "none":
            calls = []
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
        if position is None and not calls and text is None:
            text = self._generic_text(context)
        if text and not calls:
            # A final answer asked to follow a JSON schema (``text.format``) is a value of it.
            text = _formatted_answer(request.settings.get("text"), text)
        items = [PlannedItem(text)] if text else []
        items.extend(PlannedItem(call.arguments, call.name) for call in calls)
        if not items:
            items.append(PlannedItem(self._generic_text(context)))
        return items

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
                if isinstance(item, Message) and item.role == "user":
                    last_user = item.text
                    break
            if last_user:
                break
        if last_user:
            return f"Understood. (Simulated reply to: {last_user[:120]!r}.)"
        return "Done."

    # -- how long it takes -----------------------------------------------------------------

    async def generate(self, request: GenerationRequest, out: ResponseBuilder) -> Generation:
        """Stream the planned turn into ``out`` with the profile's timing; records usage."""
        profile = self.profile
        started = self._clock()
        items = self.plan(request)
        context = request.context
        instruction_tokens = estimate_tokens(request.instructions or "")
        cached = self.prefix_cache.cached_tokens(context)
        uncached = context.tokens - cached
        prompt_tokens = context.tokens + instruction_tokens
        deadline = (
            started
            + profile.service_time(request.processed_tokens)
            + profile.first_token_time(uncached)
        )
        interval = profile.token_interval()
        budget = request.max_output_tokens
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
