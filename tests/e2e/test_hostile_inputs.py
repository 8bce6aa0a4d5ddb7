"""Hostile input, as an attacker who reaches the NATS account and the admin port sends it.

Each test runs real services against the test servers, sends what an attacker could, asserts
the clear answer, then that every service is still healthy and that CDC lost and duplicated
nothing (a sentinel table's rows, written before, during and after, each exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import pytest
from nats.js.api import StreamConfig

from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, copy_rows, wait_for

ADMIN_TOKEN = "adm1n-t0ken"
CONTROL_TOKEN = "c0ntrol-t0ken"
CONTROL = {"control_token": CONTROL_TOKEN}


class Sentinel:
    """Rows of table `sentinel` written one per transaction; `check` asserts each reached CDC
    exactly once, whatever else is on the stream."""

    def __init__(self, pg: Database) -> None:
        self.pg = pg
        self.ids: list[int] = []
        pg.execute("CREATE TABLE IF NOT EXISTS sentinel (id int PRIMARY KEY)")

    def write(self, n: int = 5) -> None:
        for _ in range(n):
            self.ids.append(len(self.ids) + 1)
            self.pg.execute("INSERT INTO sentinel VALUES (%s)", (self.ids[-1],))

    def check(self, nats_url: str) -> None:
        def seen() -> Counter[int]:
            return Counter(
                event["data"]["id"]
                for subject, event in cdc_events(nats_url)
                if subject == "cdc.sentinel.insert" and isinstance(event, dict)
            )

        wait_for(lambda: set(seen()) >= set(self.ids), 30, "every sentinel row on CDC")
        counts = seen()
        assert sorted(counts) == self.ids, counts
        assert set(counts.values()) == {1}, counts  # none twice


def cdc_events(nats_url: str) -> list[tuple[str, Any]]:
    """Every CDC message as (subject, decoded or None): foreign messages included."""

    async def fetch() -> list[tuple[str, Any]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            total = (await js.stream_info("CDC")).state.messages
            out: list[tuple[str, Any]] = []
            if not total:
                return out
            sub = await js.subscribe(">", stream="CDC", ordered_consumer=True)
            while len(out) < total:
                msg = await sub.next_msg(timeout=10)
                try:
                    out.append((msg.subject, msgpack.unpackb(msg.data, strict_map_key=False)))
                except (ValueError, TypeError):
                    out.append((msg.subject, None))
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(fetch())


def start(
    pg: Database,
    nats_url: str,
    services: Callable[..., Service],
    tables: str = "t,sentinel",
    admin: bool = False,
) -> dict[str, Service]:
    pg.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
    pg.execute("CREATE TABLE IF NOT EXISTS u (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE IF NOT EXISTS sentinel (id int PRIMARY KEY)")
    pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 300) g ON CONFLICT DO NOTHING")
    stack = {
        "replicator": services("replicator", pg, nats_url, table=tables, **CONTROL),
        "snapshotter": services(
            "snapshotter", pg, nats_url, table=tables, schema_poll_seconds=1, **CONTROL
        ),
    }
    for service in stack.values():
        service.wait_healthy()
    if admin:
        stack["admin"] = services(
            "admin",
            pg,
            nats_url,
            table=tables,
            replicator_url=f"http://127.0.0.1:{stack['replicator'].port}",
            snapshotter_url=f"http://127.0.0.1:{stack['snapshotter'].port}",
            admin_token=ADMIN_TOKEN,
            **CONTROL,
        )
        wait_for(lambda: stack["admin"].health() == 200, 30, "admin healthy", stack["admin"])
    return stack


def all_healthy(stack: dict[str, Service]) -> None:
    for name, service in stack.items():
        assert service.process is not None and service.process.poll() is None, name
        assert service.health() == 200, (name, service.output()[-2000:])


async def _requests(nats_url: str, asks: list[tuple[str, bytes]], timeout: float) -> list[Any]:
    nc = await nats.connect(nats_url)
    try:

        async def one(subject: str, body: bytes) -> Any:
            try:
                reply = await nc.request(subject, body, timeout=timeout)
            except Exception as exc:
                return exc
            return json.loads(reply.data)

        results = []
        tasks = []
        for i, (subject, body) in enumerate(asks):
            tasks.append(asyncio.create_task(one(subject, body)))
            if i % 100 == 99:
                await asyncio.sleep(0.1)  # 1,000 requests over about a second
        results = await asyncio.gather(*tasks)
        return list(results)
    finally:
        await nc.close()


def test_a_flood_of_snapshot_requests_gets_an_answer_for_every_request(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    sentinel = Sentinel(pg)
    stack = start(pg, nats_url, services, tables="t,u,sentinel")
    sentinel.write()
    hostile = [
        b"[" * 100_000,
        b"1" * 5_000,
        b'{"chunk_size": ' + b"9" * 3_000 + b"}",
        b"\xff" * 64,
        b'{"chunk_size": -1}',
        b'{"table": "pg_authid"}',
        b"x" * 900_000,  # near NATS max_payload
    ]
    asks: list[tuple[str, bytes]] = []
    for i in range(1000):
        kind = i % 10
        if kind < 4:
            asks.append((f"bridge.snapshot.{'tu'[i % 2]}", b'{"chunk_size": 50}' if i % 3 else b""))
        elif kind < 8:
            asks.append(("bridge.snapshot.t", hostile[i % len(hostile)]))
        elif kind == 8:
            asks.append(("bridge.snapshot.pg_catalog~~pg_authid", b""))
        else:
            asks.append(("bridge.snapshot.nope", b"{}"))
    started = time.monotonic()
    replies = asyncio.run(_requests(nats_url, asks, timeout=90))
    sentinel.write()
    elapsed = time.monotonic() - started
    unanswered = [(a, r) for a, r in zip(asks, replies, strict=True) if isinstance(r, Exception)]
    assert not unanswered, (len(unanswered), unanswered[:3])
    reasons = Counter(r.get("reason", "snapshot") for r in replies)
    assert "internal" not in reasons, reasons
    for (subject, body), reply in zip(asks, replies, strict=True):
        if subject.endswith((".t", ".u")) and body in (b"", b'{"chunk_size": 50}'):
            assert "snapshot_id" in reply or reply["reason"] == "busy", reply
        elif subject.endswith(".t"):
            assert reply["reason"] == "bad_request", (body[:40], reply)
        else:
            assert reply["reason"] == "unknown_table", reply
    print(f"1000 requests answered in {elapsed:.1f} s: {dict(reasons)}")
    all_healthy(stack)
    sentinel.check(nats_url)


def test_the_admin_stays_truthful_and_bounded_under_floods(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    sentinel = Sentinel(pg)
    stack = start(pg, nats_url, services, admin=True)
    admin = stack["admin"]
    base = f"http://127.0.0.1:{admin.port}"

    # 500 parallel /health: the admin's PostgreSQL connections are counted all along.
    most = {"connections": 0}
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            (n,), *_ = pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bridge-admin'"
            )
            most["connections"] = max(most["connections"], int(n))
            time.sleep(0.005)

    counter = threading.Thread(target=count)
    counter.start()

    async def parallel(path: str, n: int) -> list[int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            return [
                r.status_code for r in await asyncio.gather(*(http.get(path) for _ in range(n)))
            ]

    try:
        codes = asyncio.run(parallel("/health", 500))
    finally:
        stop.set()
        counter.join()
    assert Counter(codes) == {200: 500}
    assert most["connections"] <= 1, most

    # 1,000 clients that give up mid-request, on every read endpoint.
    def abandon(path: str) -> None:
        with socket.create_connection(("127.0.0.1", admin.port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # closed before the answer

    for i in range(1000):
        abandon(("/health", "/status", "/metrics")[i % 3])

    async def impatient() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=0.001) as http:
            for path in ("/health", "/status", "/metrics") * 30:
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(path)

    asyncio.run(impatient())
    with httpx.Client(base_url=base, timeout=10) as http:
        wait_for(lambda: http.get("/health").status_code == 200, 5, "/health 200 within 5 s")
        metrics = http.get("/metrics").text
        assert 'bridge_service_up{service="admin",target="replicator"} 1.0' in metrics
        assert 'bridge_service_up{service="admin",target="snapshotter"} 1.0' in metrics
        assert http.get("/status").json()["replicator"]["up"] is True

    # Oversized headers: an answer the client can read, not a reset connection.
    for size in (64 * 1024, 1024 * 1024):
        with socket.create_connection(("127.0.0.1", admin.port), timeout=10) as s:
            head = f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {'a' * size}\r\n\r\n"
            # The server may stop reading before all is sent; its answer is readable still.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(head.encode())
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431 "), (size, answer[:200])
    all_healthy(stack)
    sentinel.write()
    sentinel.check(nats_url)


def test_crafted_kv_values_and_a_purged_bucket_do_not_stop_schema_publishing(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    sentinel = Sentinel(pg)
    stack = start(pg, nats_url, services)

    async def kv(action: str, value: bytes = b"") -> Any:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            bucket = await js.key_value("schemas")
            if action == "put":
                return await bucket.put("t", value)
            if action == "purge":
                return await js.purge_stream("KV_schemas")
            try:
                return msgpack.unpackb((await bucket.get("t")).value)
            except Exception:
                return None
        finally:
            await nc.close()

    def is_document() -> bool:
        doc = asyncio.run(kv("get"))
        columns = doc.get("columns") if isinstance(doc, dict) else None
        return isinstance(columns, list) and [
            c.get("name") if isinstance(c, dict) else c for c in columns
        ] == ["id", "v"]

    wait_for(is_document, 30, "t's schema document")
    crafted = [
        msgpack.packb({"columns": b"\x00\xff", "primary_key": 1}),
        msgpack.packb(
            {"columns": [{"name": float("nan")}], "primary_key": [], "replica_identity": ""}
        ),
        msgpack.packb([1, 2, 3]),
        b"\xc1 not msgpack",
        msgpack.packb({"columns": [1, 2], "primary_key": ["id"], "replica_identity": "default"}),
    ]
    for value in crafted:
        asyncio.run(kv("put", value))
        wait_for(is_document, 10, f"the document to replace {value[:30]!r}", stack["snapshotter"])
        all_healthy(stack)
    health = httpx.get(f"http://127.0.0.1:{stack['snapshotter'].port}/health").json()
    assert health["postgres"] is True, health
    assert "is not a schema document; replacing it" in stack["snapshotter"].output()
    replaced = stack["snapshotter"].metrics()
    assert f"bridge_schema_foreign_values_total {float(len(crafted))}" in replaced, replaced

    asyncio.run(kv("purge"))
    wait_for(is_document, 10, "the document back after a purge", stack["snapshotter"])
    all_healthy(stack)
    sentinel.write()
    sentinel.check(nats_url)


def test_foreign_messages_on_cdc_never_stop_a_consumer_or_a_tool(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """Foreign messages on `cdc.t.insert` — the stream's very first one (read when a copy
    checks whether a snapshot can be reused), others while a copy follows — on the commit
    records' `cdc.~commit`, on a table's schema changes' `cdc.t.schema` (not MessagePack; a
    schema change whose columns are not a list), and a malformed schema document: `bridge
    replica` skips and counts them, `bridge tail` shows them as skipped (the one that is not
    MessagePack; the other as it came, with no columns), and both go on."""
    sentinel = Sentinel(pg)
    stack = start(pg, nats_url, services)
    foreign = [
        b"\xc1 not msgpack",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"operation": "insert"}),  # no data, no commit_lsn
        msgpack.packb({"operation": "update", "commit_lsn": "nonsense", "data": 5}),
        msgpack.packb({"operation": "[red]x[/]", "schema": "[bold]", "table": "t"}),
    ]

    async def publish(payloads: list[bytes], subject: str = "cdc.t.insert") -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            for payload in payloads:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": repr(payload)})
        finally:
            await nc.close()

    asyncio.run(publish(foreign[:1]))  # the stream's first message
    assert "snapshot_id" in asyncio.run(_requests(nats_url, [("bridge.snapshot.t", b"")], 60))[0]

    env = stack["replicator"].env
    path = tmp_path / "copy.db"
    log = tmp_path / "replica.log"
    with open(log, "ab") as out:
        replica = Service("replica", env, 0, log)
        replica.process = subprocess.Popen(
            [BRIDGE, "replica", "t", "--sqlite", str(path), "--progress-seconds", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def copied() -> set[int]:
        return {r[0] for r in copy_rows(path, 'SELECT id FROM "public.t"')}

    try:
        pg.execute("INSERT INTO t VALUES (1001, 'before')")
        wait_for(lambda: 1001 in copied(), 60, "the replica to follow", replica)
        asyncio.run(publish(foreign[1:]))
        pg.execute("INSERT INTO t VALUES (1002, 'after')")
        wait_for(lambda: 1002 in copied(), 30, "the replica past the foreign messages", replica)
        not_records = [b"\xc1", msgpack.packb({"commit_lsn": "0/1", "tables": "all"})]
        asyncio.run(publish(not_records, "cdc.~commit"))
        not_shapes = [
            b"\xc1 not a shape",  # (another Msg-Id than the first foreign message's)
            msgpack.packb(
                {"operation": "schema", "schema": "public", "table": "t", "commit_lsn": "F/0",
                 "columns": "x"}
            ),
        ]  # fmt: skip
        asyncio.run(publish(not_shapes, "cdc.t.schema"))
        asyncio.run(_put_kv(nats_url, "t", msgpack.packb({"nope": 1})))
        pg.execute("INSERT INTO t VALUES (1003, 'later')")
        wait_for(lambda: 1003 in copied(), 30, "the replica to go on", replica)
        assert replica.terminate() == 0
    finally:
        replica.stop()
    output = replica.output()
    assert "skipped CDC sequence" in output, output[-3000:]
    # Every foreign message read is logged and counted: the ones published while it followed,
    # the KV value that is not a schema document, and the stream's first one when the copy
    # read the stream from its start (a snapshot the stream provably covers is reused).
    logged = output.count("skipped CDC sequence") + output.count("skipped KV")
    assert (
        len(foreign) - 1 <= logged
        and f"{logged} foreign messages skipped" in output.rsplit("stopped;", 1)[-1]
    ), output[-3000:]
    assert output.count("(cdc.t.schema)") == 2, output[-3000:]  # each shape skipped, said
    assert copied() == {r[0] for r in pg.execute("SELECT id FROM t")}

    tail = subprocess.run(
        [BRIDGE, "tail", "t", "--from-start", "--count", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stdout + tail.stderr
    not_msgpack_shapes = 1
    skipped = len(foreign) + not_msgpack_shapes
    assert f"{skipped} foreign message(s) skipped" in tail.stdout, tail.stdout
    assert "1001" in tail.stdout and "1003" in tail.stdout
    assert "[red]x[/]" not in tail.stdout  # shown as skipped, never as markup
    all_healthy(stack)
    sentinel.write()
    sentinel.check(nats_url)


async def _put_kv(nats_url: str, key: str, value: bytes) -> None:
    nc = await nats.connect(nats_url)
    try:
        await (await nc.jetstream().key_value("schemas")).put(key, value)
    finally:
        await nc.close()


def test_stream_management_cannot_break_the_bridge(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    sentinel = Sentinel(pg)
    stack = start(pg, nats_url, services, admin=True)
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{stack['admin'].port}", timeout=30) as http:
        for action in ("purge", "delete"):
            reply = http.post(f"/streams/{action}", params={"stream": "KV_schemas"}, headers=good)
            assert reply.status_code == 409 and "force=true" in reply.json()["error"]
        for subjects in (
            "bridge.snapshot.>",
            "bridge.*.t",
            "bridge.control.replicator.shutdown",
            "cdc.t.insert",
            "init.meta.*",
            "$KV.schemas.t",
            ">",
            "*.*.*",
        ):
            reply = http.post(
                "/streams/create", params={"stream": "HIJACK", "subjects": subjects}, headers=good
            )
            assert reply.status_code == 400, (subjects, reply.text)
            assert "which the bridge publishes or serves" in reply.json()["error"], reply.text
        reply = http.post(
            "/streams/create", params={"stream": "HIJACK", "subjects": "$JS.API.>"}, headers=good
        )
        assert reply.status_code == 400 and reply.json()["error"].startswith("JetStream: ")
        assert http.get("/streams/info", params={"stream": "HIJACK"}).status_code == 404

        # Shutdown over NATS without the token: refused, answered, logged; services stay.
        async def ask(service: str) -> dict[str, Any]:
            nc = await nats.connect(nats_url)
            try:
                msg = await nc.request(f"bridge.control.{service}.shutdown", b"", timeout=5)
                return dict(json.loads(msg.data))
            finally:
                await nc.close()

        for service in ("replicator", "snapshotter"):
            for _ in range(20):
                assert asyncio.run(ask(service))["reason"] == "unauthorized"
            assert "bridge_control_requests_refused_total 20.0" in stack[service].metrics()
        all_healthy(stack)
    reply = asyncio.run(_requests(nats_url, [("bridge.snapshot.t", b"")], timeout=60))[0]
    assert "snapshot_id" in reply, reply
    sentinel.write()
    sentinel.check(nats_url)


def test_a_snapshot_nobody_stores_fails_at_once_with_its_reason(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """INIT no longer takes `init.>` (changed by someone on the account): JetStream answers
    'no responders', and the snapshot fails on the spot, not after 20 s of resends."""
    stack = start(pg, nats_url, services)

    async def init_subjects(subjects: list[str]) -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            config = (await js.stream_info("INIT")).config
            await js.update_stream(
                StreamConfig.from_response({**config.as_dict(), "subjects": subjects})
            )
        finally:
            await nc.close()

    asyncio.run(init_subjects(["elsewhere.>"]))
    try:
        started = time.monotonic()
        reply = asyncio.run(_requests(nats_url, [("bridge.snapshot.t", b"")], timeout=60))[0]
        elapsed = time.monotonic() - started
    finally:
        asyncio.run(init_subjects(["init.>"]))
    assert reply["reason"] == "init_stream_missing", reply
    assert "stream INIT does not take init.snap.t." in reply["error"], reply
    assert elapsed < 5, elapsed
    all_healthy(stack)
    assert (
        "snapshot_id"
        in asyncio.run(_requests(nats_url, [("bridge.snapshot.t", b"")], timeout=60))[0]
    )


@pytest.mark.parametrize("subject", ["bridge.snapshot.t", "bridge.snapshot.sentinel"])
def test_nasty_request_subjects_and_headers_are_answered(
    pg: Database, nats_url: str, services: Callable[..., Service], subject: str
) -> None:
    """Headers a client may set (a Content-Type claiming JSON over binary, a huge one) change
    nothing about the answer."""
    stack = start(pg, nats_url, services)

    async def ask() -> list[Any]:
        nc = await nats.connect(nats_url)
        try:
            out = []
            for headers, body in (
                ({"Content-Type": "application/json"}, b"[" * 50_000),
                ({"Content-Type": "text/plain"}, b"\xff\xfe"),
                ({"X-Junk": "a" * 60_000}, b""),
            ):
                msg = await nc.request(subject, body, timeout=60, headers=headers)
                out.append(json.loads(msg.data))
            return out
        finally:
            await nc.close()

    bad_json, bad_text, junk_header = asyncio.run(ask())
    assert bad_json["reason"] == "bad_request"
    assert bad_text["reason"] == "bad_request"
    assert "snapshot_id" in junk_header, junk_header
    all_healthy(stack)
