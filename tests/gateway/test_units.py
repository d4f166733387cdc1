"""Unit tests of the gateway's parts: the connection cache, the response stores (SQLite and
memory, through one set of tests), request parsing, the batched request log and the coalescing
socket writer."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotloop.errors import APIError
from hotloop.gateway.app import CoalescingTransport
from hotloop.gateway.store import MemoryStore, RequestLog, RequestRecord, SQLiteStore, Store
from hotloop.protocol.cache import CachedResponse, ResponseCache
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import parse_create
from hotloop.wire import codec
from hotloop.wire.items import (
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    Item,
    Message,
    Reasoning,
    UnknownItem,
)

MODEL = "hotloop-sim"

# -- ResponseCache ----------------------------------------------------------------------------


def entry(response_id: str, lane: str | None = "a", chars: int = 36) -> CachedResponse:
    """An entry whose conversation is ``chars + 64`` bytes (one message of ``chars``)."""
    conversation = Conversation.start([Message(role="user", content="x" * chars)])
    return CachedResponse(response_id, conversation, lane, stored=False)


def ids(cache: ResponseCache, *candidates: str) -> set[str]:
    return {c for c in candidates if c in cache}


def test_cache_is_an_lru_bounded_by_count() -> None:
    cache = ResponseCache(max_entries=3, max_bytes=10**9)
    for name in ("r1", "r2", "r3", "r4"):
        cache.put(entry(name))
    assert len(cache) == 3
    assert ids(cache, "r1", "r2", "r3", "r4") == {"r2", "r3", "r4"}
    assert cache.evictions == 1
    assert cache.get("r2") is not None  # r2 is now the most recently used
    cache.put(entry("r5"))
    assert ids(cache, "r2", "r3", "r4", "r5") == {"r2", "r4", "r5"}
    assert cache.get("r3") is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 2)
    assert cache.nbytes == 3 * 100


def test_cache_is_bounded_by_bytes() -> None:
    cache = ResponseCache(max_entries=1000, max_bytes=300)
    for name in ("r1", "r2", "r3"):
        cache.put(entry(name))  # 100 bytes each
    assert len(cache) == 3 and cache.nbytes == 300
    cache.put(entry("r4"))
    assert ids(cache, "r1", "r2", "r3", "r4") == {"r2", "r3", "r4"}
    assert cache.nbytes == 300
    # A 136-byte entry pushes out the two oldest.
    cache.put(entry("big", chars=72))
    assert ids(cache, "r2", "r3", "r4", "big") == {"r4", "big"}
    assert cache.nbytes == 100 + 136
    # Re-putting an id replaces it without counting it twice.
    cache.put(entry("r4"))
    assert len(cache) == 2 and cache.nbytes == 236


def test_latest_response_of_each_lane_is_never_evicted() -> None:
    cache = ResponseCache(max_entries=1, max_bytes=1)
    cache.put(entry("a1", "a"))
    cache.put(entry("b1", "b"))
    cache.put(entry("d1", None))
    # Every entry is the latest of its lane: over both bounds, yet all kept.
    assert ids(cache, "a1", "b1", "d1") == {"a1", "b1", "d1"}
    cache.put(entry("a2", "a"))
    assert ids(cache, "a1", "a2", "b1", "d1") == {"a2", "b1", "d1"}
    assert cache.evictions == 1
    cache.put(entry("b2", "b"))
    cache.put(entry("d2", None))
    assert ids(cache, "a2", "b1", "b2", "d1", "d2") == {"a2", "b2", "d2"}


def test_evict_drops_an_entry_and_its_lane_protection() -> None:
    cache = ResponseCache(max_entries=2, max_bytes=10**9)
    cache.put(entry("a1", "a"))
    cache.put(entry("a2", "a"))
    cache.evict("a2")
    assert "a2" not in cache and cache.get("a2") is None
    assert cache.nbytes == 100 and cache.evictions == 1
    cache.evict("never-cached")  # no error, no change
    assert len(cache) == 1 and cache.evictions == 1
    # a1 is no longer protected (a2 was the latest of lane a): it is the next to go.
    cache.put(entry("b1", "b"))
    cache.put(entry("c1", "c"))
    assert ids(cache, "a1", "b1", "c1") == {"b1", "c1"}
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    cache.put(entry("x", "x"))
    assert "x" in cache


# -- Store: SQLiteStore and MemoryStore ----------------------------------------------------


def dicts(items: Sequence[Item]) -> list[dict[str, Any]]:
    return [item.to_dict() for item in items]


SEGMENT_1: list[Item] = [
    Message(role="user", content="What is the weather in Paris?"),
    Reasoning(id="rs_1", summary=(), encrypted_content="opaque"),
    FunctionCall(
        call_id="call_1",
        name="get_weather",
        arguments='{"city":"Paris"}',
        id="fc_1",
        status="completed",
    ),
]
SEGMENT_2: list[Item] = [
    FunctionCallOutput(call_id="call_1", output="sunny"),
    Message(
        role="assistant",
        content=(ContentPart("output_text", "It is sunny.", {"annotations": []}),),
        id="msg_2",
        status="completed",
    ),
]
SEGMENT_3: list[Item] = [
    Message(role="user", content=(ContentPart("input_text", "And Rome?"),)),
    UnknownItem({"type": "web_search_call", "id": "ws_1", "status": "completed"}),
]


AnyStore = SQLiteStore | MemoryStore


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnyStore]:
    """Each store test runs against both implementations."""
    response_store: AnyStore = (
        SQLiteStore(tmp_path / "store.sqlite") if request.param == "sqlite" else MemoryStore()
    )
    await response_store.open()
    yield response_store
    await response_store.close()


async def test_store_saves_and_loads_a_chain_through_its_parents(
    store: AnyStore, tmp_path: Path
) -> None:
    await store.save("resp_1", None, SEGMENT_1, codec.dumps({"id": "resp_1"}))
    await store.save("resp_2", "resp_1", SEGMENT_2, codec.dumps({"id": "resp_2"}))
    await store.save("resp_3", "resp_2", SEGMENT_3, codec.dumps({"id": "resp_3"}))
    await store.save("resp_2b", "resp_1", SEGMENT_3, codec.dumps({"id": "resp_2b"}))
    assert store.writes == 4

    loaded = await store.load("resp_3")
    assert loaded is not None and loaded.response_id == "resp_3"
    conversation = loaded.conversation
    assert dicts(conversation.all_items()) == dicts(SEGMENT_1 + SEGMENT_2 + SEGMENT_3)
    assert conversation.tool_results == 1
    # Loaded history keys like the same history built in memory (the prefix cache hits).
    assert (
        conversation.prefix_key == Conversation.start(SEGMENT_1 + SEGMENT_2 + SEGMENT_3).prefix_key
    )
    assert conversation.tokens == Conversation.start(SEGMENT_1 + SEGMENT_2 + SEGMENT_3).tokens

    first = await store.load("resp_1")
    assert first is not None and dicts(first.conversation.all_items()) == dicts(SEGMENT_1)
    fork = await store.load("resp_2b")
    assert fork is not None
    assert dicts(fork.conversation.all_items()) == dicts(SEGMENT_1 + SEGMENT_3)

    assert await store.load("resp_unknown") is None
    assert codec.loads(await store.load_response("resp_2") or b"") == {"id": "resp_2"}
    assert await store.load_response("resp_unknown") is None

    # Saving an id again replaces it.
    await store.save("resp_2b", "resp_1", SEGMENT_2, codec.dumps({"id": "resp_2b", "v": 2}))
    again = await store.load("resp_2b")
    assert again is not None
    assert dicts(again.conversation.all_items()) == dicts(SEGMENT_1 + SEGMENT_2)
    assert codec.loads(await store.load_response("resp_2b") or b"") == {"id": "resp_2b", "v": 2}

    if isinstance(store, SQLiteStore):
        # It is on disk: a second store on the same file sees the chain.
        assert (tmp_path / "store.sqlite").is_file()
        reopened = SQLiteStore(tmp_path / "store.sqlite")
        await reopened.open()
        try:
            again = await reopened.load("resp_3")
            assert again is not None
            assert dicts(again.conversation.all_items()) == dicts(SEGMENT_1 + SEGMENT_2 + SEGMENT_3)
        finally:
            await reopened.close()


async def test_store_with_a_missing_parent_loads_what_it_has(store: AnyStore) -> None:
    await store.save("resp_orphan", "resp_gone", SEGMENT_2, codec.dumps({}))
    loaded = await store.load("resp_orphan")
    assert loaded is not None
    assert dicts(loaded.conversation.all_items()) == dicts(SEGMENT_2)


async def test_store_writes_the_request_log_in_batches(store: AnyStore) -> None:
    assert await store.count_log() == 0
    await store.write_log([record(index) for index in range(3)])
    await store.write_log([record(3)])
    assert await store.count_log() == 4


def test_both_stores_satisfy_the_store_protocol() -> None:
    # Checked by mypy through this annotation; at run time each has every protocol method.
    stores: list[Store] = [SQLiteStore(None), MemoryStore()]
    methods = ("open", "close", "save", "load", "load_response", "write_log")
    for each in stores:
        assert all(inspect.iscoroutinefunction(getattr(each, name)) for name in methods)


async def test_memory_store_is_bounded_by_count_and_bytes() -> None:
    by_count = MemoryStore(max_responses=2)
    for name in ("r1", "r2", "r3"):
        await by_count.save(name, None, SEGMENT_1, b"{}")
    assert len(by_count) == 2 and by_count.evictions == 1
    assert await by_count.load("r1") is None
    assert await by_count.load("r2") is not None  # r2 is now the most recently used
    await by_count.save("r4", "r3", SEGMENT_2, b"{}")
    assert await by_count.load("r3") is None and await by_count.load("r2") is not None
    # A child keeps the history it was saved with when its parent is dropped.
    r4 = await by_count.load("r4")
    assert r4 is not None and dicts(r4.conversation.all_items()) == dicts(SEGMENT_1 + SEGMENT_2)

    one = Conversation.start(SEGMENT_1).nbytes + 2
    by_bytes = MemoryStore(max_bytes=2 * one)
    for name in ("r1", "r2", "r3"):
        await by_bytes.save(name, None, SEGMENT_1, b"{}")
    assert len(by_bytes) == 2 and by_bytes.nbytes == 2 * one
    # The response just saved is kept even when it alone is over the bound.
    tiny = MemoryStore(max_bytes=1)
    await tiny.save("big", None, SEGMENT_1, b"{}")
    await tiny.save("bigger", "big", SEGMENT_2, b"{}")
    assert len(tiny) == 1 and await tiny.load("bigger") is not None
    await tiny.close()
    assert len(tiny) == 0 and tiny.nbytes == 0

    log = MemoryStore(max_log_records=3)
    await log.write_log([record(index) for index in range(5)])
    assert [r.response_id for r in log.log_records()] == ["resp_2", "resp_3", "resp_4"]


async def test_gateway_takes_a_store_or_picks_one_from_its_config(tmp_path: Path) -> None:
    from hotloop.backends.sim import SimBackend
    from hotloop.gateway import Gateway, GatewayConfig

    assert isinstance(Gateway(SimBackend("coding", "zero")).store, MemoryStore)
    on_disk = GatewayConfig(store_path=tmp_path / "store.sqlite")
    assert isinstance(Gateway(SimBackend("coding", "zero"), on_disk).store, SQLiteStore)
    mine = MemoryStore(max_responses=5)
    gateway = Gateway(SimBackend("coding", "zero"), on_disk, store=mine)
    assert gateway.store is mine
    await gateway.start()
    await gateway.close()


# -- parse_create ------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("no-model", {"input": "hi"}, "model", "missing_required_parameter"),
    ("empty-model", {"model": "", "input": "hi"}, "model", "missing_required_parameter"),
    ("model-not-string", {"model": 5, "input": "hi"}, "model", "missing_required_parameter"),
    ("no-input", {"model": MODEL}, "input", "missing_required_parameter"),
    ("empty-input", {"model": MODEL, "input": []}, "input", "missing_required_parameter"),
    ("input-number", {"model": MODEL, "input": 5}, "input", "invalid_input"),
    ("item-not-object", {"model": MODEL, "input": ["hi"]}, "input[0]", "invalid_input"),
    (
        "output-without-call-id",
        {"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]},
        "input[0].call_id",
        "invalid_input",
    ),
    (
        "output-without-output",
        {"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c"}]},
        "input[0].output",
        "invalid_input",
    ),
    (
        "call-without-name",
        {
            "model": MODEL,
            "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}],
        },
        "input[0].name",
        "invalid_input",
    ),
    (
        "bad-role",
        {"model": MODEL, "input": [{"role": "robot", "content": "x"}]},
        "input[0].role",
        "invalid_input",
    ),
    (
        "bad-content",
        {"model": MODEL, "input": [{"role": "user", "content": 5}]},
        "input[0].content",
        "invalid_input",
    ),
    (
        "bad-content-part",
        {"model": MODEL, "input": [{"role": "user", "content": [{"text": "no type"}]}]},
        "input[0].content[0].type",
        "invalid_input",
    ),
    (
        "item-type-number",
        {"model": MODEL, "input": [{"type": 3}]},
        "input[0].type",
        "invalid_input",
    ),
    ("instructions", {"model": MODEL, "input": "x", "instructions": 5}, "instructions", None),
    ("tools-not-list", {"model": MODEL, "input": "x", "tools": {}}, "tools", None),
    ("tool-not-object", {"model": MODEL, "input": "x", "tools": [1]}, "tools[0]", None),
    (
        "tool-without-name",
        {"model": MODEL, "input": "x", "tools": [{"type": "function"}]},
        "tools[0].name",
        None,
    ),
    (
        "tool-bad-parameters",
        {"model": MODEL, "input": "x", "tools": [{"name": "f", "parameters": []}]},
        "tools[0].parameters",
        None,
    ),
    ("tool-choice", {"model": MODEL, "input": "x", "tool_choice": "maybe"}, "tool_choice", None),
    (
        "tool-choice-unknown-function",
        {"model": MODEL, "input": "x", "tool_choice": {"type": "function", "name": "f"}},
        "tool_choice",
        None,
    ),
    (
        "tool-choice-without-name",
        {"model": MODEL, "input": "x", "tool_choice": {"type": "function"}},
        "tool_choice.name",
        None,
    ),
    (
        "previous-empty",
        {"model": MODEL, "input": "x", "previous_response_id": ""},
        "previous_response_id",
        None,
    ),
    (
        "previous-number",
        {"model": MODEL, "input": "x", "previous_response_id": 5},
        "previous_response_id",
        None,
    ),
    ("store", {"model": MODEL, "input": "x", "store": "yes"}, "store", None),
    ("max-zero", {"model": MODEL, "input": "x", "max_output_tokens": 0}, "max_output_tokens", None),
    (
        "max-bool",
        {"model": MODEL, "input": "x", "max_output_tokens": True},
        "max_output_tokens",
        None,
    ),
    (
        "max-string",
        {"model": MODEL, "input": "x", "max_output_tokens": "9"},
        "max_output_tokens",
        None,
    ),
    (
        "parallel",
        {"model": MODEL, "input": "x", "parallel_tool_calls": "no"},
        "parallel_tool_calls",
        None,
    ),
]

WS_ONLY_BAD: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("background", {"background": True}, "background", "unsupported_parameter"),
    ("generate", {"generate": "no"}, "generate", None),
    ("stream-id", {"stream_id": "a b"}, "stream_id", "invalid_stream_id"),
    ("stream-id-long", {"stream_id": "a" * 257}, "stream_id", "invalid_stream_id"),
]


@pytest.mark.parametrize(
    ("body", "param", "code"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
@pytest.mark.parametrize("websocket", [False, True], ids=["http", "ws"])
def test_parse_create_rejects_with_the_offending_param(
    body: dict[str, Any], param: str, code: str | None, websocket: bool
) -> None:
    with pytest.raises(APIError) as caught:
        parse_create(body, websocket=websocket)
    error = caught.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    if code is not None:
        assert error.code == code
    assert error.body() == {
        "message": error.message,
        "type": "invalid_request_error",
        "param": param,
        "code": error.code,
    }


@pytest.mark.parametrize(
    ("extra", "param", "code"), [c[1:] for c in WS_ONLY_BAD], ids=[c[0] for c in WS_ONLY_BAD]
)
def test_ws_only_fields_are_checked_over_ws_and_ignored_over_http(
    extra: dict[str, Any], param: str, code: str | None
) -> None:
    body = {"model": MODEL, "input": "hi", **extra}
    with pytest.raises(APIError) as caught:
        parse_create(body, websocket=True)
    assert caught.value.param == param
    assert caught.value.status == 400
    if code is not None:
        assert caught.value.code == code
    over_http = parse_create(body)
    assert over_http.generate is True and over_http.stream_id is None


def test_parse_create_accepts_what_the_clients_send() -> None:
    plain = parse_create({"model": MODEL, "input": "hi"})
    assert plain.input == (Message(role="user", content="hi"),)
    assert (plain.store, plain.tool_choice, plain.parallel_tool_calls, plain.generate) == (
        True,
        "auto",
        True,
        True,
    )
    assert plain.previous_response_id is None and plain.forced_function is None

    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    agents = parse_create(
        {
            "model": MODEL,
            "input": [
                {"role": "user", "content": "hi"},  # no "type": the Agents SDK sends messages so
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "mystery_item", "x": 1},
            ],
            "tools": [tool, {"type": "web_search"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "include": [],
            "stream": True,
            "store": False,
            "temperature": 0.2,
            "some_future_field": {"a": 1},
            "previous_response_id": "resp_1",
        },
        websocket=True,
    )
    assert [item.type for item in agents.input] == [
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "mystery_item",
    ]
    assert isinstance(agents.input[-1], UnknownItem)
    assert [t.name for t in agents.tools] == ["get_weather"]  # hosted tools are skipped
    assert (agents.tool_choice, agents.forced_function) == ("function", "get_weather")
    assert agents.store is False and agents.previous_response_id == "resp_1"
    assert agents.settings["temperature"] == 0.2
    assert agents.settings["store"] is False
    assert "some_future_field" not in agents.settings

    warm = parse_create({"model": MODEL, "input": [], "generate": False}, websocket=True)
    assert warm.generate is False and warm.input == ()
    continuation = parse_create({"model": MODEL, "previous_response_id": "resp_1"})
    assert continuation.input == ()
    lane = parse_create({"model": MODEL, "input": "x", "stream_id": "a.b-c_9"}, websocket=True)
    assert lane.stream_id == "a.b-c_9"
    limits = parse_create({"model": MODEL, "input": "x", "max_output_tokens": 7})
    assert limits.max_output_tokens == 7


# -- RequestLog --------------------------------------------------------------------------------


def record(index: int) -> RequestRecord:
    return RequestRecord(
        response_id=f"resp_{index}",
        transport="http",
        model=MODEL,
        status="completed",
        input_tokens=10,
        cached_tokens=0,
        output_tokens=5,
        duration_ms=1.0,
    )


@pytest.fixture(params=["sqlite", "memory"])
async def memory_store(request: pytest.FixtureRequest) -> AsyncIterator[AnyStore]:
    """An in-memory store of each kind: SQLite without a file, and :class:`MemoryStore`."""
    response_store: AnyStore = SQLiteStore(None) if request.param == "sqlite" else MemoryStore()
    await response_store.open()
    yield response_store
    await response_store.close()


def count_batches(store: AnyStore) -> list[int]:
    """Record the size of every batch the store is asked to write."""
    batches: list[int] = []
    write_log = store.write_log

    async def counting(records: Sequence[RequestRecord]) -> None:
        batches.append(len(records))
        await write_log(records)

    store.write_log = counting  # type: ignore[method-assign]
    return batches


async def test_request_log_writes_records_in_one_batch(memory_store: AnyStore) -> None:
    batches = count_batches(memory_store)
    log = RequestLog(memory_store, flush_interval=3600, max_queue=100)
    for index in range(5):
        log.record(record(index))
    assert batches == [] and await memory_store.count_log() == 0  # nothing on the hot path
    await log.flush()
    assert batches == [5]
    assert log.written == 5 and log.dropped == 0
    assert await memory_store.count_log() == 5
    await log.flush()  # an empty queue writes nothing
    assert batches == [5]


async def test_request_log_full_queue_drops_and_counts(memory_store: AnyStore) -> None:
    log = RequestLog(memory_store, flush_interval=3600, max_queue=3)
    assert not inspect.iscoroutinefunction(log.record)  # record() cannot wait
    for index in range(5):
        assert log.record(record(index)) is None
    assert log.dropped == 2
    await log.flush()
    assert log.written == 3 and await memory_store.count_log() == 3
    log.record(record(9))  # room again after the flush
    assert log.dropped == 2


async def test_request_log_background_task_flushes_and_close_drains(
    memory_store: AnyStore,
) -> None:
    batches = count_batches(memory_store)
    log = RequestLog(memory_store, flush_interval=0.01, max_queue=100)
    log.start()
    for index in range(3):
        log.record(record(index))
    for _ in range(1000):
        if log.written == 3:
            break
        await asyncio.sleep(0.01)
    assert log.written == 3 and sum(batches) == 3
    assert batches == [3]  # recorded in one go, written as one batch
    await log.close()
    log.record(record(3))
    log.record(record(4))
    await log.close()  # close() flushes what is left
    assert log.written == 5 and await memory_store.count_log() == 5


async def test_a_full_request_log_never_slows_the_gateway(gateway_factory: Any) -> None:
    async with gateway_factory(usage_queue_size=2, usage_flush_interval=3600) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for _ in range(5):
                reply = await http.post("/responses", json={"model": MODEL, "input": "hi"})
                assert reply.status_code == 200
            metrics = (await http.get(f"http://{server.host}:{server.port}/metrics")).text
        assert server.gateway.log.dropped == 3
        assert "hotloop_request_log_dropped 3.0" in metrics


# -- CoalescingTransport ------------------------------------------------------------------------


class RecordingSocket:
    """The asyncio transport under the coalescing writer: records what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_writes_of_one_iteration_leave_in_one_send() -> None:
    socket = RecordingSocket()
    writer = CoalescingTransport(socket)  # type: ignore[arg-type]
    writer.write(b"a")
    writer.write(b"b")
    writer.write(b"c")
    assert socket.writes == []  # nothing yet: the iteration that wrote is still running
    await asyncio.sleep(0)
    assert socket.writes == [b"abc"]
    writer.write(b"d")  # a later iteration: its own send
    await asyncio.sleep(0)
    assert socket.writes == [b"abc", b"d"]


async def test_close_flushes_first_and_later_writes_are_dropped() -> None:
    socket = RecordingSocket()
    writer = CoalescingTransport(socket)  # type: ignore[arg-type]
    writer.write(b"close frame")
    writer.close()
    assert socket.writes == [b"close frame"] and socket.closing
    writer.write(b"too late")
    await asyncio.sleep(0)  # the scheduled flush finds the socket closing: nothing is written
    assert socket.writes == [b"close frame"]
    assert writer.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else delegates
