"""A snapshot survives a TRUNCATE or a table rewrite committed between its export and its read
(services/snapshotter/snapshot.py): neither is MVCC-safe, so read under the first snapshot the
table would be empty, and for a rewrite no CDC event would bring the rows back. Real
PostgreSQL and nats-server; the statement runs right after the export, where the race is."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from psycopg.conninfo import make_conninfo

from services.snapshotter import exported_read, snapshot
from services.snapshotter.publishing import PipelinedPublisher
from shared.codec import ValueMode
from shared.lsn import Lsn
from tests.harness.postgres import Database


def take(
    pg: Database,
    nats_url: str,
    after_export: list[str],
    ran_by: list[Lsn] | None = None,
    database_url: str | None = None,
) -> dict[str, Any]:
    """A snapshot of `t`; each export is followed by the next statement of `after_export`
    (the WAL position after each goes to `ran_by`)."""
    export = exported_read.export_snapshot

    def export_then_run(*args: Any, **kwargs: Any) -> Any:
        exported = export(*args, **kwargs)
        if after_export:
            pg.execute(after_export.pop(0))
            if ran_by is not None:
                ran_by.append(current_lsn(pg))
        return exported

    async def run() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="INIT", subjects=["init.>"]))
            async with PipelinedPublisher(nc, "INIT") as publisher:
                context = snapshot.SnapshotContext(
                    database_url or pg.url, "p", ValueMode.TYPED, nc.max_payload
                )
                return await snapshot.take_snapshot(
                    context, "public", "t", snapshot.SnapshotOptions(100), publisher
                )
        finally:
            await nc.close()

    original = exported_read.export_snapshot
    exported_read.export_snapshot = export_then_run  # type: ignore[assignment]
    try:
        return asyncio.run(run())
    finally:
        exported_read.export_snapshot = original  # type: ignore[assignment]


def current_lsn(pg: Database) -> Lsn:
    with pg.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return Lsn.parse(row[0])


def test_a_rewrite_after_the_export_loses_no_row(table: Database, nats_url: str) -> None:
    meta = take(table, nats_url, ["ALTER TABLE t ALTER COLUMN n TYPE bigint"])
    assert meta["row_count"] == 1000 and meta["batch_count"] == 10


def test_a_truncate_after_the_export_gives_the_snapshot_after_it(
    table: Database, nats_url: str
) -> None:
    truncated_by: list[Lsn] = []
    meta = take(table, nats_url, ["TRUNCATE t"], truncated_by)
    # Empty, and rightly so: at an LSN after the TRUNCATE (the first export's came before it).
    assert meta["row_count"] == 0
    assert Lsn.parse(meta["lsn"]) >= truncated_by[0]


def test_a_table_rewritten_at_every_attempt_is_refused_clearly(
    table: Database, nats_url: str
) -> None:
    rewrites = [f"ALTER TABLE t ALTER COLUMN n TYPE {t}" for t in ("bigint", "int") * 3]
    with pytest.raises(snapshot.SnapshotError) as info:
        take(table, nats_url, rewrites)
    assert info.value.reason == "table_rewritten"
    assert "public.t was truncated or rewritten during each of 5 attempts" in str(info.value)


def test_select_on_the_published_columns_is_enough(table: Database, nats_url: str) -> None:
    """The lock is taken by a query, not LOCK TABLE (which wants SELECT on the whole table):
    a role granted only the columns it publishes still takes snapshots, and still safely."""
    role = f"cols_{table.name}"[:60]
    # A password: a server that authenticates (the container backend's) asks for one.
    table.execute(f"CREATE ROLE \"{role}\" LOGIN REPLICATION PASSWORD 'cols-secret'")
    table.execute(f'GRANT SELECT (id, n) ON t TO "{role}"')
    try:
        url = make_conninfo(table.url, user=role, password="cols-secret")
        meta = take(table, nats_url, ["ALTER TABLE t ALTER COLUMN n TYPE bigint"], None, url)
        assert meta["row_count"] == 1000
    finally:
        table.execute(f'DROP OWNED BY "{role}"')
        table.execute(f'DROP ROLE "{role}"')


def test_a_rewrite_queued_behind_the_snapshot_waits_for_it_and_nothing_hangs(
    table: Database, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ALTER TABLE asked for while the snapshot holds the table's lock waits for it (it
    must not change the rows under the read), and the read must not wait for the ALTER: were
    the lock held by another transaction than the COPY's, the COPY's lock request would queue
    behind the waiting ALTER, which waits for the lock, held until the COPY is done. Here the
    ALTER comes just before the COPY starts, the narrowest place; its lock_timeout (10 s)
    stands for the operator who would otherwise find the table blocked for good."""
    copy_out_blocks = snapshot.postgres.copy_out_blocks
    altered: list[BaseException | None] = []

    def alter() -> None:
        try:
            with table.connect() as conn:
                conn.execute("SET lock_timeout = '10s'")
                conn.execute("ALTER TABLE t ALTER COLUMN n TYPE bigint")
            altered.append(None)
        except BaseException as exc:
            altered.append(exc)

    def alter_then_copy(conn: Any, query: Any, lines: int) -> Any:
        thread = threading.Thread(target=alter)
        thread.start()
        threads.append(thread)
        with table.connect() as watcher:
            while not watcher.execute(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 't'::regclass"
                " AND mode = 'AccessExclusiveLock' AND NOT granted)"
            ).fetchone()[0]:  # type: ignore[index]
                if altered:
                    raise AssertionError(f"the ALTER did not wait for the snapshot: {altered}")
                time.sleep(0.01)
        return copy_out_blocks(conn, query, lines)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(snapshot.postgres, "copy_out_blocks", alter_then_copy)
    meta = take(table, nats_url, [])
    threads[0].join(30)
    assert altered == [None], f"the ALTER failed: {altered}"
    # Read before the ALTER ran: every row, under the one export.
    assert meta["row_count"] == 1000
    with table.connect() as conn:
        row = conn.execute(
            "SELECT atttypid::regtype::text FROM pg_attribute"
            " WHERE attrelid = 't'::regclass AND attname = 'n'"
        ).fetchone()
    assert row == ("bigint",)
