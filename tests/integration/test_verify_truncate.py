"""Why `bridge verify` locks its tables and compares their storage (services/tools/verify.py):
TRUNCATE is not MVCC-safe. A reader whose exported snapshot predates a TRUNCATE sees the table
empty once the TRUNCATE has committed, at an LSN where the copy rightly still has its rows (the
chaos soak once reported a partitioned table's 83 rows "extra" that way). The storage check
sees that TRUNCATE; the lock keeps any later one out until the read is done."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from services.tools.verify import storages
from shared.consistent_read import export_snapshot
from tests.harness.postgres import Database

SCHEMA = """
CREATE TABLE parts (region int, id int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE parts_a PARTITION OF parts FOR VALUES IN (1, 2);
CREATE TABLE parts_b PARTITION OF parts FOR VALUES IN (3, 4);
INSERT INTO parts SELECT 1 + g % 4, g FROM generate_series(1, 100) g;
"""


PLAIN = """
CREATE TABLE plain (id int PRIMARY KEY, n int);
INSERT INTO plain SELECT g, g FROM generate_series(1, 100) g;
"""


def read_at(pg: Database, snapshot: str, lock: bool, table: str = "parts") -> int:
    with pg.connect() as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            if lock:
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(table))
                )
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            assert row is not None
            return int(row[0])


@pytest.mark.parametrize(
    ("schema", "table", "entries", "rewrite"),
    [
        (SCHEMA, "parts", 3, "TRUNCATE parts"),  # the parent and both partitions
        (PLAIN, "plain", 1, "TRUNCATE plain"),
        (PLAIN, "plain", 1, "ALTER TABLE plain ALTER COLUMN n TYPE bigint"),  # a rewrite
    ],
)
def test_a_truncate_or_rewrite_after_the_export_empties_the_snapshot_and_changes_the_storage(
    pg: Database, schema: str, table: str, entries: int, rewrite: str
) -> None:
    with pg.connect() as conn:
        conn.execute(schema)
        before = storages(conn, [f"public.{table}"])
        assert len(before[f"public.{table}"]) == entries
        repl, _, snapshot = export_snapshot(pg.url, "verify_truncate")
        try:
            assert read_at(pg, snapshot, lock=False, table=table) == 100
            conn.execute(rewrite)
            assert read_at(pg, snapshot, lock=False, table=table) == 0  # not MVCC-safe
            assert storages(conn, [f"public.{table}"]) != before
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
