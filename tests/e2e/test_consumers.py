"""The consumer library (pg_nats_bridge), `bridge replica` and `bridge verify` against the real
services: a copy built while writes go on must equal the table, resume after a kill without a
new snapshot, and bootstrap again when the stream's retention passed it."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import psycopg

from pg_nats_bridge import CaughtUp, MemoryCopy, Reset, TableFollower
from pg_nats_bridge.sqlite import stored_value
from shared.wire import unpack
from tests.e2e.conftest import BRIDGE, Service, slot_lag, stream_count, wait_for
from tests.e2e.test_snapshotter import init_messages
from tests.harness.postgres import Database


class Writer:
    """Random single-row transactions (inserts, updates of a TOASTed column or not, deletes,
    key changes) on `items`, and inserts/updates/deletes on the key-less `events`, in a thread."""

    def __init__(self, url: str, seed: int = 1) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.transactions = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)

    def _run(self) -> None:
        rng = self.rng
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM items").fetchone()[0]
            while not self.stop.is_set():
                roll = rng.random()
                with conn.transaction():
                    if roll < 0.3:
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (
                                next_id,
                                rng.random(),
                                "x" * rng.choice((5, 9000)),
                                rng.random() < 0.5,
                            ),
                        )
                        next_id += 1
                    elif roll < 0.6:  # the TOASTed column is left unchanged
                        conn.execute(
                            "UPDATE items SET score = %s WHERE id = %s",
                            (rng.random(), rng.randint(1, next_id)),
                        )
                    elif roll < 0.7:
                        conn.execute(
                            "UPDATE items SET big = %s WHERE id = %s",
                            ("y" * rng.randint(1, 12000), rng.randint(1, next_id)),
                        )
                    elif roll < 0.8:
                        conn.execute("DELETE FROM items WHERE id = %s", (rng.randint(1, next_id),))
                    elif roll < 0.85:
                        conn.execute(
                            "UPDATE items SET id = %s WHERE id = %s",
                            (next_id, rng.randint(1, next_id - 1)),
                        )
                        next_id += 1
                    elif roll < 0.95:
                        conn.execute(
                            "INSERT INTO events VALUES (%s, %s)", (rng.randint(1, 20), "e")
                        )
                    else:
                        conn.execute(
                            "UPDATE events SET note = note || 'u' WHERE ctid = "
                            "(SELECT ctid FROM events WHERE kind = %s LIMIT 1)",
                            (rng.randint(1, 20),),
                        )
                self.transactions += 1
                time.sleep(0.003)


class FollowedCopy:
    """A copy (`make_copy()`: a MemoryCopy, a SqliteCopy) following `tables` in a thread of
    its own, with its own event loop and NATS connection: `loaded` is set at each CaughtUp.
    `batches=False` applies item by item (`async for item in follower`)."""

    def __init__(
        self,
        nats_url: str,
        tables: list[str],
        make_copy: Callable[[], Any],
        *,
        batches: bool = True,
        **options: Any,
    ) -> None:
        self.nats_url, self.tables, self.make_copy = nats_url, tables, make_copy
        self.batches, self.options = batches, options
        self.copy: Any = None
        self.loaded = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._follow()), daemon=True)

    def start(self) -> FollowedCopy:
        self.thread.start()
        return self

    def stop(self) -> None:
        """At its next CaughtUp."""
        self.done.set()
        self.thread.join(30)

    def __enter__(self) -> FollowedCopy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def catch_up(
        self, pg: Database, replicator: Service | None = None, timeout: float = 60
    ) -> None:
        """Once the replicator published every change, until the copy applied them all."""
        wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to catch up", replicator)
        self.loaded.clear()
        wait_for(self.loaded.is_set, timeout, "the copy to catch up after the writes")

    async def _follow(self) -> None:
        nc = await nats.connect(self.nats_url)
        copy = self.copy = self.make_copy()
        try:
            follower = TableFollower(nc, self.tables, **self.options)
            if self.batches:
                async for batch in follower.batches():
                    copy.apply_all(batch)
                    if batch and isinstance(batch[-1], CaughtUp) and self._caught_up():
                        return
            else:
                async for item in follower:
                    copy.apply(item)
                    if isinstance(item, CaughtUp) and self._caught_up():
                        return
        finally:
            if hasattr(copy, "close"):
                copy.close()
            await nc.close()

    def follow_writes(self, pg: Database, replicator: Service, seed: int = 1) -> Any:
        """Start following 0.5 s into the writer's 4.5 s of writes; once they and the copy are
        caught up, stop; the copy."""
        with Writer(pg.url, seed=seed) as writer:
            time.sleep(0.5)
            self.start()
            time.sleep(4)
        assert writer.transactions > 300, f"only {writer.transactions} transactions"
        self.catch_up(pg, replicator, timeout=30)
        self.stop()
        return self.copy

    def _caught_up(self) -> bool:
        """Say so; whether to stop."""
        self.loaded.set()
        return self.done.is_set()


def make_tables(pg: Database) -> None:
    pg.execute(
        "CREATE TABLE items (id int PRIMARY KEY, score float8, big text, flag boolean);"
        "CREATE TABLE events (kind int, note text);"
        "ALTER TABLE events REPLICA IDENTITY FULL;"
        "INSERT INTO items SELECT g, g / 7.0, repeat('b', 10 + g % 3 * 5000), g % 2 = 0"
        " FROM generate_series(1, 3000) g;"
        "INSERT INTO items VALUES (3001, 'NaN', NULL, NULL);"
        "INSERT INTO events SELECT g % 20, 'n' FROM generate_series(1, 500) g"
    )


def table_rows(pg: Database, table: str, columns: str) -> list[tuple[Any, ...]]:
    rows = pg.execute(f"SELECT {columns} FROM {table}")
    return sorted((tuple(stored_value(v) for v in r) for r in rows), key=repr)


def start_stack(pg: Database, nats_url: str, services: Callable[..., Service]) -> Service:
    replicator = services("replicator", pg, nats_url, table="items,events").wait_healthy()
    services("snapshotter", pg, nats_url, table="items,events").wait_healthy()
    return replicator


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


def bridge(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BRIDGE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_replica(
    env: dict[str, str], path: Path, log: Path, *tables: str, extra: Sequence[str] = ()
) -> Service:
    """`bridge replica TABLES` (items and events by default, none with `--all-tables` in
    `extra`) with progress every second."""
    service = Service("replica", env, 0, log)
    default = () if "--all-tables" in extra else ("items", "events")
    argv = [BRIDGE, "replica", *(tables or default), "--sqlite", str(path), *extra]
    with open(log, "ab") as out:
        service.process = subprocess.Popen(
            [*argv, "--progress-seconds", "1"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return service


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


def replica_until_caught_up(env: dict[str, str], path: Path, log: Path) -> str:
    """`bridge replica items events` until it says the copy is caught up; its output."""
    replica = start_replica(env, path, log)
    wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to catch up", replica)
    assert replica.terminate() == 0
    return replica.output()


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
