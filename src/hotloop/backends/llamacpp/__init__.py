"""llama.cpp's native ``/completion`` behind the gateway, continuing each turn token for token.

An engine's chat endpoint re-renders the whole conversation every turn from parsed messages,
so the model's own previous turn comes back as the template writes a tool call from its JSON,
not as the tokens the model sampled (a name split ``g``+``et`` is re-tokenized ``get``, a
compact ``{"city":"x"}`` becomes ``{"city": "x"}``), and the engine's prefix cache stops at
the first call. The gateway holds the exact conversation, so this backend sends llama.cpp
what the model actually saw and produced: a prompt rendered with the model's own chat template
where every previous turn of the model is the exact token ids it generated. Each turn then
reuses the whole previous prompt plus the previous output from the slot's KV cache.

How the prompt is built:

* it is a concatenation of segments, one per conversation snapshot (one request's new input,
  or one response's output), each rendered once and memoized on its snapshot
  (:meth:`~hotloop.protocol.conversation.Conversation.derived`), so a continuation renders
  only its new items;
* an input segment is rendered through the chat template (Jinja) by difference:
  ``render(window + segment) - render(window)``, where the *window* is the system message and
  the previous segment's messages. The first segment keeps everything (the system block, the
  tools). The rule holds for templates that render each message from its neighbours only,
  which :meth:`PromptRenderer.check` verifies on a probe conversation when the backend starts:
  segment by segment must give exactly the whole-conversation rendering at every turn;
* an output segment is the generation prompt the model was given, then the token ids it
  generated (``return_tokens``; text when they are missing), then the template's end of an
  assistant message, all recorded on the snapshot when the turn ended
  (:meth:`~hotloop.protocol.conversation.Conversation.note`). llama.cpp takes the prompt as
  a mixed array of strings and token ids and tokenizes each string alone, so the token
  sequence of turn N+1 starts with the exact token sequence of turn N and its output. A
  conversation the gateway rebuilds (from its store, or re-sent whole) finds the model's
  turns by the rolling key of the history they end, among the turns this backend generated
  last;
* a template that fails the check (it looks at the whole conversation, or rewrites message
  text) is rendered whole every turn instead: correct, but with the chat endpoint's cache
  behaviour.

The streamed text is parsed into Responses items as it arrives: text becomes an assistant
message, a call between the template family's markers (``<tool_call>…</tool_call>`` for the
Hermes/Qwen family and the project's tiny model) becomes a function call with the gateway's own
call id, opened as soon as its name is read, its arguments streamed as written, and closed the
moment its closing marker arrives, so a client dispatches the tool while the model writes the
next call. Tool calls are kept valid with llama.cpp's grammar sampling: a
GBNF grammar built from the offered tools' JSON schemas, lazy (triggered by the opening
marker) under ``tool_choice: auto``, strict under ``required`` or a forced function.

Usage carries llama.cpp's ``timings.cache_n`` as cached tokens. With ``pin_slots``, each
conversation goes to one slot of the engine (``id_slot``, new conversations taking the slots
in turn). It is off by default: a slot holds one conversation at a time, and when
conversations outnumber the slots llama.cpp's own slot choice with its host prompt cache
restored more of each conversation than pinning did (measured in ``docs/benchmarks.md``).
Replicas, retries, timeouts and errors are the shared ones of
:class:`~hotloop.backends.forwarding.ForwardingBackend`.
"""

from __future__ import annotations

from hotloop.backends.llamacpp.backend import LlamaCppBackend
from hotloop.backends.llamacpp.grammar import tool_grammar
from hotloop.backends.llamacpp.parser import RawTurnParser
from hotloop.backends.llamacpp.template import (
    HERMES,
    HERMES_THINKING,
    CallMarkers,
    ChatTemplate,
    Prompt,
    PromptRenderer,
    TemplateError,
    markers_for,
    template_messages,
)

__all__ = [
    "HERMES",
    "HERMES_THINKING",
    "CallMarkers",
    "ChatTemplate",
    "LlamaCppBackend",
    "Prompt",
    "PromptRenderer",
    "RawTurnParser",
    "TemplateError",
    "markers_for",
    "template_messages",
    "tool_grammar",
]
