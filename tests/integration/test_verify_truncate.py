"""Why `bridge verify` locks its tables and compares their storage (services/verify.py):
TRUNCATE is not MVCC-safe. A reader whose exported snapshot predates a TRUNCATE sees the table
empty once the TRUNCATE has committed, at an LSN where the copy rightly still has its rows (the
chaos soak once reported a partitioned table's 83 rows "extra" that way). The storage check
sees that TRUNCATE; the lock keeps any later one out until the read is done."""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg import sql

from services.snapshotter.snapshot import export_snapshot
from services.verify import storage
from tests.harness.postgres import Database

SCHEMA = """
CREATE TABLE parts (region int, id int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE parts_a PARTITION OF parts FOR VALUES IN (1, 2);
CREATE TABLE parts_b PARTITION OF parts FOR VALUES IN (3, 4);
INSERT INTO parts SELECT 1 + g % 4, g FROM generate_series(1, 100) g;
"""


def read_at(pg: Database, snapshot: str, lock: bool) -> int:
    with pg.connect() as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            if lock:
                conn.execute("LOCK TABLE parts IN ACCESS SHARE MODE")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            row = conn.execute("SELECT count(*) FROM parts").fetchone()
            assert row is not None
            return int(row[0])


def test_a_truncate_after_the_export_empties_the_snapshot_and_changes_the_storage(
    pg: Database,
) -> None:
    with pg.connect() as conn:
        conn.execute(SCHEMA)
        before = storage(conn, ["public.parts"])
        assert len(before["public.parts"]) == 3  # the parent and both partitions
        repl, _, snapshot = export_snapshot(pg.url, "verify_truncate")
        try:
            assert read_at(pg, snapshot, lock=False) == 100
            conn.execute("TRUNCATE parts")
            assert read_at(pg, snapshot, lock=False) == 0  # not MVCC-safe
            assert storage(conn, ["public.parts"]) != before
        finally:
            repl.close()


def test_the_lock_keeps_a_truncate_from_committing_until_the_read_is_done(pg: Database) -> None:
    with pg.connect() as conn:
        conn.execute(SCHEMA)
    repl, _, snapshot = export_snapshot(pg.url, "verify_lock")
    committed = threading.Event()
    try:
        with pg.connect() as reader:
            reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with reader.transaction():
                reader.execute("LOCK TABLE parts IN ACCESS SHARE MODE")
                reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))

                def truncate() -> None:
                    with pg.connect() as other:
                        other.execute("TRUNCATE parts")
                    committed.set()

                thread = threading.Thread(target=truncate)
                thread.start()
                time.sleep(0.5)
                assert not committed.is_set()  # waits for the reader's lock
                row = reader.execute("SELECT count(*) FROM parts").fetchone()
                assert row == (100,)
            thread.join(10)
            assert committed.is_set()
    finally:
        repl.close()
