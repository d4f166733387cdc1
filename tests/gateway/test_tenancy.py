"""Stored responses are private to the tenant of the API key that created them, and the
default in-memory store stays within its bounds however many responses are stored."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from hotloop.backends.sim import SimBackend
from hotloop.gateway import GatewayConfig, GatewayServer
from hotloop.gateway.core import Gateway
from hotloop.gateway.store import MemoryStore, SQLiteStore
from hotloop.protocol.conversation import Conversation
from hotloop.protocol.requests import parse_create
from hotloop.wire.items import item_from_dict
from support import ten_turn_scenario

MODEL = "hotloop-sim"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


@asynccontextmanager
async def keyed_gateway(
    store: str, tmp_path: Path, tenants: dict[str, str] | None = None
) -> AsyncIterator[GatewayServer]:
    fields: dict[str, Any] = {"tenants": tenants} if tenants is not None else {}
    config = GatewayConfig(
        api_keys=frozenset({"k1", "k2", "k3"}),
        store_path=tmp_path / "store.sqlite" if store == "sqlite" else None,
        **fields,
    )
    async with GatewayServer(SimBackend(ten_turn_scenario(), "zero"), config) as server:
        yield server


def client(server: GatewayServer, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=20
    )


async def create(http: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "input": "hello", "store": True, **fields}
    return await http.post("/responses", json=body)


async def ws_turn(server: GatewayServer, key: str, **fields: Any) -> dict[str, Any]:
    """The terminal event of one WebSocket create on a fresh socket (so no cache hit)."""
    headers = {"authorization": f"Bearer {key}"}
    async with connect(server.websocket_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "response.create", "model": MODEL, **fields}))
        while True:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if event["type"] in TERMINAL:
                return event


def assert_previous_not_found(error: dict[str, Any], response_id: str) -> None:
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    assert response_id in error["message"]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_another_key_cannot_see_or_continue_a_stored_response(
    store: str, tmp_path: Path
) -> None:
    async with keyed_gateway(store, tmp_path) as server:
        async with client(server, "k1") as k1, client(server, "k2") as k2:
            created = await create(k1)
            assert created.status_code == 200
            rid = created.json()["id"]
            never = "resp_" + "0" * 32

            # Retrieve: the same 404 as for an id that never existed.
            theirs = await k2.get(f"/responses/{rid}")
            missing = await k2.get(f"/responses/{never}")
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json()["error"]["code"] == "response_not_found"
            assert theirs.json() == {
                "error": {
                    **missing.json()["error"],
                    "message": f"No response found with id '{rid}'.",
                }
            }

            # HTTP continuation.
            continued = await create(k2, previous_response_id=rid)
            assert continued.status_code == 400
            assert_previous_not_found(continued.json()["error"], rid)

            # WebSocket continuation: a fresh socket falls back to the store.
            event = await ws_turn(server, "k2", previous_response_id=rid, input="hi")
            assert event["type"] == "error" and event["status"] == 400
            assert_previous_not_found(event["error"], rid)

            # The owner still can, on every path.
            mine = await k1.get(f"/responses/{rid}")
            assert mine.status_code == 200 and mine.json()["id"] == rid
            again = await create(k1, previous_response_id=rid)
            assert again.status_code == 200
            event = await ws_turn(server, "k1", previous_response_id=rid, input="hi")
            assert event["type"] == "response.completed"

            # A continuation stored by k1 is k1's too.
            child = again.json()["id"]
            assert (await k2.get(f"/responses/{child}")).status_code == 404
            assert (await k1.get(f"/responses/{child}")).status_code == 200


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_keys_of_one_tenant_share_stored_responses(store: str, tmp_path: Path) -> None:
    tenants = {"k1": "acme", "k2": "acme"}
    async with keyed_gateway(store, tmp_path, tenants) as server:
        async with client(server, "k1") as k1, client(server, "k2") as k2:
            async with client(server, "k3") as k3:
                rid = (await create(k1)).json()["id"]
                assert (await k2.get(f"/responses/{rid}")).status_code == 200
                assert (await create(k2, previous_response_id=rid)).status_code == 200
                event = await ws_turn(server, "k2", previous_response_id=rid, input="hi")
                assert event["type"] == "response.completed"
                # k3 is a tenant of its own.
                assert (await k3.get(f"/responses/{rid}")).status_code == 404
                assert (await create(k3, previous_response_id=rid)).status_code == 400


async def test_without_keys_everything_is_one_tenant(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as anyone:
        rid = (await create(anyone)).json()["id"]
        other = {"authorization": "Bearer whatever"}
        assert (await anyone.get(f"/responses/{rid}", headers=other)).status_code == 200
        body = {"model": MODEL, "input": "hi", "previous_response_id": rid}
        assert (await anyone.post("/responses", json=body, headers=other)).status_code == 200


async def test_sqlite_file_from_before_tenants_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, parent_id TEXT, segment BLOB NOT NULL,"
        " response BLOB NOT NULL, created_at REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO responses VALUES (?, ?, ?, ?, ?)",
        ("resp_old", None, b"[]", b'{"id": "resp_old"}', time.time()),
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        # Rows written before tenants belong to the keyless tenant.
        assert await store.load_response("resp_old") == b'{"id": "resp_old"}'
        assert await store.load_response("resp_old", tenant="k1") is None
        await store.save("resp_new", "resp_old", [], b"{}", tenant="k1")
        assert await store.load("resp_new", tenant="k1") is not None
        assert await store.load("resp_new") is None
    finally:
        await store.close()


async def test_memory_store_tenants_do_not_share_history() -> None:
    store = MemoryStore()
    item = item_from_dict({"type": "message", "role": "user", "content": "secret"}, "test")
    await store.save("resp_a", None, [item], b"{}", tenant="t1")
    # A save naming another tenant's response as parent does not inherit its history.
    await store.save("resp_b", "resp_a", [], b"{}", tenant="t2")
    loaded = await store.load("resp_b", tenant="t2")
    assert loaded is not None and loaded.conversation.all_items() == []
    assert await store.load("resp_a", tenant="t2") is None


# -- the in-memory store's bound ----------------------------------------------------------


def test_memory_store_default_bounds() -> None:
    store = MemoryStore()
    assert store.max_responses == 100_000
    assert store.max_bytes == 1024 * 1024 * 1024


async def test_twenty_thousand_stored_responses_stay_within_the_bound() -> None:
    store = MemoryStore(max_responses=2_000, max_bytes=4 * 1024 * 1024)
    gateway = Gateway(SimBackend(ten_turn_scenario(), "zero"), GatewayConfig(), store=store)
    await gateway.start()
    largest = 0
    try:
        previous: str | None = None
        for index in range(20_000):
            body: dict[str, Any] = {"model": MODEL, "input": f"turn {index}", "store": True}
            if previous is not None and index % 10:
                body["previous_response_id"] = previous
            request = parse_create(body)
            parent = (
                await gateway.resolve_stored(previous)
                if "previous_response_id" in body and previous is not None
                else Conversation.start()
            )
            run = gateway.run(
                gateway.prepare(
                    request, parent, received_ns=time.perf_counter_ns(), transport="http"
                )
            )
            async for _ in run.events():
                pass
            assert run.response.status == "completed"
            previous = run.response.id
            assert len(store) <= store.max_responses
            largest = max(largest, store.nbytes)
            assert store.nbytes <= store.max_bytes
        assert store.writes == 20_000
        assert store.evictions == store.writes - len(store) > 0
        assert 0 < largest <= store.max_bytes
    finally:
        await gateway.close()


def test_cli_api_key_names_its_tenant() -> None:
    from hotloop.cli import _parser

    args = _parser().parse_args(["gateway", "--api-key", "k1=acme", "--api-key", "k2"])
    assert args.api_key == [("k1", "acme"), ("k2", "")]
    config = GatewayConfig(api_keys=frozenset({"k1", "k2"}), tenants={"k1": "acme"})
    assert (config.tenant("k1"), config.tenant("k2")) == ("acme", "k2")
    assert GatewayConfig().tenant("k1") == ""


# -- keep-alive: the client, not the gateway, closes an idle connection -------------------


async def test_idle_keep_alive_connection_outlives_the_clients_pool_expiry(
    gateway: GatewayServer,
) -> None:
    """httpx (and the OpenAI SDKs) reuse a pooled connection idle for up to 5 s. A gateway
    closing idle connections at 5 s too races with that reuse: the request is written as the
    close arrives and the client reads ``httpx.ReadError``. The gateway must still be there
    past 5 s."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n{body}"
    ).encode()

    async def exchange() -> None:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), 20)

    try:
        await exchange()
        await asyncio.sleep(5.5)
        assert not reader.at_eof()
        await exchange()
    finally:
        writer.close()
