"""Chunked snapshots (docs/wire-format.md, "Chunked snapshots"): the table read in primary-key
ranges, each in its own short transaction, while writes go on; a copy that loads the chunks and
replays the CDC window idempotently ends equal to the table.

The writer is test_consumers' (inserts, updates of a TOASTed column and of others, deletes,
key changes); the items table is grown to 60,000 rows and the snapshotter's transactions are
cut to about 20 ms each, so that the read spans many transactions with writes between them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest

from pg_nats_bridge import MemoryCopy, SqliteCopy
from pg_nats_bridge.lsn import Lsn
from pg_nats_bridge.sqlite import stored_value
from services.snapshotter.ranged_read import _until_visible
from tests.harness.copies import (
    FollowedCopy,
    Writer,
    assert_loaded_the_continued_snapshot,
    bootstrapped,
    bridge,
    chunked_copy,
    grow_items,
    loaded_snapshot,
    make_tables,
    start_replica,
    table_rows,
)
from tests.harness.postgres import Database, PostgresServer
from tests.harness.services import BRIDGE, Service, ask_all, stream_messages, wait_for


def test_a_chunked_snapshot_under_writes_gives_a_copy_equal_to_the_table(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    grow_items(pg)
    tables = "items,events"
    replicator = services("replicator", pg, nats_url, table=tables).wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, table=tables, snapshot_transaction_seconds=0.02
    ).wait_healthy()
    path = tmp_path / "copy.db"
    env = {**replicator.env, "BRIDGE_SNAPSHOT_MODE": "chunked"}
    with Writer(pg.url, seed=4) as writer:
        time.sleep(0.5)  # writes under way before the snapshot begins
        replica = start_replica(env, path, tmp_path / "replica.log", "items")
        wait_for(lambda: "applied" in replica.output(), 120, "the replica to follow", replica)
        before = writer.transactions
        wait_for(lambda: writer.transactions > before + 300, 60, "writes after the load")
    assert replica.terminate() == 0
    result = bridge("verify", "items", "--sqlite", str(path), env=env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "public.items at " in result.stdout and ": equal" in result.stdout

    said = snapshotter.output()
    line = next(x for x in said.splitlines() if "chunked snapshot of public.items" in x)
    transactions = int(line.split(" rows in ")[1].split()[0])
    longest = float(line.split("the longest ")[1].split()[0])
    print(f"\n{line.split('INFO ')[-1]}; {writer.transactions} writer transactions")
    assert transactions >= 10, line  # many short transactions, not one
    assert longest < 5, line  # loose: ~0.02 s asked; a loaded CI box stretches it

    # Writes landed inside the replay window, so the copy had to replay them idempotently.
    metas = [
        m for subject, _, m in stream_messages(nats_url, "INIT") if subject == "init.meta.items"
    ]
    (meta,) = metas
    assert meta["mode"] == "chunked", meta
    start, until = Lsn.parse(meta["lsn"]), Lsn.parse(meta["replay_until"])
    inside = [
        e
        for _, _, e in stream_messages(nats_url)
        if e.get("table") == "items" and start <= Lsn.parse(e["commit_lsn"]) < until
    ]
    assert inside, f"no write committed between {start} and {until}"
    print(f"{len(inside)} changes of items committed inside the replay window")


def test_the_library_loads_a_chunked_snapshot_into_memory_equal_to_the_table(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    grow_items(pg)
    replicator = services("replicator", pg, nats_url, table="items").wait_healthy()
    services(
        "snapshotter", pg, nats_url, table="items", snapshot_transaction_seconds=0.02
    ).wait_healthy()
    followed = FollowedCopy(nats_url, ["items"], MemoryCopy, snapshot_mode="chunked")
    copy = followed.follow_writes(pg, replicator, seed=9)
    names = ["id", "score", "big", "flag"]
    got = sorted(
        (tuple(stored_value(r.get(c)) for c in names) for r in copy.tables["public.items"]),
        key=repr,
    )
    assert got == table_rows(pg, "items", ", ".join(names))


def test_a_table_without_a_primary_key_is_refused_a_chunked_snapshot(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    make_tables(pg)
    services("replicator", pg, nats_url, table="items,events").wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, table="items,events").wait_healthy()
    refused = bridge("snapshot", "events", "--snapshot-mode", "chunked", env=snapshotter.env)
    assert refused.returncode == 1, refused.stdout
    text = " ".join(refused.stdout.split())
    assert "no_primary_key" in text and "give the table a primary key" in text, text
    taken = bridge("snapshot", "events", env=snapshotter.env)  # the default mode takes it
    assert taken.returncode == 0, taken.stdout


def ask_chunked(env: dict[str, str]) -> subprocess.Popen[str]:
    """`bridge snapshot items --snapshot-mode chunked`, running."""
    return subprocess.Popen(
        [BRIDGE, "snapshot", "items", "--snapshot-mode", "chunked"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_chunked_snapshot_killed_mid_way_is_continued_by_another_snapshotter(
    pg: Database,
    nats_url: str,
    services: Callable[..., Service],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first snapshotter dies (kill -9, by failpoint) after its 20th chunk while the
    library and `bridge replica` wait on its snapshot; a second one, asked again by both as
    soon as the first's progress record is older than the takeover time, continues from the
    last recorded range under the same snapshot id: each chunk is in INIT once, the second
    sends only the ones after the record, both copies load that one snapshot and verify
    equal."""
    grow_items(pg)
    settings = {
        "table": "items",
        "snapshot_transaction_seconds": 0.02,
        "snapshot_takeover_seconds": 10,
        "chunk_size": 500,
    }
    services("replicator", pg, nats_url, table="items").wait_healthy()
    doomed = services(
        "snapshotter", pg, nats_url, failpoints="snapshot.after_chunk=exit@20", **settings
    ).wait_healthy()
    path, replica_path = tmp_path / "copy.db", tmp_path / "replica.db"
    replica = start_replica(
        doomed.env, replica_path, tmp_path / "replica.log", "items",
        extra=["--snapshot-mode", "chunked"],
    )  # fmt: skip
    with chunked_copy(nats_url, path) as copy:
        with Writer(pg.url, seed=10):
            assert doomed.wait(60) != 0  # the failpoint's exit, mid-snapshot
            died = time.monotonic()
            second = services("snapshotter", pg, nats_url, **settings).wait_healthy()
            wait_for(copy.loaded.is_set, 120, "the copy to load and catch up", second)
            wait_for(lambda: bootstrapped(replica_path), 60, "the replica to load", replica)
            print(f"\nloaded {time.monotonic() - died:.1f} s after the reader died")
            time.sleep(1)
        copy.catch_up(pg)
    assert replica.terminate() == 0

    output = second.output()
    line = next(x for x in output.splitlines() if "continuing the chunked snapshot" in x)
    print("\n" + line.split("INFO ")[-1])
    resumed_at = int(line.split("from chunk ")[1].split()[0])
    assert resumed_at > 0, line
    init = stream_messages(nats_url, "INIT")
    (meta,) = [m for subject, _, m in init if subject == "init.meta.items"]
    assert meta["resumed"] is True and meta["mode"] == "chunked", meta
    prefix = f"init.snap.items.{meta['snapshot_id']}."
    numbers = sorted(
        int(subject.rsplit(".", 1)[1]) for subject, _, _ in init if subject.startswith(prefix)
    )
    assert numbers == list(range(meta["batch_count"])), "a chunk missing or twice in INIT"
    sent = second.metrics()
    published = next(
        float(x.split()[-1])
        for x in sent.splitlines()
        if x.startswith("bridge_snapshot_chunks_published_total")
    )
    assert published == meta["batch_count"] - resumed_at, (published, resumed_at, meta)
    assert_loaded_the_continued_snapshot(
        meta, [path, replica_path], [caplog.text, replica.output()]
    )

    # The replica's copy (the library's loaded the same snapshot; the other kill tests verify
    # a library copy).
    result = bridge("verify", "items", "--sqlite", str(replica_path), env=second.env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_copy_waiting_on_a_killed_exported_snapshot_asks_again_when_heartbeats_stop(
    pg: Database,
    nats_url: str,
    services: Callable[..., Service],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exported snapshot cannot be continued and its reader records nothing: the copy
    knows its snapshotter died because the interim messages it asked for stop coming (one a
    second here, so that three missed take 3 s, not the default's 15), asks again, and loads
    the second snapshotter's snapshot; never for want of an answer (its stall is 600 s)."""
    grow_items(pg)
    settings = {"table": "items", "chunk_size": 500}
    services("replicator", pg, nats_url, table="items").wait_healthy()
    doomed = services(
        "snapshotter", pg, nats_url, failpoints="snapshot.after_chunk=exit@10", **settings
    ).wait_healthy()
    path = tmp_path / "copy.db"
    copy = FollowedCopy(
        nats_url, ["items"], lambda: SqliteCopy(path), snapshot_stall_seconds=600,
        snapshot_heartbeat_seconds=1,
    )  # fmt: skip
    with copy:
        assert doomed.wait(60) != 0  # the failpoint's exit, mid-snapshot
        died = time.monotonic()
        second = services("snapshotter", pg, nats_url, **settings).wait_healthy()
        wait_for(copy.loaded.is_set, 60, "the copy to load", second)
        print(f"\nloaded {time.monotonic() - died:.1f} s after the snapshotter died")
        copy.catch_up(pg)
    assert "its snapshotter stopped answering (no heartbeat for" in caplog.text, caplog.text
    assert "no reply and no chunk" not in caplog.text
    (meta,) = [m for s, _, m in stream_messages(nats_url, "INIT") if s == "init.meta.items"]
    assert loaded_snapshot(path)["snapshot_id"] == meta["snapshot_id"]
    result = bridge("verify", "items", "--sqlite", str(path), env=second.env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_operator_pauses_resumes_and_cancels_a_chunked_snapshot(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Through the admin API (the snapshotter stalls 4 s after its 3rd chunk, so that the
    pause lands mid-way): paused, the request is answered `paused` and the rows stay recorded;
    resumed, the snapshot continues where it stopped under the same id; a running one
    cancelled leaves the next request to start a new one."""
    grow_items(pg)
    token = {"control_token": "s3cret-control"}
    settings = {"table": "items", "snapshot_transaction_seconds": 0.01, "chunk_size": 100}
    replicator = services("replicator", pg, nats_url, table="items").wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, failpoints="snapshot.after_chunk=sleep:4@3",
        **settings, **token,
    ).wait_healthy()  # fmt: skip
    front = services(
        "admin", pg, nats_url, replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}", admin_token="adm", **token,
    )  # fmt: skip
    wait_for(lambda: front.health() == 200, 30, "admin healthy", front)
    admin = httpx.Client(base_url=f"http://127.0.0.1:{front.port}", timeout=30)
    auth = {"Authorization": "Bearer adm"}

    def running() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = admin.get("/status").json()["snapshotter"]["running"]
        return found

    request = ask_chunked(snapshotter.env)
    wait_for(lambda: running() and running()[0]["rows_done"] > 0, 30, "the snapshot to run")
    assert admin.post("/snapshots/items/pause").status_code in (401, 403)  # no token
    paused = admin.post("/snapshots/items/pause", headers=auth)
    assert paused.status_code == 200 and "pause requested" in paused.json()["status"], paused.text
    out, _ = request.communicate(timeout=60)
    assert request.returncode == 1 and "paused" in out, out
    assert running() == []
    again = ask_chunked(snapshotter.env)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 1 and "paused by an operator" in " ".join(out.split()), out

    resumed = admin.post("/snapshots/items/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.json()["status"] == "resumed", resumed.text
    snapshot_id = resumed.json()["snapshot_id"]

    def meta() -> dict[str, Any] | None:
        found = [m for s, _, m in stream_messages(nats_url, "INIT") if s == "init.meta.items"]
        return found[-1] if found else None

    done = wait_for(lambda: (m := meta()) and m, 60, "the resumed snapshot's meta", snapshotter)
    assert done["snapshot_id"] == snapshot_id and done["resumed"] is True, done
    assert done["row_count"] == pg.execute("SELECT count(*) FROM items")[0][0]
    prefix = f"init.snap.items.{snapshot_id}."
    init = stream_messages(nats_url, "INIT")
    numbers = sorted(int(s.rsplit(".", 1)[1]) for s, _, _ in init if s.startswith(prefix))
    assert numbers == list(range(done["batch_count"])), "a chunk missing or twice"
    assert admin.post("/snapshots/items/resume", headers=auth).status_code == 404  # done

    request = ask_chunked(snapshotter.env)  # a new one (the last is done); cancelled while it runs
    wait_for(lambda: running() and running()[0]["rows_done"] > 0, 30, "the next snapshot")
    cancelled = admin.post("/snapshots/items/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    out, _ = request.communicate(timeout=60)
    assert request.returncode == 1 and "cancelled" in out, out
    fresh = ask_chunked(snapshotter.env)
    out, _ = fresh.communicate(timeout=120)
    assert fresh.returncode == 0, out
    assert snapshot_id not in out and "chunked" in out


def test_a_chunked_snapshot_publishes_what_the_publication_does_as_an_exported_one(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """The publication is the contract in both modes: a column list (people) and a row filter
    (orders; the chunked ranges add their key condition to it); the same rows, the same
    columns."""
    pg.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, region text, amount numeric);"
        "ALTER TABLE orders REPLICA IDENTITY FULL;"  # the filter's column must be in it
        "INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g"
        " FROM generate_series(1, 5000) g;"
        "CREATE TABLE people (id int PRIMARY KEY, name text, secret text);"
        "INSERT INTO people SELECT g, 'p' || g, 'hidden' FROM generate_series(1, 3000) g"
    )
    settings = {
        "table": "people(id,name),orders",
        "row_filter": '{"orders": "region = \'eu\'"}',
        "snapshot_transaction_seconds": 0.01,
    }
    services("replicator", pg, nats_url, **settings).wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, **settings).wait_healthy()
    for table, count, columns in (
        ("orders", 1666, {"id", "region", "amount"}),
        ("people", 3000, {"id", "name"}),
    ):
        rows: dict[str, list[dict[str, Any]]] = {}
        for mode in ("exported", "chunked"):
            result = bridge(
                "snapshot", table, "--snapshot-mode", mode, "--chunk-size", "100",
                env=snapshotter.env,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout
            init = stream_messages(nats_url, "INIT")
            meta = [m for s, _, m in init if s == f"init.meta.{table}"][-1]
            assert meta.get("mode", "exported") == mode, meta
            prefix = f"init.snap.{table}.{meta['snapshot_id']}."
            chunks = [m for s, _, m in init if s.startswith(prefix)]
            rows[mode] = sorted((r for c in chunks for r in c["data"]), key=lambda r: r["id"])
        assert rows["chunked"] == rows["exported"], table
        assert len(rows["chunked"]) == count and set(rows["chunked"][0]) == columns, table
        assert table != "orders" or {r["region"] for r in rows["chunked"]} == {"eu"}


def test_the_first_range_waits_for_a_commit_still_waiting_for_a_synchronous_standby() -> None:
    """A transaction whose commit is written and decoded (the consistent point's snapshot sees
    it, and consumers skip its changes) but which still waits for a synchronous standby's
    answer is invisible to a new snapshot: a range read then would miss its rows. The wait
    before the first range holds until it is visible. The consistent point's snapshot is
    written out here as it would be (`xmin:xmax:` with the transaction below xmax): a slot
    created while it waits would wait for it itself. (A server of its own:
    synchronous_standby_names names a standby that never answers, hanging every commit.)"""
    with PostgresServer.create() as server:
        db = Database(server, "postgres")
        db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        db.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        db.execute("SELECT pg_reload_conf()")
        waiting = threading.Thread(
            target=lambda: psycopg.connect(db.url, autocommit=True).execute(
                "INSERT INTO t VALUES (1)"
            ),
            daemon=True,
        )
        waiting.start()  # its commit is written, then waits for 'nobody'
        wait_for(
            lambda: (
                db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                == [(1,)]
            ),
            30,
            "the commit to wait for the standby",
        )
        ((xid,),) = db.execute(
            "SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        exported = f"{xid}:{xid + 1}:"  # the transaction committed, as decoding sees it

        async def wait() -> float:
            async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
                started = time.monotonic()
                await _until_visible(conn, exported, "public.t")
                return time.monotonic() - started

        def release() -> None:
            time.sleep(2)
            db.execute("ALTER SYSTEM RESET synchronous_standby_names")
            db.execute("SELECT pg_reload_conf()")  # the commit returns, visible

        threading.Thread(target=release, daemon=True).start()
        waited = asyncio.run(wait())
        waiting.join(30)
        assert waited >= 1.9, f"returned after {waited:.2f} s, before the commit was visible"
        assert db.execute("SELECT id FROM t") == [(1,)]


def test_snapshot_control_requests_that_are_not_one_get_a_clear_answer(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Anyone on the account can publish on the control subject: without the token, or with a
    body that is no request (too long, too deep, wrong types, an unknown table), each gets its
    answer, a thousand at once too, and the snapshotter stays healthy."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    snapshotter = services(
        "snapshotter", pg, nats_url, table="t", control_token="s3cret-control"
    ).wait_healthy()
    subject = "bridge.control.snapshotter.snapshot"
    token = {"Authorization": "Bearer s3cret-control"}

    async def ask(body: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            reply = await nc.request(subject, body, timeout=10, headers=headers)
            answer: dict[str, Any] = json.loads(reply.data)
            return answer
        finally:
            await nc.close()

    assert asyncio.run(ask(b'{"action": "pause", "table": "t"}', None))["reason"] == "unauthorized"
    for body in (
        b"x" * 100_000,
        b"[" * 100_000,
        b'{"action": 5, "table": "t"}',
        b'{"action": "pause", "table": ["t"]}',
        b'{"action": "pause", "table": "nope"}',
        b'{"action": "drop", "table": "t"}',
        b"\xff\xfe",
    ):
        assert asyncio.run(ask(body, token))["reason"] == "bad_request", body[:40]

    flood = ask_all(nats_url, subject, [b"{}"] * 1000, timeout=30)
    assert {a["reason"] for a in flood} == {"unauthorized"}
    assert snapshotter.health() == 200


def test_a_partitioned_table_with_a_generated_column_snapshots_alike_in_both_modes(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Ranges over a partitioned table run across its partitions in key order; a stored
    generated column is published as the exported mode publishes it."""
    pg.execute(
        "CREATE TABLE m (id int, region text, qty int, total int GENERATED ALWAYS AS (qty * 2)"
        " STORED, PRIMARY KEY (region, id)) PARTITION BY LIST (region);"
        "CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');"
        "CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');"
        "INSERT INTO m (id, region, qty) SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END,"
        " g FROM generate_series(1, 4000) g"
    )
    settings = {"table": "m", "snapshot_transaction_seconds": 0.01}
    services("replicator", pg, nats_url, **settings).wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, **settings).wait_healthy()
    rows: dict[str, list[dict[str, Any]]] = {}
    for mode in ("exported", "chunked"):
        result = bridge("snapshot", "m", "--snapshot-mode", mode, env=snapshotter.env)
        assert result.returncode == 0, result.stdout
        init = stream_messages(nats_url, "INIT")
        meta = [m for s, _, m in init if s == "init.meta.m"][-1]
        prefix = f"init.snap.m.{meta['snapshot_id']}."
        chunks = [m for s, _, m in init if s.startswith(prefix)]
        rows[mode] = sorted((r for c in chunks for r in c["data"]), key=lambda r: r["id"])
    assert rows["chunked"] == rows["exported"] and len(rows["chunked"]) == 4000
    total = pg.execute("SELECT total FROM m WHERE id = 7")[0][0]
    assert rows["chunked"][6].get("total") == total, rows["chunked"][6]


def test_a_table_altered_during_its_chunked_snapshot_is_refused_and_read_again(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """An ALTER TABLE that commits between two ranges (the snapshotter stalls 4 s after its
    3rd chunk) would leave the snapshot's first rows in the old shape and the rest in the new:
    the next range finds another shape digest, the request is answered `table_rewritten`,
    the snapshot's record says cancelled (never continued), and the next request reads a new
    snapshot whose every row has the added column's default."""
    grow_items(pg)
    settings = {"table": "items", "snapshot_transaction_seconds": 0.01, "chunk_size": 100}
    services("replicator", pg, nats_url, table="items").wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, failpoints="snapshot.after_chunk=sleep:4@3", **settings
    ).wait_healthy()

    def chunks() -> list[tuple[str, Any]]:
        init = stream_messages(nats_url, "INIT")
        return [(s, m) for s, _, m in init if s.startswith("init.snap.items.")]

    request = ask_chunked(snapshotter.env)
    wait_for(lambda: len(chunks()) >= 3, 30, "the snapshot's first chunks", snapshotter)
    pg.execute("ALTER TABLE items ADD COLUMN extra int NOT NULL DEFAULT 7")
    out, _ = request.communicate(timeout=60)
    assert request.returncode == 1 and "table_rewritten" in out, out
    assert "was altered while its chunked snapshot was read" in " ".join(out.split()), out
    first = chunks()[0][0].split(".")[3]

    again = ask_chunked(snapshotter.env)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    (meta,) = [m for s, _, m in stream_messages(nats_url, "INIT") if s == "init.meta.items"]
    assert meta["snapshot_id"] != first and "resumed" not in meta, meta
    rows = [row for s, m in chunks() if s.split(".")[3] == meta["snapshot_id"] for row in m["data"]]
    assert len(rows) == meta["row_count"] == pg.execute("SELECT count(*) FROM items")[0][0]
    assert {row["extra"] for row in rows} == {7}
