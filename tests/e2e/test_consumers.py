"""The consumer library (pg_nats_bridge), `bridge replica` and `bridge verify` against the real
services: a copy built while writes go on must equal the table, resume after a kill without a
new snapshot, and bootstrap again when the stream's retention passed it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import nats

from pg_nats_bridge import CaughtUp, MemoryCopy, Reset, TableFollower
from pg_nats_bridge.sqlite import stored_value
from shared.wire import unpack
from tests.harness.copies import (
    FollowedCopy,
    Writer,
    bridge,
    make_tables,
    replica_until_caught_up,
    start_replica,
    start_stack,
    table_rows,
)
from tests.harness.postgres import Database
from tests.harness.services import Service, slot_lag, stream_count, wait_for
from tests.harness.streams import init_messages


def test_library_keeps_a_copy_equal_to_the_tables_under_writes(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    make_tables(pg)
    replicator = start_stack(pg, nats_url, services)
    followed = FollowedCopy(nats_url, ["items", "public.events"], MemoryCopy, batches=False)
    copy = followed.follow_writes(pg, replicator)
    for table, columns in (("items", "id, score, big, flag"), ("events", "kind, note")):
        names = [c.strip() for c in columns.split(",")]
        got = sorted(
            (tuple(stored_value(r.get(c)) for c in names) for r in copy.tables[f"public.{table}"]),
            key=repr,
        )
        assert got == table_rows(pg, table, columns), table
    assert copy.schemas["public.items"].primary_key == ("id",)
    assert copy.schemas["public.events"].replica_identity == "full"


def test_replica_resumes_after_kill_and_verify_proves_it_equal_under_writes(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_tables(pg)
    replicator = start_stack(pg, nats_url, services)
    path = tmp_path / "copy.db"
    env = replicator.env
    with Writer(pg.url, seed=2):
        replica = start_replica(env, path, tmp_path / "replica.log")
        wait_for(lambda: "applied" in replica.output(), 60, "the replica to follow", replica)
        time.sleep(2)
        replica.kill()
        time.sleep(1)
        replica = start_replica(env, path, tmp_path / "replica.log")
        wait_for(lambda: "resuming" in replica.output(), 30, "the replica to resume", replica)
        busy = bridge("verify", "items", "--sqlite", str(path), env=env)
        assert busy.returncode == 2 and "in use by `bridge replica`" in busy.stdout, busy
        time.sleep(2)
        assert replica.terminate() == 0
        # Writes go on while verify reads PostgreSQL and moves the copy to the same LSN.
        result = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    output = replica.output()
    print(result.stdout)
    assert output.count("bootstrapping") == 1, output
    assert result.returncode == 0, result.stdout + result.stderr
    assert "public.items at " in result.stdout and ": equal" in result.stdout
    assert result.stdout.count(": equal") == 2, result.stdout

    db = sqlite3.connect(path)
    db.execute(
        'UPDATE "public.items" SET score = -1 WHERE id = (SELECT min(id) FROM "public.items")'
    )
    db.execute('DELETE FROM "public.events" WHERE rowid = (SELECT min(rowid) FROM "public.events")')
    db.commit()
    db.close()
    broken = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    print(broken.stdout)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "1 different" in broken.stdout and "different key (" in broken.stdout
    assert "1 missing" in broken.stdout


def test_replica_bootstraps_again_when_retention_passed_it(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_tables(pg)
    # A CDC stream that keeps events 5 s (the replicator creates it), so a copy stopped for
    # longer can no longer resume from the stream.
    replicator = services(
        "replicator", pg, nats_url, table="items,events", cdc_max_age_seconds=5
    ).wait_healthy()
    services("snapshotter", pg, nats_url, table="items,events").wait_healthy()
    path = tmp_path / "copy.db"
    env = replicator.env
    first = replica_until_caught_up(env, path, tmp_path / "first.log")
    assert "bootstrapping public.items, public.events: the copy is empty" in first, first
    pg.execute("INSERT INTO items VALUES (9999, 1, 'late', true)")
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to publish it", replicator)
    wait_for(lambda: stream_count(nats_url) == 0, 30, "retention to remove it")
    second = replica_until_caught_up(env, path, tmp_path / "second.log")
    assert "retention removed changes the copy has not applied" in second, second
    result = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_wire_type_verifies_equal_through_a_sqlite_copy(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    pg.execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');"
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
        "CREATE TABLE typed (id smallint PRIMARY KEY, i int, b bigint, o oid, r real,"
        " d double precision, ok boolean, n numeric, t text, v varchar(10), c char(3), nm name,"
        " by bytea, j json, jb jsonb, ts timestamptz, u uuid, a int[], m mood, p posint,"
        " iv interval, big text)"
    )
    row = (
        "(%s, -2147483648, 9223372036854775807, 4294967295, 'NaN', '-Infinity', true,"
        " 12345678901234567890.000000001, 'tëxt', 'v', 'ab', 'nm', '\\x00ff'::bytea,"
        " '{\"a\": [1, 2.5]}', '{\"b\": null}', '2024-06-01 10:00:00.5+02',"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', 'ok', 7, '1 day 02:03:04',"
        " repeat('z', 9000))"
    )
    for i in range(1, 4):
        pg.execute(f"INSERT INTO typed VALUES {row}", (i,))
    pg.execute("INSERT INTO typed (id) VALUES (4)")  # every other column NULL
    replicator = services("replicator", pg, nats_url, table="typed").wait_healthy()
    services("snapshotter", pg, nats_url, table="typed").wait_healthy()
    path = tmp_path / "typed.db"
    env = replicator.env
    replica = start_replica(env, path, tmp_path / "replica.log", "typed")
    wait_for(lambda: "applied" in replica.output(), 60, "the replica to follow", replica)
    # Changes after the snapshot: an update leaving the TOASTed column unchanged, a key
    # change, a delete, an insert of every type.
    pg.execute("UPDATE typed SET r = 1.5, d = 0.1, n = 'NaN' WHERE id = 1")
    pg.execute("UPDATE typed SET id = 10 WHERE id = 2")
    pg.execute("DELETE FROM typed WHERE id = 3")
    pg.execute(f"INSERT INTO typed VALUES {row}", (5,))
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to catch up", replicator)
    time.sleep(1.5)
    assert replica.terminate() == 0
    result = bridge("verify", "typed", "--sqlite", str(path), env=env)
    assert result.returncode == 0 and ": equal" in result.stdout, result.stdout + result.stderr
    db = sqlite3.connect(path)
    by = db.execute('SELECT by, big FROM "public.typed" WHERE id = 1').fetchone()
    assert by == (b"\x00\xff", "z" * 9000)


def test_follower_reuses_a_complete_snapshot_the_stream_still_covers(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    make_tables(pg)
    replicator = start_stack(pg, nats_url, services)
    pg.execute("UPDATE items SET score = 0 WHERE id <= 10")  # CDC older than the snapshot
    first = bridge("snapshot", "items", env=replicator.env)
    assert first.returncode == 0, first.stdout + first.stderr
    pg.execute("UPDATE items SET score = 1 WHERE id <= 5")  # after it: applied on top

    async def follow() -> tuple[MemoryCopy, list[str]]:
        nc = await nats.connect(nats_url)
        copy, snapshots = MemoryCopy(), []
        try:
            async for item in TableFollower(nc, ["items"]):
                copy.apply(item)
                if isinstance(item, Reset):
                    snapshots.append(item.snapshot["snapshot_id"])
                if isinstance(item, CaughtUp):
                    return copy, snapshots
        finally:
            await nc.close()
        raise AssertionError("the follower ended")

    copy, snapshots = asyncio.run(follow())
    metas = [
        unpack(data)["snapshot_id"] for _, _, data in init_messages(nats_url, "init.meta.items")
    ]
    assert snapshots == metas[-1:] and len(metas) == 1, (snapshots, metas)
    got = sorted(
        ((r["id"], stored_value(r["score"])) for r in copy.tables["public.items"]), key=repr
    )
    assert got == table_rows(pg, "items", "id, score")
