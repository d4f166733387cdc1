"""Token-exact continuation on llama.cpp's native ``/completion`` (``LlamaCppBackend``).

The prompt of each turn is the previous turn's prompt, then the exact tokens the model
generated, then the new input: so llama.cpp reuses all of it from the slot's cache, where the
chat endpoint (which re-renders the model's call from parsed JSON) stops inside the call. The
first half checks the rendering, the stream parser and the grammar without an engine; the
second runs whole tool loops on the real engine through the gateway, with the official SDK
and hotloop's runtime, and compares the cached token counts with the chat upstream's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest

import hotloop
from hotloop import Agent, Runner, tool
from hotloop.backends.chat import ChatBackend
from hotloop.backends.llamacpp import (
    HERMES,
    HERMES_THINKING,
    CallMarkers,
    ChatTemplate,
    LlamaCppBackend,
    Prompt,
    PromptRenderer,
    RawTurnParser,
    TemplateError,
    markers_for,
    tool_grammar,
)
from hotloop.backends.routing import build_backend
from hotloop.backends.upstream import UpstreamConfig, UpstreamConfigError
from hotloop.errors import APIError
from hotloop.gateway import GatewayServer
from hotloop.protocol.assembler import ResponseStream
from hotloop.protocol.builder import ResponseBuilder
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.generation import GenerationRequest
from hotloop.protocol.requests import CreateRequest, ToolDef
from hotloop.testing.llamacpp import ANSWER_TEXT, TOOL_CHAT_TEMPLATE, LlamaServer
from hotloop.wire import codec
from hotloop.wire.events import Event
from hotloop.wire.items import FunctionCall, FunctionCallOutput, Item, Message, Reasoning
from hotloop.wire.responses import ResponseObject

MODEL = "tiny"
WEATHER_TOOL = ToolDef(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "Current weather for a city.",
)
CLOCK_TOOL = ToolDef(
    "get_time",
    {
        "type": "object",
        "properties": {"tz": {"type": "string"}, "utc_offset": {"type": "integer"}},
        "required": ["tz"],
    },
    "The current time in a time zone.",
)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": dict(WEATHER_TOOL.parameters),
}
CLOCK = {
    "type": "function",
    "name": "get_time",
    "description": "The current time in a time zone.",
    "parameters": dict(CLOCK_TOOL.parameters),
}


# -- without an engine: rendering ---------------------------------------------------------------


def renderer(source: str = TOOL_CHAT_TEMPLATE) -> PromptRenderer:
    rendering = PromptRenderer(
        ChatTemplate(source, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    )
    rendering.check()
    return rendering


def prompt_of(rendering: PromptRenderer, context: Conversation) -> Prompt:
    return rendering.prompt(
        context, instructions="You answer weather questions.", tools=[WEATHER_TOOL], model=MODEL
    )


def call(call_id: str, item_id: str) -> FunctionCall:
    return FunctionCall(call_id=call_id, name="get_weather", arguments='{"city":"x"}', id=item_id)


def pieces(prompt: Prompt) -> list[Any]:
    value = codec.loads(prompt.body)
    return value if isinstance(value, list) else [value]


def generate(
    context: Conversation, items: Sequence[Item], text: str, tokens: Sequence[int] | None
) -> Conversation:
    """What the gateway does with a turn: the backend notes the output, the core extends."""
    from hotloop.backends.llamacpp import template

    context.note(
        template._GENERATED,
        template.Generated(
            model=MODEL,
            text=text,
            tokens=tuple(tokens) if tokens is not None else None,
            item_ids=tuple(getattr(item, "id", None) for item in items),
        ),
    )
    return context.extend(items)


def test_the_tiny_template_renders_segment_by_segment() -> None:
    rendering = renderer()
    assert rendering.incremental, rendering.reason
    assert rendering.assistant_end == "<|im_end|>\n"
    context = Conversation.start([Message(role="user", content="Weather in Paris?")])
    whole = rendering._whole
    for turn in (
        [call("c1", "fc_1")],
        [FunctionCallOutput(call_id="c1", output="sunny")],
        [Message(role="assistant", content="Sunny.")],
        [Message(role="user", content="And Rome?")],
    ):
        context = context.extend(turn)
        render = rendering.prompt(context, instructions="Sys.", tools=[WEATHER_TOOL], model=MODEL)
        expected = whole(context, _context_for("Sys."))
        assert render.text == expected.text
        assert render.generation_prompt == "<|im_start|>assistant\n"


def _context_for(instructions: str) -> Any:
    from hotloop.backends.llamacpp import template

    tools = (template._template_tool(WEATHER_TOOL),)
    system = ({"role": "system", "content": instructions},)
    return template._Context(("whole",), system, tools, MODEL)


def test_the_next_prompt_is_this_prompt_then_the_generated_tokens_byte_for_byte() -> None:
    rendering = renderer()
    context = Conversation.start([Message(role="user", content="Weather in Paris?")])
    first = prompt_of(rendering, context)
    assert isinstance(codec.loads(first.body), str)  # no token ids yet: one plain string
    generated = '<tool_call>{"name":"get_weather","arguments":{"city":"x"}}</tool_call>'
    context = generate(context, [call("c1", "fc_a_0")], generated, [44, 19324, 79])
    context = context.extend([FunctionCallOutput(call_id="c1", output="sunny")])
    second = prompt_of(rendering, context)
    assert second.text.startswith(first.text + generated)
    assert second.text[len(first.text + generated) :].startswith("<|im_end|>\n<|im_start|>user")
    # The token form: the first prompt's string, the generated ids, then the new text.
    assert pieces(second)[:4] == [first.text, 44, 19324, 79]
    assert second.exact_segments == 1
    context = generate(context, [call("c2", "fc_b_0")], generated, [7, 8])
    context = context.extend([FunctionCallOutput(call_id="c2", output="rainy")])
    third = prompt_of(rendering, context)
    assert third.text.startswith(second.text + generated)
    assert pieces(third)[: len(pieces(second))] == pieces(second)
    assert pieces(third)[len(pieces(second)) : len(pieces(second)) + 2] == [7, 8]


def test_without_token_ids_the_generated_text_is_sent() -> None:
    rendering = renderer()
    context = Conversation.start([Message(role="user", content="Weather in Paris?")])
    first = prompt_of(rendering, context)
    context = generate(context, [call("c1", "fc_1")], CALL_TEXT, None)
    context = context.extend([FunctionCallOutput(call_id="c1", output="sunny")])
    second = prompt_of(rendering, context)
    assert codec.loads(second.body) == second.text  # one string: no token ids anywhere
    assert second.text.startswith(first.text + CALL_TEXT + "<|im_end|>\n")
    assert second.exact_segments == 1


def test_an_empty_conversation_and_odd_content_are_rendered_whole() -> None:
    rendering = renderer()
    empty = rendering.prompt(Conversation.start(), instructions="Sys.", tools=(), model=MODEL)
    assert empty.text == "<|im_start|>system\nSys.<|im_end|>\n<|im_start|>assistant\n"
    # A template that passes the probe but renders one conversation's earlier messages
    # differently once a given message follows: that conversation is rendered whole.
    odd = renderer(
        "{% if messages[-1].content == 'odd' %}ODD {% endif %}"
        "{% if add_generation_prompt and messages[-1].content == 'gen' %}GEN {% endif %}"
        + TOOL_CHAT_TEMPLATE
    )
    assert odd.incremental, odd.reason
    for word in ("odd", "gen"):
        context = Conversation.start([Message(role="user", content="Hi")])
        context = generate(context, [call("c1", "fc_1")], "<raw>", [5])
        context = context.extend([Message(role="user", content=word)])
        prompt = prompt_of(odd, context)
        assert prompt.text.startswith(f"{word.upper()} ") and "<raw>" not in prompt.text


def test_a_continuation_renders_only_its_new_segments() -> None:
    rendering = renderer()
    calls = 0
    render = rendering.template.render

    def counting(*args: Any, **kwargs: Any) -> str:
        nonlocal calls
        calls += 1
        return render(*args, **kwargs)

    rendering.template.render = counting  # type: ignore[method-assign]
    context = Conversation.start([Message(role="user", content="Weather in Paris?")])
    for n in range(6):
        context = generate(context, [call(f"c{n}", f"fc_{n}")], "<tool_call>…</tool_call>", [1])
        context = context.extend([FunctionCallOutput(call_id=f"c{n}", output="sunny")])
        prompt_of(rendering, context)
        before = calls
        prompt_of(rendering, context)
        assert calls == before  # everything memoized on the snapshots
    before = calls
    context = generate(context, [call("c9", "fc_9")], "<tool_call>…</tool_call>", [1])
    context = context.extend([FunctionCallOutput(call_id="c9", output="sunny")])
    prompt_of(rendering, context)
    # The new input segment (two renderings) and the generation prompt after it (two),
    # whatever the length of the history.
    assert calls - before == 4


def test_a_rebuilt_conversation_finds_the_generated_turns_by_their_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotloop.backends.llamacpp import template

    remembered: dict[tuple[str, int], Any] = {}
    rendering = PromptRenderer(
        ChatTemplate(TOOL_CHAT_TEMPLATE), lambda model, key: remembered.get((model, key))
    )
    assert rendering.check()
    user = Message(role="user", content="Weather in Paris?")
    first_call, result = call("c1", "fc_1"), FunctionCallOutput(call_id="c1", output="sunny")
    turn_by_turn = Conversation.start([user])
    generated = template.Generated(MODEL, CALL_TEXT, (44, 45), ("fc_1",))
    turn_by_turn.note(template._GENERATED, generated)
    turn_by_turn = turn_by_turn.extend([first_call]).extend([result])
    expected = prompt_of(rendering, turn_by_turn)
    assert expected.exact_segments == 1
    # The same history as one segment (rebuilt from the store): found by its rolling key.
    remembered[(MODEL, Conversation.start([user, first_call]).prefix_key)] = generated
    rebuilt = prompt_of(rendering, Conversation.start([user, first_call, result]))
    assert (rebuilt.body, rebuilt.text) == (expected.body, expected.text)
    # Re-sent by a client that drops item ids: still the same turn.
    anonymous = FunctionCall(call_id="c1", name="get_weather", arguments='{"city":"x"}')
    resent = prompt_of(rendering, Conversation.start([user, anonymous, result]))
    assert resent.body == expected.body and resent.exact_segments == 1
    # Other items at the same place (another response's ids) are rendered by the template.
    other = FunctionCall(call_id="c1", name="get_weather", arguments='{"city":"x"}', id="fc_9")
    foreign = prompt_of(rendering, Conversation.start([user, other, result]))
    assert foreign.exact_segments == 0


async def test_the_backend_remembers_the_latest_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    from hotloop.backends.llamacpp import backend as module

    monkeypatch.setattr(module, "_REMEMBERED_TURNS", 2)
    backend = await started_backend()
    out = ResponseBuilder(ResponseObject(id="resp_r", created_at=0, model=MODEL, status="x"))
    out.start()
    stream = module._CompletionStream(out, RawTurnParser(out, HERMES), "u")
    stream.feed(chunk(content=CALL_TEXT, tokens=[1, 2, 3]))
    stream.feed(chunk(content="", tokens=[9], stop=True, stop_type="eos"))
    contexts = [Conversation.start([Message(role="user", content=f"q{n}")]) for n in range(3)]
    for context in contexts:
        backend.finished(request_for(context), stream)
    keys = [("up", c.extend(out.output).prefix_key) for c in contexts]  # the upstream name
    assert backend._remembered(*keys[0]) is None  # forgotten: the oldest of three
    assert backend._remembered(*keys[1]) is not None
    assert backend._remembered(*keys[2]).tokens == (1, 2, 3)  # the end of turn left out
    empty = ResponseBuilder(ResponseObject(id="resp_e", created_at=0, model=MODEL, status="x"))
    nothing = module._CompletionStream(empty, RawTurnParser(empty, HERMES), "u")
    backend.finished(request_for(contexts[0]), nothing)  # no output: nothing to remember
    assert len(backend._recent) == 2
    await backend.aclose()


def test_output_that_was_not_generated_here_is_rendered_by_the_template() -> None:
    rendering = renderer()
    context = Conversation.start([Message(role="user", content="Weather in Paris?")])
    # A note for other items (another response's output) is not used.
    generate(context, [call("c1", "fc_other")], "<raw>", [1])
    context = context.extend([call("c1", "fc_1")])
    context = context.extend([FunctionCallOutput(call_id="c1", output="sunny")])
    prompt = prompt_of(rendering, context)
    assert '{"name":"get_weather","arguments":{"city": "x"}}' in prompt.text
    assert prompt.exact_segments == 0


def test_a_template_that_looks_at_the_whole_conversation_is_rendered_whole() -> None:
    # Numbering tool results by their place in the whole conversation (as some templates
    # number calls): a window cannot know the number.
    numbered = TOOL_CHAT_TEMPLATE.replace(
        "{{- '\\n<tool_response>\\n' }}", "{{- '\\n<tool_response n=' ~ loop.index ~ '>\\n' }}"
    )
    assert numbered != TOOL_CHAT_TEMPLATE
    rendering = renderer(numbered)
    assert not rendering.incremental
    assert "does not give the whole conversation" in rendering.reason
    backend = LlamaCppBackend(UpstreamConfig(urls=("http://127.0.0.1:9",)))
    backend.use_template(ChatTemplate(numbered))
    assert backend.renderer is not None and not backend.renderer.incremental
    context = Conversation.start([Message(role="user", content="Hi")])
    context = generate(context, [call("c1", "fc_1")], "<raw>", [1]).extend(
        [FunctionCallOutput(call_id="c1", output="sunny")]
    )
    prompt = prompt_of(rendering, context)
    assert "<tool_response n=4>" in prompt.text  # system, user, call, result
    assert isinstance(codec.loads(prompt.body), str) and "<raw>" not in prompt.text


def test_a_template_that_rewrites_the_assistant_text_is_rendered_whole() -> None:
    rewriting = TOOL_CHAT_TEMPLATE.replace(
        "'<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>'",
        "'<|im_start|>' + message.role + '\\n' + message.content | upper + '<|im_end|>'",
    )
    assert rewriting != TOOL_CHAT_TEMPLATE
    rendering = renderer(rewriting)
    assert not rendering.incremental
    assert "assistant message's text" in rendering.reason


def test_template_errors() -> None:
    with pytest.raises(TemplateError, match="not valid Jinja"):
        ChatTemplate("{% if %}")
    failing = ChatTemplate("{{ raise_exception('no system role') }}")
    with pytest.raises(TemplateError, match="no system role"):
        failing.render([], None, add_generation_prompt=True)
    broken = ChatTemplate("{{ messages[0].content + 1 }}")
    with pytest.raises(TemplateError, match="failed"):
        broken.render([{"role": "user", "content": "x"}], None, add_generation_prompt=False)
    rendering = PromptRenderer(failing)
    assert not rendering.check() and "no system role" in rendering.reason


def test_tojson_is_laid_out_as_python_json() -> None:
    template = ChatTemplate(
        "{{ tools[0] | tojson }}|{{ {'a': [1, {'b': none}], 'c': 'é'} | tojson(indent=2) }}"
        "|{{ strftime_now('%Y') | length }}|{{ bos_token }}"
    )
    text = template.render([], [{"x": 1, "y": [True, "s"]}], add_generation_prompt=False)
    assert text == (
        '{"x": 1, "y": [true, "s"]}|{\n  "a": [\n    1,\n    {\n      "b": null\n    }\n  ],'
        '\n  "c": "é"\n}|4|'
    )
    empty = ChatTemplate("{{ {} | tojson }}{{ [] | tojson(indent=2) }}")
    assert empty.render([], None, add_generation_prompt=False) == "{}[]"
    bos = ChatTemplate("{{ bos_token }}x", bos_token="<s>")
    assert bos.render([], None, add_generation_prompt=False) == "x"  # llama.cpp adds BOS


def test_template_messages_take_text_and_decode_arguments() -> None:
    from hotloop.backends.llamacpp import template_messages
    from hotloop.errors import InvalidMessage
    from hotloop.wire.items import ContentPart

    messages = template_messages(
        [
            Message(role="developer", content="Be brief."),
            Message(
                role="user",
                content=(ContentPart("input_text", "a"), ContentPart("input_text", "b")),
            ),
            FunctionCall(call_id="c", name="f", arguments="not json"),
        ]
    )
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"] == "ab"
    assert (
        messages[2]["content"] == ""
        and messages[2]["tool_calls"][0]["function"]["arguments"] == "not json"
    )
    image = ContentPart("input_image", None, {"image_url": "data:image/png;base64,AA=="})
    with pytest.raises(InvalidMessage, match="text only"):
        template_messages([Message(role="user", content=(image,))])


def test_markers_by_template_family() -> None:
    assert markers_for(TOOL_CHAT_TEMPLATE) == HERMES
    assert markers_for("<think>{{ x }}</think><tool_call>") == HERMES_THINKING
    assert markers_for("[TOOL_CALLS]") is None


# -- without an engine: the stream parser -----------------------------------------------------


def parse(
    chunks: Sequence[str], markers: CallMarkers = HERMES, *, calls: bool = True
) -> tuple[Item, ...]:
    out = ResponseBuilder(
        ResponseObject(id="resp_t", created_at=0, model=MODEL, status="in_progress")
    )
    events: list[Event] = list(out.start())
    parser = RawTurnParser(out, markers, parse_calls=calls)
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    events.extend(out.finish())
    stream = ResponseStream()
    for event in events:
        stream.receive(event)  # the canonical order a strict client checks
    return out.output


CALL_TEXT = '<tool_call>{"name":"get_weather","arguments":{"city":"x"}}</tool_call>'


def test_text_and_calls_become_items_whatever_the_chunking() -> None:
    raw = "  Let me check.\n" + CALL_TEXT + "\n" + CALL_TEXT.replace('"x"', '"y"') + "\n"
    for size in (1, 2, 3, 7, len(raw)):
        output = parse([raw[i : i + size] for i in range(0, len(raw), size)])
        message, first, second = output
        assert isinstance(message, Message) and message.text == "Let me check."
        assert isinstance(first, FunctionCall) and first.arguments == '{"city":"x"}'
        assert isinstance(second, FunctionCall) and second.arguments == '{"city":"y"}'
        assert first.name == "get_weather" and first.call_id != second.call_id


def test_arguments_stream_exactly_as_written() -> None:
    spaced = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": {"in": ["x"]}}}\n</tool_call>'
    )
    for size in (1, 2, 5, len(spaced)):
        [item] = parse([spaced[i : i + size] for i in range(0, len(spaced), size)])
        assert isinstance(item, FunctionCall)
        assert item.arguments == '{"city": {"in": ["x"]}}'
    # A token limit inside the arguments: the call ends with what was written.
    [cut] = parse(['<tool_call>{"name":"get_weather","arguments":{"city":"x'])
    assert isinstance(cut, FunctionCall) and cut.arguments == '{"city":"x'
    [held] = parse(['<tool_call>{"name":"get_weather","arguments":{"a":{"b":1}'])
    assert isinstance(held, FunctionCall) and held.arguments == '{"a":{"b":1}'
    [bad_name] = parse(['<tool_call>{"name":"\\x","arguments":{}}</tool_call>'])
    assert isinstance(bad_name, Message)  # a name that is not a JSON string: text


def test_a_call_is_complete_the_moment_its_closing_marker_arrives() -> None:
    out = ResponseBuilder(
        ResponseObject(id="resp_t", created_at=0, model=MODEL, status="in_progress")
    )
    out.start()
    parser = RawTurnParser(out, HERMES)
    opened = parser.feed(CALL_TEXT[:-3])  # the call opens as soon as its name is read
    assert [event.type for event in opened] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
    ]
    events = parser.feed(CALL_TEXT[-3:])
    assert [event.type for event in events][-2:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]


def test_what_is_not_a_call_stays_text() -> None:
    [message] = parse(["<tool_call>not json</tool_call> and <tool_", "x"])
    assert isinstance(message, Message)
    assert message.text == "<tool_call>not json</tool_call> and <tool_x"
    # A token limit inside a call: what the model wrote stays visible.
    before, cut = parse(['Hi <tool_call>{"name":"get_we'])
    assert isinstance(before, Message) and before.text == "Hi"
    assert isinstance(cut, Message) and cut.text == '<tool_call>{"name":"get_we'
    [plain] = parse([CALL_TEXT], calls=False)
    assert isinstance(plain, Message) and plain.text == CALL_TEXT
    # Another key first: read whole at the closing marker.
    [late_name] = parse(['<tool_call>{"arguments":"{}","name":"f"}</tool_call>'])
    assert isinstance(late_name, FunctionCall) and late_name.arguments == "{}"
    [reordered] = parse(['<tool_call>{"arguments":{"a":1},"name":"f"}</tool_call>'])
    assert isinstance(reordered, FunctionCall) and reordered.arguments == '{"a":1}'
    [held] = parse(["Done <tool_"])  # held back as a possible marker, then the end
    assert isinstance(held, Message) and held.text == "Done <tool_"
    assert parse(["  \n "]) == ()


def test_reasoning_between_think_markers() -> None:
    output = parse(
        ["<th", "ink>Hmm, wea", "ther.</thi", "nk>\n\nIt is ", "sunny."], HERMES_THINKING
    )
    reasoning, message = output
    assert isinstance(reasoning, Reasoning)
    assert reasoning.extra["content"][0]["text"] == "Hmm, weather."
    assert isinstance(message, Message) and message.text == "It is sunny."
    [unfinished] = parse(["<think>still thinking", " and </thi"], HERMES_THINKING)
    assert isinstance(unfinished, Reasoning)


# -- without an engine: the grammar and the request ---------------------------------------------


def test_the_grammar_follows_the_tools_schemas() -> None:
    tools = [
        WEATHER_TOOL,
        CLOCK_TOOL,
        ToolDef(
            "search",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "mode": {"enum": ["fast", "deep"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "limit": {"type": ["integer", "null"]},
                    "when": {"anyOf": [{"type": "number"}, {"const": "now"}]},
                    "flag": {"type": "boolean"},
                    "meta": {"type": "object"},
                    "any": {},
                },
            },
        ),
        ToolDef("ping", {"type": "object", "properties": {}}),
        ToolDef("noargs"),
    ]
    grammar = tool_grammar(tools, HERMES)
    assert grammar.startswith("root ::= tool-call (space tool-call)*\n")
    assert '"<tool_call>" space "{" space "\\"name\\"" space ":" space' in grammar
    assert '"\\"get_weather\\"" space "," space "\\"arguments\\""' in grammar
    # Required keys in order, then each optional one, in order, or not.
    assert (
        'get-time-args ::= "{" space get-time-args-tz-kv '
        '("," space get-time-args-utc-offset-kv)? "}" space\n'
    ) in grammar
    assert (
        'search-args ::= "{" space (search-args-query-kv ("," space search-args-mode-kv)?'
        in grammar
    )
    assert "noargs-call ::= " in grammar and "space object\n" in grammar
    assert '("\\"fast\\"" | "\\"deep\\"") space' in grammar
    assert '"\\"now\\"" space' in grammar
    assert 'ping-args ::= "{" space "}" space' in grammar
    clash = tool_grammar([ToolDef("string"), ToolDef("string")], HERMES)
    assert "string-call ::=" in clash and "string-call-2 ::=" in clash
    single = tool_grammar([WEATHER_TOOL], HERMES, parallel=False)
    assert single.startswith("root ::= tool-call\n")


async def started_backend(**options: Any) -> LlamaCppBackend:
    backend = LlamaCppBackend(
        UpstreamConfig(urls=("http://127.0.0.1:9/v1",), models={MODEL: "up"}), **options
    )
    backend.use_template(ChatTemplate(TOOL_CHAT_TEMPLATE))
    return backend


def request_for(context: Conversation, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        request=CreateRequest(model=MODEL, input=(), **fields), context=context, processed_tokens=0
    )


async def test_the_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    from hotloop.backends.llamacpp import backend as module

    backend = await started_backend(pin_slots=True)
    assert backend.config.urls == ("http://127.0.0.1:9",)  # the native endpoints are at the root
    backend.slots = 4
    context = Conversation.start([Message(role="user", content="Hi")])
    body = codec.loads(
        backend.payload(
            request_for(
                context,
                tools=(WEATHER_TOOL, CLOCK_TOOL),
                max_output_tokens=32,
                settings={"temperature": 0, "seed": 7, "top_p": None},
            ),
            full=False,
        )
    )
    assert body["stream"] and body["cache_prompt"] and body["return_tokens"]
    assert body["grammar_lazy"] is True
    assert body["grammar_triggers"] == [{"type": 1, "value": "<tool_call>"}]
    assert body["preserved_tokens"] == ["<tool_call>", "</tool_call>"]
    assert body["n_predict"] == 32 and body["temperature"] == 0 and body["seed"] == 7
    assert "top_p" not in body
    assert body["id_slot"] == backend.slot_for(context) < 4
    assert body["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # One slot per conversation, the same every turn; conversations spread over the slots.
    later = context.extend([Message(role="assistant", content="Hello")])
    assert backend.slot_for(later) == backend.slot_for(context)
    slots = {
        backend.slot_for(Conversation.start([Message(role="user", content=f"task {n}")]))
        for n in range(40)
    }
    assert slots == {0, 1, 2, 3}
    # New conversations take the slots in turn: N conversations put N/S on each slot.
    fresh = await started_backend(pin_slots=True)
    fresh.slots = 2
    firsts = [Conversation.start([Message(role="user", content=f"t{n}")]) for n in range(5)]
    assert [fresh.slot_for(c) for c in firsts[:4]] == [0, 1, 0, 1]
    monkeypatch.setattr(module, "_PINNED_CONVERSATIONS", 4)
    assert fresh.slot_for(firsts[1]) == 1  # remembered, now the most recent
    assert fresh.slot_for(firsts[4]) == 0  # the fifth: the least recent is forgotten
    assert fresh.slot_for(firsts[0]) == 1  # forgotten: a slot anew
    await fresh.aclose()

    forced = codec.loads(
        backend.payload(
            request_for(context, tools=(WEATHER_TOOL, CLOCK_TOOL), forced_function="get_time"),
            full=False,
        )
    )
    assert forced["grammar_lazy"] is False and "grammar_triggers" not in forced
    assert "get-weather" not in forced["grammar"] and "get-time-call" in forced["grammar"]
    assert "required" not in forced
    unknown = codec.loads(
        backend.payload(
            request_for(context, tools=(WEATHER_TOOL,), forced_function="nope"), full=False
        )
    )
    assert "get-weather-call" in unknown["grammar"]  # never an empty choice of tools
    thinking = await started_backend(markers=HERMES_THINKING)
    body = codec.loads(thinking.payload(request_for(context, tools=(WEATHER_TOOL,)), full=False))
    assert body["preserved_tokens"] == ["<tool_call>", "</tool_call>", "<think>", "</think>"]
    await thinking.aclose()
    none = codec.loads(
        backend.payload(request_for(context, tools=(WEATHER_TOOL,), tool_choice="none"), full=False)
    )
    assert "grammar" not in none
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    structured = codec.loads(
        backend.payload(
            request_for(
                context, settings={"text": {"format": {"type": "json_schema", "schema": schema}}}
            ),
            full=False,
        )
    )
    assert structured["json_schema"] == schema
    loose = codec.loads(
        backend.payload(
            request_for(context, settings={"text": {"format": {"type": "json_object"}}}), full=False
        )
    )
    assert loose["json_schema"] == {"type": "object"}
    unformatted = codec.loads(
        backend.payload(request_for(context, settings={"text": {"verbosity": "low"}}), full=False)
    )
    assert "json_schema" not in unformatted
    plain = codec.loads(
        backend.payload(
            request_for(context, settings={"text": {"format": {"type": "text"}}}), full=False
        )
    )
    assert "json_schema" not in plain and "id_slot" in plain
    image = Conversation.start([Message(role="user", content=())]).extend(
        [Message(role="user", content=(_image(),))]
    )
    with pytest.raises(APIError, match="text only") as info:
        backend.payload(request_for(image), full=False)
    assert info.value.code == "invalid_input"
    await backend.aclose()


def _image() -> Any:
    from hotloop.wire.items import ContentPart

    return ContentPart("input_image", None, {"image_url": "data:image/png;base64,AA=="})


async def test_a_template_that_cannot_render_a_conversation_is_the_clients_error() -> None:
    backend = LlamaCppBackend(UpstreamConfig(urls=("http://127.0.0.1:9",)))
    with pytest.raises(RuntimeError, match="start"):
        backend.render(request_for(Conversation.start([Message(role="user", content="x")])))
    strict = TOOL_CHAT_TEMPLATE.replace(
        "{%- for message in messages %}",
        "{%- for message in messages %}{% if message.content == 'boom' %}"
        "{{ raise_exception('no boom') }}{% endif %}",
    )
    backend.use_template(ChatTemplate(strict))
    with pytest.raises(APIError, match="no boom") as info:
        backend.render(request_for(Conversation.start([Message(role="user", content="boom")])))
    assert info.value.code == "invalid_input"
    with pytest.raises(UpstreamConfigError, match="not a known family"):
        backend_without = LlamaCppBackend(UpstreamConfig(urls=("http://127.0.0.1:9",)))
        backend_without.use_template(ChatTemplate("{{ messages }}"))
    await backend.aclose()


def completion_stream(chunks: Sequence[bytes | str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/props":
            return httpx.Response(200, json={"chat_template": TOOL_CHAT_TEMPLATE, "total_slots": 2})
        body = b"".join((c if isinstance(c, bytes) else f"data: {c}\n\n".encode()) for c in chunks)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def run_mock(chunks: Sequence[bytes | str], **fields: Any) -> ResponseObject:
    backend = LlamaCppBackend(
        UpstreamConfig(urls=("http://mock",), models={MODEL: MODEL}, max_attempts=1),
        transport=completion_stream(chunks),
    )
    await backend.start()
    assert backend.slots == 2
    out = ResponseBuilder(
        ResponseObject(
            id="resp_m",
            created_at=0,
            model=MODEL,
            status="in_progress",
            settings=fields.pop("settings", {}),
        )
    )
    out.start()
    context = Conversation.start([Message(role="user", content="Hi")])
    try:
        async for _events in backend.generate(request_for(context, **fields), out):
            pass
        out.finish()
        return out.response
    finally:
        await backend.aclose()


def chunk(**fields: Any) -> str:
    return codec.dumps(fields).decode()


async def test_the_stream_without_token_ids_and_cut_by_the_limit() -> None:
    response = await run_mock(
        [
            chunk(content="All "),
            chunk(content="done", tokens=[]),
            chunk(
                content="",
                stop=True,
                stop_type="limit",
                tokens_evaluated=10,
                tokens_predicted=2,
                timings={"cache_n": 4, "prompt_n": 6},
            ),
        ]
    )
    assert response.status == "incomplete"
    assert response.output[0].text == "All done"  # type: ignore[union-attr]
    assert response.usage is not None
    assert (
        response.usage.input_tokens,
        response.usage.cached_tokens,
        response.usage.output_tokens,
    ) == (10, 4, 2)


async def test_stream_failures() -> None:
    with pytest.raises(APIError, match="mid-stream: busy") as info:
        await run_mock([chunk(content="x"), chunk(error={"message": "busy"})])
    assert info.value.code == "upstream_error"
    with pytest.raises(APIError) as info:
        await run_mock([chunk(content="x")])  # the body ends before the last event
    assert info.value.code == "upstream_stream_cut"
    with pytest.raises(APIError) as info:
        await run_mock([chunk(content=3)])
    assert info.value.code == "upstream_bad_stream"
    with pytest.raises(APIError) as info:
        await run_mock([chunk(content="", stop=True), chunk(content="late")])
    assert info.value.code == "upstream_bad_stream"


async def test_start_needs_a_llama_cpp_server() -> None:
    def no_props(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404 if request.url.path == "/props" else 200, json={"data": []})

    config = UpstreamConfig(urls=("http://mock",), models={MODEL: MODEL})
    backend = LlamaCppBackend(config, transport=httpx.MockTransport(no_props))
    with pytest.raises(UpstreamConfigError, match=r"is it a llama\.cpp server"):
        await backend.start()
    await backend.aclose()
    # With the template given, a server without /props still serves (no slots known).
    given = LlamaCppBackend(
        config, chat_template=TOOL_CHAT_TEMPLATE, transport=httpx.MockTransport(no_props)
    )
    await given.start()
    assert given.slots == 0 and given.renderer is not None
    await given.aclose()

    def no_template(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"total_slots": 1})

    bare = LlamaCppBackend(config, transport=httpx.MockTransport(no_template))
    with pytest.raises(UpstreamConfigError, match="no chat template"):
        await bare.start()
    await bare.aclose()


def test_the_config_names_the_backend() -> None:
    backend = build_backend(UpstreamConfig(urls=("http://127.0.0.1:8080/v1",), api="llamacpp"))
    assert isinstance(backend, LlamaCppBackend)
    assert UpstreamConfig.from_dict({"url": "http://h:1", "api": "llamacpp"}).api == "llamacpp"


# -- on the engine ---------------------------------------------------------------------------


class RecordingBackend(LlamaCppBackend):
    """Keeps each turn's prompt, to compare one turn's prompt with the next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[Prompt] = []

    def payload(self, request: GenerationRequest, *, full: bool) -> bytes:
        self.prompts.append(self.render(request))
        return super().payload(request, full=full)


def config_for(server: LlamaServer) -> UpstreamConfig:
    return UpstreamConfig(urls=(f"{server.base_url}/v1",), models={MODEL: MODEL})


async def sdk_loop(gateway: GatewayServer, task: str, *, tools: Any = (WEATHER,)) -> list[Any]:
    """The official SDK in WebSocket mode: the tool loop until the model answers."""
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
    responses = []
    try:
        async with sdk.responses.connect() as connection:
            previous: str | None = None
            new_input: Any = task
            for _ in range(6):
                await connection.response.create(
                    model=MODEL,
                    input=new_input,
                    tools=list(tools),
                    instructions="You answer weather questions.",
                    previous_response_id=previous,
                    store=False,
                    temperature=0,
                )
                response = None
                async for event in connection:
                    if event.type in ("response.completed", "response.failed", "error"):
                        response = getattr(event, "response", event)
                        break
                assert response is not None and response.status == "completed", response
                responses.append(response)
                calls = [item for item in response.output if item.type == "function_call"]
                if not calls:
                    break
                previous = response.id
                new_input = [
                    {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"}
                    for c in calls
                ]
    finally:
        await sdk.close()
    return responses


def usage_of(responses: Sequence[Any]) -> list[tuple[int, int, int]]:
    return [
        (r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens, r.usage.output_tokens)
        for r in responses
    ]


@pytest.fixture
async def exact_gateway(
    llama_server: LlamaServer,
) -> AsyncIterator[tuple[GatewayServer, RecordingBackend]]:
    backend = RecordingBackend(config_for(llama_server))
    async with GatewayServer(backend) as server:
        yield server, backend


async def test_each_turn_reuses_the_whole_previous_prompt_and_output(
    exact_gateway: tuple[GatewayServer, RecordingBackend],
) -> None:
    gateway, backend = exact_gateway
    assert backend.renderer is not None and backend.renderer.incremental
    responses = await sdk_loop(gateway, "What is the weather in Paris? (token-exact)")
    # The tiny model: call, result, call, result, "All done."
    assert [r.output[0].type for r in responses] == ["function_call", "function_call", "message"]
    assert responses[-1].output_text == ANSWER_TEXT
    call = responses[0].output[0]
    assert call.name == "get_weather" and codec.loads(call.arguments) == {"city": "x"}
    usage = usage_of(responses)
    for (prompt, _, output), (_, cached, _) in itertools.pairwise(usage):
        # Everything in the slot after the last turn: its prompt and every token it
        # generated but the end-of-turn token (sampled, never evaluated).
        assert cached == prompt + output - 1
    # The prompts themselves: each is the previous one, then the generated tokens.
    prompts = backend.prompts
    assert len(prompts) == 3
    for before, after, response in zip(prompts, prompts[1:], responses, strict=False):
        assert after.text.startswith(before.text)
        assert after.exact_segments == before.exact_segments + 1
        earlier, later = pieces(before), pieces(after)
        assert later[: len(earlier)] == earlier
        generated = later[len(earlier) :]
        ids = [p for p in generated[: response.usage.output_tokens] if isinstance(p, int)]
        assert len(ids) == response.usage.output_tokens - 1


async def test_the_chat_upstream_on_the_same_engine_reuses_less(
    llama_server: LlamaServer, exact_gateway: tuple[GatewayServer, RecordingBackend]
) -> None:
    gateway, _ = exact_gateway
    exact = usage_of(await sdk_loop(gateway, "What is the weather in Oslo? (compare)"))
    async with GatewayServer(ChatBackend(config_for(llama_server))) as chat_gateway:
        chat = usage_of(await sdk_loop(chat_gateway, "What is the weather in Oslo? (compare)"))
    assert len(exact) == len(chat) == 3
    for turns in (exact, chat):
        for (prompt, _, _), (_, cached, _) in itertools.pairwise(turns):
            assert cached >= prompt  # both reuse the previous prompt...
    # ...but only the exact continuation reuses the model's own call: 26 of its 27 tokens
    # on each turn, where the chat endpoint's re-rendered call matches its first few.
    exact_beyond = [c - p for (p, _, _), (_, c, _) in itertools.pairwise(exact)]
    chat_beyond = [c - p for (p, _, _), (_, c, _) in itertools.pairwise(chat)]
    outputs = [o for _, _, o in exact[:-1]]
    assert exact_beyond == [o - 1 for o in outputs]
    for ours, theirs in zip(exact_beyond, chat_beyond, strict=True):
        assert ours - theirs >= 10, (exact, chat)


async def test_the_runtime_runs_the_loop(
    exact_gateway: tuple[GatewayServer, RecordingBackend],
) -> None:
    gateway, _ = exact_gateway
    seen: list[str] = []

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        seen.append(city)
        return "sunny"

    client = hotloop.connect(gateway.base_url)
    try:
        agent = Agent(MODEL, "You answer weather questions (runtime).", [get_weather])
        result = await Runner.run(agent, "Weather in Lyon?", client=client)
    finally:
        await client.close()
    assert result.turns == 3 and seen == ["x", "x"]
    assert result.final_output == ANSWER_TEXT
    assert result.usage.cached_tokens > 0


@pytest.mark.parametrize("incremental", [True, False], ids=["previous-response-id", "resend"])
async def test_over_http_a_rebuilt_conversation_continues_token_for_token(
    exact_gateway: tuple[GatewayServer, RecordingBackend], incremental: bool
) -> None:
    """Over HTTP the gateway rebuilds the conversation (from its store, or from the re-sent
    history): the model's turns are still sent as generated, from what the backend keeps."""
    gateway, _ = exact_gateway

    @tool(reads=["weather:{city}"])
    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        return "sunny"

    client = hotloop.connect(gateway.base_url, transport="http", incremental=incremental)
    try:
        agent = Agent(MODEL, "You answer weather questions (http).", [get_weather])
        result = await Runner.run(agent, f"Weather in Nice? ({incremental})", client=client)
    finally:
        await client.close()
    assert result.turns == 3 and result.final_output == ANSWER_TEXT
    usage = [step.usage for step in result.steps]
    for before, after in itertools.pairwise(usage):
        assert before is not None and after is not None
        assert after.cached_tokens == before.input_tokens + before.output_tokens - 1


async def test_a_forced_function_and_no_tools_at_all(
    exact_gateway: tuple[GatewayServer, RecordingBackend],
) -> None:
    gateway, _ = exact_gateway
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k")
    try:
        forced = await sdk.responses.create(
            model=MODEL,
            input="What time is it in Tokyo?",
            tools=[WEATHER, CLOCK],
            tool_choice={"type": "function", "name": "get_time"},
            temperature=0,
        )
        [call] = forced.output
        assert call.type == "function_call" and call.name == "get_time"
        assert "tz" in codec.loads(call.arguments)
        # tool_choice none: no grammar and no call parsing; the tiny model writes call
        # markup as text until the token limit.
        text = await sdk.responses.create(
            model=MODEL,
            input="Weather?",
            tools=[WEATHER],
            tool_choice="none",
            max_output_tokens=12,
            temperature=0,
        )
        assert text.status == "incomplete"
        assert text.output[0].type == "message" and "<tool_call>" in text.output_text
    finally:
        await sdk.close()


async def test_pinned_slots_when_conversations_outnumber_them(llama_server: LlamaServer) -> None:
    backend = LlamaCppBackend(config_for(llama_server), pin_slots=True)
    async with GatewayServer(backend) as gateway:
        assert backend.slots == 2
        loops = await asyncio.gather(
            *(sdk_loop(gateway, f"Weather in city {n}? (pinned)") for n in range(4))
        )
        slots = await llama_server.aslots()
    assert all(len(loop) == 3 and loop[-1].output_text == ANSWER_TEXT for loop in loops)
    assert {slot["id"] for slot in slots} == {0, 1}


async def test_models_are_discovered_at_the_servers_root(llama_server: LlamaServer) -> None:
    backend = LlamaCppBackend(UpstreamConfig(urls=(f"{llama_server.base_url}/v1",)))
    await backend.start()
    try:
        assert list(backend.models()) == [llama_server.alias]
        assert backend.slots == llama_server.n_slots
    finally:
        await backend.aclose()
