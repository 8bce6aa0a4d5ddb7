"""The snapshotter as operators and consumers use it, against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import nats
import psycopg

from examples.consumer import follow
from tests.harness.postgres import Database
from tests.harness.processes import free_port, peak_rss_mb
from tests.harness.services import Service, slot_lag, stream_count, wait_for
from tests.harness.streams import init_messages, kv_get, request


def test_snapshot_chunks_meta_and_reply(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, ok bool)")
    pg.execute(
        "INSERT INTO items SELECT g, 'n' || g, g * 1.5, g % 2 = 0"
        " FROM generate_series(2500, 1, -1) g"
    )  # inserted in reverse: order comes from the key
    services("snapshotter", pg, nats_url, table="items").wait_healthy()
    meta = request(nats_url, "items")
    assert meta["row_count"] == 2500 and meta["batch_count"] == 3 and meta["table"] == "items"
    assert meta["snapshot_id"].startswith("snap-") and "/" in meta["lsn"]
    chunks = init_messages(nats_url, f"init.snap.items.{meta['snapshot_id']}.*")
    assert [s for s, _, _ in chunks] == [
        f"init.snap.items.{meta['snapshot_id']}.{i}" for i in range(3)
    ]
    assert [h["Nats-Msg-Id"] for _, h, _ in chunks] == [
        f"{meta['snapshot_id']}:items:{i}" for i in range(3)
    ]
    decoded = [msgpack.unpackb(d, raw=False) for _, _, d in chunks]
    assert [c["chunk"] for c in decoded] == [0, 1, 2]
    assert [len(c["data"]) for c in decoded] == [1000, 1000, 500]
    rows = [r for c in decoded for r in c["data"]]
    assert [r["id"] for r in rows] == list(range(1, 2501))
    assert rows[0] == {"id": 1, "name": "n1", "price": "1.5", "ok": False}
    ((_, _, raw_meta),) = init_messages(nats_url, "init.meta.items")
    assert msgpack.unpackb(raw_meta) == meta

    again = request(nats_url, "items", b'{"chunk_size": 700}')
    assert again["batch_count"] == 4 and again["snapshot_id"] != meta["snapshot_id"]


def test_schema_documents_in_kv_and_on_init_and_after_alter(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL DEFAULT 'x')")
    pg.execute('CREATE TABLE "Odd.Name" (id bigint)')
    services("snapshotter", pg, nats_url, table='users,"Odd.Name"').wait_healthy()
    doc = wait_for(lambda: kv_get(nats_url, "users"), 30, "the schema in KV")
    assert doc["schema"] == "public.users" and doc["table"] == "users"
    assert doc["columns"] == [
        {
            "column_default": None,
            "data_type": "integer",
            "is_nullable": "NO",
            "name": "id",
            "position": 1,
            "type_oid": 23,
            "type_modifier": -1,
        },
        {
            "column_default": "'x'::text",
            "data_type": "text",
            "is_nullable": "NO",
            "name": "email",
            "position": 2,
            "type_oid": 25,
            "type_modifier": -1,
        },
    ]
    assert isinstance(doc["timestamp"], int)
    assert doc["primary_key"] == ["id"] and doc["replica_identity"] == "default"
    odd = wait_for(lambda: kv_get(nats_url, "Odd=2EName"), 30, "the odd table's schema")
    assert odd["primary_key"] == [] and odd["replica_identity"] == "default"
    ((_, _, published),) = init_messages(nats_url, "init.schema.users")
    assert msgpack.unpackb(published)["columns"] == doc["columns"]

    pg.execute("ALTER TABLE users ADD COLUMN age int")
    pg.execute("INSERT INTO users (id) VALUES (1)")
    changed_at = time.monotonic()
    wait_for(lambda: len(kv_get(nats_url, "users")["columns"]) == 3, 10, "the new schema")  # type: ignore[index]
    assert time.monotonic() - changed_at < 5
    assert len(init_messages(nats_url, "init.schema.users")) == 2

    # A new key or replica identity changes how consumers locate rows: announced too.
    pg.execute("ALTER TABLE users DROP CONSTRAINT users_pkey, ADD PRIMARY KEY (email, id)")
    wait_for(
        lambda: (kv_get(nats_url, "users") or {}).get("primary_key") == ["email", "id"],
        10,
        "the new key",
    )
    pg.execute("ALTER TABLE users REPLICA IDENTITY FULL")
    wait_for(
        lambda: (kv_get(nats_url, "users") or {}).get("replica_identity") == "full",
        10,
        "the new replica identity",
    )
    assert len(init_messages(nats_url, "init.schema.users")) == 4


def test_a_snapshot_s_schema_document_is_the_one_kv_holds(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """The meta's schema document is read under the snapshot (its search path pinned) and
    KV's on a plain connection: defaults naming a sequence and a function of `public` are
    deparsed alike, so a copy that compares them (at a resume) sees the same table."""
    pg.execute(
        "CREATE FUNCTION public.label() RETURNS text LANGUAGE sql AS $$ SELECT 'l' $$;"
        "CREATE TABLE t (id serial PRIMARY KEY, tag text DEFAULT public.label());"
        "INSERT INTO t (tag) VALUES ('a'), ('b')"
    )
    services("snapshotter", pg, nats_url, table="t").wait_healthy()
    stored = wait_for(lambda: kv_get(nats_url, "t"), 30, "the schema in KV")
    del stored["timestamp"]
    for mode in ("exported", "chunked"):
        meta = request(nats_url, "t", json.dumps({"mode": mode}).encode())
        assert meta["schema_document"] == stored, (mode, meta["schema_document"], stored)
    assert "t_id_seq" in stored["columns"][0]["column_default"]


def test_every_init_message_and_kv_value_is_plain_messagepack(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """The seed's consumers decode INIT with a bare `msgpack.unpackb`: no JSON anywhere."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    pg.execute("INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 5) g")
    services("snapshotter", pg, nats_url, table="t").wait_healthy()
    wait_for(lambda: kv_get(nats_url, "t"), 30, "the schema in KV")
    meta = request(nats_url, "t")
    messages = init_messages(nats_url, "init.>")
    kinds = {subject.split(".")[1] for subject, _, _ in messages}
    assert kinds == {"schema", "snap", "meta"}, kinds
    for subject, _, data in messages:
        decoded = msgpack.unpackb(data)
        assert isinstance(decoded, dict), subject
        if subject.startswith("init.meta."):
            assert decoded == meta
        elif subject.startswith("init.schema."):
            assert decoded["schema"] == "public.t" and decoded["table"] == "t"
        else:
            assert decoded["chunk"] == 0 and len(decoded["data"]) == 5

    async def kv_values() -> dict[str, bytes]:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value("schemas")
            return {key: (await kv.get(key)).value or b"" for key in await kv.keys()}
        finally:
            await nc.close()

    values = asyncio.run(kv_values())
    assert set(values) == {"t"}
    assert [c["name"] for c in msgpack.unpackb(values["t"])["columns"]] == ["id", "note"]


def test_bad_requests_get_clear_errors_and_change_nothing(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    services("snapshotter", pg, nats_url, table="t").wait_healthy()
    cases = {
        ("nope", b""): "table 'nope' is not configured here (configured: public.t)",
        ("t", b"{not json"): "the request body is not JSON",
        ("t", b"[1]"): "must be a JSON object",
        ("t", b'{"chunk_size": 0}'): "chunk_size: Input should be greater than or equal to 1",
        ("t", b'{"chunk_size": 20000}'): "chunk_size: Input should be less than or equal to 1",
        ("t", b'{"chunk": 5}'): "chunk: Extra inputs are not permitted",
    }
    for (table, body), message in cases.items():
        reply = request(nats_url, table, body)
        assert message in reply.get("error", ""), (table, body, reply)
    assert init_messages(nats_url, "init.snap.>") == []
    assert init_messages(nats_url, "init.meta.>") == []


def test_missing_init_stream_and_unreachable_postgres_are_reported(
    pg: Database, nats_url: str, services: Callable[..., Service], pg_server: Any
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    services("snapshotter", pg, nats_url, table="t").wait_healthy()

    async def drop_init() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream("INIT")
        await nc.close()

    asyncio.run(drop_init())
    assert "stream INIT does not exist" in request(nats_url, "t")["error"]

    asyncio.run(_recreate_streams(nats_url))
    cut_off = services(
        "snapshotter",
        pg,
        nats_url,
        table="t",
        snapshot_prefix="cutoff.snapshot",
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
    )
    wait_for(lambda: cut_off.health() == 503, 30, "the snapshotter to answer", cut_off)
    reply = request(nats_url, "t", prefix="cutoff.snapshot")
    assert reply["reason"] == "postgres_unavailable" and "PostgreSQL" in reply["error"]
    assert init_messages(nats_url, "init.meta.>") == []


async def _recreate_streams(url: str) -> None:
    from shared.provisioning import provision
    from shared.settings import BridgeSettings

    nc = await nats.connect(url)
    try:
        await provision(nc.jetstream(), BridgeSettings(nats_url=url))
    finally:
        await nc.close()


def test_snapshot_then_cdc_from_its_lsn_equals_the_table(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text)")
    pg.execute("INSERT INTO accounts SELECT g, 100, 'start' FROM generate_series(1, 5000) g")
    replicator = services("replicator", pg, nats_url, table="accounts").wait_healthy()
    services("snapshotter", pg, nats_url, table="accounts").wait_healthy()
    stop = threading.Event()
    transactions = 0

    def write() -> None:
        nonlocal transactions
        rng = random.Random(7)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            next_id = 5001
            while not stop.is_set():
                with conn.transaction():
                    roll = rng.random()
                    if roll < 0.4:
                        conn.execute("INSERT INTO accounts VALUES (%s, 1, 'new')", (next_id,))
                        next_id += 1
                    elif roll < 0.8:
                        conn.execute(
                            "UPDATE accounts SET balance = balance + 1, note = 'upd' WHERE id = %s",
                            (rng.randint(1, next_id),),
                        )
                    elif roll < 0.95:
                        conn.execute(
                            "DELETE FROM accounts WHERE id = %s", (rng.randint(1, next_id),)
                        )
                    else:
                        conn.execute(
                            "UPDATE accounts SET id = %s WHERE id = %s",
                            (next_id, rng.randint(1, next_id - 1)),
                        )
                        next_id += 1
                transactions += 1
                time.sleep(0.002)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(1.0)
    result: dict[str, Any] = {}
    consumer = threading.Thread(
        target=lambda: result.update(copy=asyncio.run(follow(nats_url, "accounts", 6))),
        daemon=True,
    )
    consumer.start()
    time.sleep(3.0)
    stop.set()
    writer.join(10)
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to catch up", replicator)
    consumer.join(60)
    rate = transactions / 4.0
    assert rate > 100, f"only {rate:.0f} transactions/s: the test would prove little"
    expected = {
        (r[0],): {"id": r[0], "balance": r[1], "note": r[2]}
        for r in pg.execute("SELECT id, balance, note FROM accounts")
    }
    rows = {(r["id"],): r for r in result["copy"].tables["public.accounts"]}
    assert len(rows) == len(expected)
    assert rows == expected


def test_200k_row_snapshot_in_bounded_memory(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text, n float8)")
    pg.execute(
        "INSERT INTO big SELECT g, repeat('p', 100), g / 3.0 FROM generate_series(1, 200000) g"
    )
    snapshotter = services("snapshotter", pg, nats_url, table="big").wait_healthy()
    started = time.monotonic()
    meta = request(nats_url, "big")
    elapsed = time.monotonic() - started
    assert meta["row_count"] == 200_000 and meta["batch_count"] == 200
    peak = peak_rss_mb(snapshotter.pid)
    print(f"200k-row snapshot: {200_000 / elapsed:,.0f} rows/s, peak RSS {peak:.0f} MB")
    assert peak < 200


def test_kill_9_mid_snapshot_leaves_no_slot_and_no_meta(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    pg.execute("INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 200000) g")
    snapshotter = services("snapshotter", pg, nats_url, table="big").wait_healthy()
    asking = threading.Thread(
        target=lambda: _ignore(lambda: request(nats_url, "big", b'{"chunk_size": 20}', timeout=60)),
        daemon=True,
    )
    asking.start()
    wait_for(
        lambda: (
            pg.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bridge_snap_%'"
            )[0][0]
            == 1
        ),
        30,
        "the temporary slot",
        snapshotter,
    )
    wait_for(
        lambda: len(init_messages(nats_url, "init.snap.big.>")) > 5, 30, "some chunks", snapshotter
    )
    snapshotter.kill()
    wait_for(
        lambda: (
            pg.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bridge_snap_%'"
            )[0][0]
            == 0
        ),
        15,
        "the temporary slot to go",
    )
    assert init_messages(nats_url, "init.meta.big") == []


def _ignore(call: Callable[[], Any]) -> None:
    """The request dies with the killed snapshotter; its outcome is not what is tested."""
    with contextlib.suppress(Exception):
        call()


def test_two_snapshotters_share_requests(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    pg.execute("INSERT INTO t VALUES (1)")
    first = services("snapshotter", pg, nats_url, table="t").wait_healthy()
    second = services("snapshotter", pg, nats_url, table="t").wait_healthy()
    for _ in range(16):
        assert request(nats_url, "t")["row_count"] == 1

    def served(service: Service) -> float:
        for line in service.metrics().splitlines():
            if line.startswith("bridge_snapshot_duration_seconds_count"):
                return float(line.split()[1])
        return 0.0

    assert served(first) + served(second) == 16
    assert served(first) > 0 and served(second) > 0


def test_concurrent_requests_for_one_table_join(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    # Big enough that the first snapshot still runs when the second request arrives.
    pg.execute("INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 300000) g")
    services("snapshotter", pg, nats_url, table="big").wait_healthy()
    replies: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: replies.append(request(nats_url, "big"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(120)
    assert len(replies) == 2
    assert replies[0]["snapshot_id"] == replies[1]["snapshot_id"]
    assert sorted(r.get("joined", False) for r in replies) == [False, True]
    assert len(init_messages(nats_url, "init.meta.big")) == 1


def test_snapshot_at_start(pg: Database, nats_url: str, services: Callable[..., Service]) -> None:
    pg.execute("CREATE TABLE a (id int PRIMARY KEY)")
    pg.execute("INSERT INTO a VALUES (1), (2)")
    services("snapshotter", pg, nats_url, table="a", snapshot_on_start="true").wait_healthy()
    wait_for(lambda: len(init_messages(nats_url, "init.meta.a")) == 1, 30, "the start-up snapshot")
    assert msgpack.unpackb(init_messages(nats_url, "init.meta.a")[0][2])["row_count"] == 2
    assert stream_count(nats_url, "INIT") >= 2


def test_row_over_max_payload_fails_the_snapshot_clearly_and_nothing_is_stuck(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """A row that no chunk can hold (stock max_payload, 1 MiB) is refused with its key, after
    the reader has handed over chunks before it; no meta goes out (a consumer never takes the
    part for a snapshot), and the next request is served."""
    pg.execute("CREATE TABLE wide (id int PRIMARY KEY, body text)")
    pg.execute("INSERT INTO wide SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
    pg.execute(
        "UPDATE wide SET body = (SELECT string_agg(md5(g::text), '') FROM"
        " generate_series(1, 50000) g) WHERE id = 4000"
    )  # 1.6 MB of text
    snapshotter = services("snapshotter", pg, nats_url, table="wide")
    snapshotter.wait_healthy()
    reply = request(nats_url, "wide", b'{"chunk_size": 100}')
    assert reply["reason"] == "row_too_large", reply
    assert "with key id=4000" in reply["error"] and "max_payload" in reply["error"]
    assert init_messages(nats_url, "init.meta.>") == []
    pg.execute("UPDATE wide SET body = 'small' WHERE id = 4000")
    meta = request(nats_url, "wide", b'{"chunk_size": 100}')
    assert meta["row_count"] == 5000 and meta["batch_count"] == 50, meta


def test_a_stop_ends_snapshots_waiting_for_a_transaction_left_open(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Creating a snapshot's slot waits for every transaction running at that moment; one
    left open in some session holds it up for good. Eight snapshots at once (more than
    Python's default thread pool of 6 holds on 2 cores) all reach that wait; the log names the
    session; a SIGTERM must not wait for it too: the snapshotter exits 0, every request is
    answered `shutting_down`, the slots are gone, no meta went out, and the session's
    transaction was not needed to end."""
    tables = [f"t{i}" for i in range(8)]
    for t in tables:
        pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
        pg.execute(f"INSERT INTO {t} SELECT generate_series(1, 100)")
    snapshotter = services(
        "snapshotter", pg, nats_url, table=",".join(tables), max_concurrent_snapshots=8
    ).wait_healthy()
    with pg.connect(autocommit=False) as idle_in_transaction:
        idle_in_transaction.execute("SELECT pg_current_xact_id()")  # a transaction with an xid
        replies: list[dict[str, Any]] = []
        asking = [
            threading.Thread(
                target=lambda t=t: replies.append(request(nats_url, t, timeout=60)), daemon=True
            )
            for t in tables
        ]
        for thread in asking:
            thread.start()
        wait_for(
            lambda: (
                pg.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid'"
                    " AND query LIKE 'CREATE_REPLICATION_SLOT%'"
                )[0][0]
                == 8
            ),
            30,
            "the eight slots' creation to wait",
            snapshotter,
        )
        pid = idle_in_transaction.info.backend_pid
        wait_for(
            lambda: (
                "the snapshot of public.t7 waits for 1 transaction(s)" in snapshotter.output()
                and f"pid {pid} (" in snapshotter.output()
            ),
            30,
            "the log to name the session",
            snapshotter,
        )
        assert snapshotter.terminate(timeout=20) == 0, snapshotter.output()[-2000:]
        for thread in asking:
            thread.join(10)
        assert [r.get("reason") for r in replies] == ["shutting_down"] * 8, replies
        assert "ask again" in replies[0]["error"]
        assert pg.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bridge_snap_%'"
        ) == [(0,)]
        assert init_messages(nats_url, "init.meta.>") == []
        idle_in_transaction.rollback()  # still there: the stop did not wait for it
