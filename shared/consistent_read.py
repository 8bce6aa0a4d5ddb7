"""Reading tables consistently with a point in the WAL: the snapshotter's snapshots and
`bridge verify` read the same way, through here.

A temporary logical slot created with `SNAPSHOT 'export'` gives a consistent point (an LSN)
and a snapshot name (`export_snapshot`); a REPEATABLE READ transaction that adopts that
snapshot sees exactly the transactions that committed before the consistent point
(`snapshot_transaction`). TRUNCATE and a rewriting ALTER TABLE are not MVCC-safe: committed
after the export, they make the transaction read the table empty. So the transaction locks the
tables (ACCESS SHARE, by a query: LOCK TABLE would need SELECT on the whole table where the
published columns are enough) and the caller compares their storage (`STORAGE_QUERY`) with
what it was before the export, exporting anew when it changed. What is read is what the
publication publishes (shared/published.py): its columns (`describe_table`) and the rows its
row filter admits (`copy_query`), the filter evaluated under the search path it was deparsed
with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg import sql

from shared import slot_waits
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller
from shared.postgres import ReplicationConnection, quote_ident
from shared.published import PINNED_SEARCH_PATH, published_columns, published_part
from shared.tables import PRIMARY_KEY_QUERY

STORAGE_QUERY = (
    "SELECT r::regclass::text, pg_relation_filenode(r)"
    " FROM (SELECT %(table)s::regclass::oid AS r"
    " UNION SELECT relid FROM pg_partition_tree(%(table)s::regclass)) tree ORDER BY 1"
)
"""A table's storage: the relfilenodes of it and its partitions, as the catalog has them now
(pass `{"table": <quoted name>}`). TRUNCATE and a rewriting ALTER TABLE give a table new
storage. (`pg_partition_tree` alone lists nothing for a table that is not partitioned.)"""


SHAPE_QUERY = (
    "SELECT md5(concat_ws('|', c.relreplident, pg_relation_filenode(c.oid),"
    " (SELECT string_agg(concat_ws(',', a.attnum, a.attname, a.atttypid, a.atttypmod), ';'"
    " ORDER BY a.attnum) FROM pg_attribute a"
    " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),"
    " (SELECT string_agg(i.indkey::text, ';' ORDER BY i.indexrelid) FROM pg_index i"
    " WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))))"
    " FROM pg_class c WHERE c.oid = %(table)s::regclass"
)
"""A digest of a table's shape and storage as the query's snapshot sees the catalog: its
columns (number, name, type, modifier), replica identity, key and relfilenode (a rewrite
gives new storage). A chunked snapshot compares it in every range: all its rows have one
shape (pass `{"table": <quoted name>}`)."""


def export_snapshot(
    database_url: str,
    slot: str,
    application_name: str = "bridge-snapshotter",
    canceller: QueryCanceller | None = None,
    what: str = "the snapshot",
    primary_url: str | None = None,
) -> tuple[ReplicationConnection, Lsn, str]:
    """A temporary slot's consistent point and exported snapshot; the snapshot stays usable
    while the returned connection is open.

    Creating the slot waits for every transaction running at that moment to end (one left
    open in some session holds it up for good): the log says whom `what` waits for, and
    `canceller` can end the wait. On a hot standby it waits for the primary, which is asked to
    hurry with `primary_url` (shared/slot_waits.py)."""
    repl = ReplicationConnection(database_url, application_name=application_name)
    try:
        with (
            canceller.cancelling(repl.cancel) if canceller else contextlib.nullcontext(),
            slot_waits.reporting_waits(database_url, slot, what, primary_url),
        ):
            (row,) = repl.command(
                f"CREATE_REPLICATION_SLOT {quote_ident(slot)} TEMPORARY LOGICAL pgoutput"
                " (SNAPSHOT 'export')"
            )
    except BaseException:
        repl.close()
        raise
    _, consistent_point, snapshot_name, _ = row
    assert consistent_point is not None and snapshot_name is not None
    return repl, Lsn.parse(consistent_point), snapshot_name


def copy_query(
    table: sql.Identifier,
    names: list[str],
    key: list[str],
    row_filter: str | None,
    condition: sql.Composable | None = None,
    limit: int | None = None,
) -> sql.Composed:
    """`COPY (SELECT <published columns> FROM t WHERE (<row filter>) ORDER BY <key> LIMIT n)`:
    the one COPY the snapshots and `bridge verify` read with.

    The row filter is the publication's own expression as PostgreSQL deparsed it from its
    catalog (shared/published.py), not text from any request or setting, and it must be evaluated
    under the search path it was deparsed with (`published.PINNED_SEARCH_PATH`, which
    `snapshot_transaction` sets). `condition`: a partial backfill's (built from identifiers
    and bound values, services/snapshotter/conditions.py) and a key range's."""
    order = sql.SQL(", ").join(map(sql.Identifier, key))
    parts: list[sql.Composable] = []
    if row_filter:
        parts.append(sql.SQL("({})").format(sql.SQL(row_filter)))  # type: ignore[arg-type]
    if condition is not None:
        parts.append(condition)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts) if parts else sql.SQL("")
    return sql.SQL("COPY (SELECT {} FROM {}{}{}{}) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        table,
        where,
        sql.SQL(" ORDER BY {}").format(order) if key else sql.SQL(""),
        sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit is not None else sql.SQL(""),
    )


def _adopting(
    snapshot_name: str, tables: list[sql.Identifier], lock_seconds: float | None
) -> list[sql.Composed | sql.SQL]:
    """The statements that adopt the exported snapshot and lock `tables` (waiting at most
    `lock_seconds` for each, when given: several readers of one snapshot each lock the table,
    and an ALTER TABLE queued behind one's lock would queue the next one's behind it for good)
    inside a REPEATABLE READ transaction, then pin the search path."""
    statements: list[sql.Composed | sql.SQL] = [
        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
    ]
    if lock_seconds is not None and tables:
        statements.append(
            sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(lock_seconds * 1000)}ms")
            )
        )
    statements += [sql.SQL("SELECT FROM {} LIMIT 0").format(table) for table in tables]
    if lock_seconds is not None and tables:
        statements.append(sql.SQL("SET LOCAL lock_timeout = 0"))
    statements.append(sql.SQL(PINNED_SEARCH_PATH))
    return statements


@contextlib.contextmanager
def snapshot_transaction(
    conn: psycopg.Connection[Any],
    snapshot_name: str,
    tables: list[sql.Identifier],
    lock_seconds: float | None = None,
) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction on `conn` (autocommit) that adopted the exported
    snapshot and holds ACCESS SHARE on `tables` (their partitions too) until it ends: a
    TRUNCATE or rewriting ALTER TABLE waits for it. Text arrives as UTF-8 whatever the
    database's encoding, as the CDC codec reads it, and the search path is the one row filters
    are deparsed with."""
    conn.execute("SET client_encoding TO 'UTF8'")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.transaction():
        for statement in _adopting(snapshot_name, tables, lock_seconds):
            conn.execute(statement)
        yield


@contextlib.asynccontextmanager
async def snapshot_transaction_async(
    conn: psycopg.AsyncConnection[Any], snapshot_name: str, tables: list[sql.Identifier]
) -> AsyncIterator[None]:
    """`snapshot_transaction` on an event loop's connection: what the snapshotter describes
    the table and reads the snapshot's xids with."""
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    async with conn.transaction():
        for statement in _adopting(snapshot_name, tables, None):
            await conn.execute(statement)
        yield


def storage(conn: psycopg.Connection[Any], regclass: str) -> list[Any]:
    return conn.execute(STORAGE_QUERY, {"table": regclass}).fetchall()


async def storage_async(conn: psycopg.AsyncConnection[Any], regclass: str) -> list[Any]:
    cur = await conn.execute(STORAGE_QUERY, {"table": regclass})
    return await cur.fetchall()


async def describe_table(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> tuple[list[str], list[int], list[str], str | None]:
    """The published columns (names, value-codec type OIDs), the primary key and the
    publication's row filter."""
    part = await published_part(conn, schema, table, publication)
    columns = await published_columns(conn, schema, table, publication, part)
    regclass = sql.Identifier(schema, table).as_string(conn)
    cur = await conn.execute(PRIMARY_KEY_QUERY, (regclass,))
    row = await cur.fetchone()
    key = list(row[0]) if row else []
    return columns.names, columns.type_oids, key, await _own_rows(conn, regclass, part.row_filter)


async def _own_rows(
    conn: psycopg.AsyncConnection[Any], regclass: str, row_filter: str | None
) -> str | None:
    """The row filter to read the table with: the publication's, and for a table with
    inheritance children its own rows only. CDC carries a child's changes as the child's
    (a partition's are its root's, so a partitioned table reads all of them), and a snapshot
    that held the children's rows would hold rows no change of the table ever touches."""
    cur = await conn.execute(
        "SELECT c.oid::text FROM pg_class c WHERE c.oid = %s::regclass AND c.relkind = 'r'"
        " AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)",
        (regclass,),
    )
    found = await cur.fetchone()
    if found is None:
        return row_filter
    own = f"tableoid = {int(found[0])}::oid"
    return f"({own}) AND ({row_filter})" if row_filter else own
