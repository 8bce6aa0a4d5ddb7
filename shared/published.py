"""What the publication publishes of a table: the columns its CDC events carry and the rows
its row filter admits. Snapshots and schema documents hold exactly these, so that snapshot +
CDC rebuilds what is published and nothing the operator kept out leaves by another path.

Columns: a publication's column list (PostgreSQL 15+) names them; without one, every column
but generated ones: pgoutput never sends a virtual generated column, sends stored generated
columns only on PostgreSQL 18 with `publish_generated_columns = stored` (which the bridge sets
on its own publication), and before 18 sends no generated column at all.

Rows: the publication's row filter (PostgreSQL 15+) is read back as PostgreSQL deparses it
(`pg_get_expr`) and evaluated by PostgreSQL in the snapshot's own transaction, as PostgreSQL's
own initial table synchronisation does; it is never re-implemented. It is deparsed and
evaluated with `search_path` set to `pg_catalog` (`PINNED_SEARCH_PATH`), so the text names
everything it uses unambiguously whatever the session's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from shared.codec.domains import BASE_TYPES_QUERY, oids_to_resolve, with_base_types

_ATTRIBUTES = (
    "SELECT a.attname, a.atttypid::int, a.attgenerated::text, a.attnum::int FROM pg_attribute a"
    " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY a.attnum"
)

# The table's column list and row filter in the publication (PostgreSQL 15+), when it is a
# member by name (FOR ALL TABLES and FOR TABLES IN SCHEMA publish every column and row).
_PUBLISHED_PART = (
    "SELECT r.prattrs::int2[], pg_get_expr(r.prqual, r.prrelid) FROM pg_publication_rel r"
    " JOIN pg_publication p ON p.oid = r.prpubid"
    " WHERE p.pubname = %s AND r.prrelid = %s::regclass"
)

PINNED_SEARCH_PATH = "SELECT set_config('search_path', 'pg_catalog, pg_temp', true)"


@dataclass(frozen=True, slots=True)
class Columns:
    names: list[str]
    type_oids: list[int]  # domains resolved to their base type


async def publishes_stored_generated(conn: psycopg.AsyncConnection[Any], publication: str) -> bool:
    if conn.info.server_version < 180000:
        return False
    cur = await conn.execute(
        "SELECT pubgencols::text = 's' FROM pg_publication WHERE pubname = %s", (publication,)
    )
    row = await cur.fetchone()
    return True if row is None else bool(row[0])  # none yet: the replicator creates it so


@dataclass(frozen=True, slots=True)
class PublishedPart:
    """A table's column list (attribute numbers) and row filter; None: all of them."""

    attnums: frozenset[int] | None = None
    row_filter: str | None = None


async def published_part(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> PublishedPart:
    """The publication's column list and row filter of the table. The filter is deparsed in
    a transaction with the pinned search path (see the module's docstring)."""
    if conn.info.server_version < 150000:
        return PublishedPart()
    async with conn.transaction():
        await conn.execute(PINNED_SEARCH_PATH)
        cur = await conn.execute(
            _PUBLISHED_PART, (publication, sql.Identifier(schema, table).as_string(conn))
        )
        row = await cur.fetchone()
    if row is None:
        return PublishedPart()
    attnums, row_filter = row
    return PublishedPart(frozenset(attnums) if attnums is not None else None, row_filter)


async def published_columns(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    table: str,
    publication: str,
    part: PublishedPart | None = None,
) -> Columns:
    if part is None:
        part = await published_part(conn, schema, table, publication)
    stored = await publishes_stored_generated(conn, publication)
    cur = await conn.execute(_ATTRIBUTES, (sql.Identifier(schema, table).as_string(conn),))
    rows = [
        (name, oid)
        for name, oid, generated, attnum in await cur.fetchall()
        if (
            attnum in part.attnums
            if part.attnums is not None
            else generated == "" or (generated == "s" and stored)
        )
    ]
    oids = [oid for _, oid in rows]
    lookup = oids_to_resolve(oids)
    resolved: list[tuple[int, int]] = []
    if lookup:
        cur = await conn.execute(BASE_TYPES_QUERY, (lookup,))
        resolved = await cur.fetchall()
    return Columns([name for name, _ in rows], with_base_types(oids, resolved))


def published_tables_query(server_version: int, one_table: bool = False) -> LiteralString:
    """The tables a publication publishes as consumers see them (a partitioned table itself,
    not its partitions, as publish_via_partition_root does; FOR ALL TABLES, FOR TABLES IN
    SCHEMA and listed tables): `oid, schema, name` for `%(publication)s`, or, with
    `one_table`, only `%(table)s` (a regclass text).

    From the catalog only: `pg_publication_tables` opens each table and so waits behind an
    ALTER TABLE queued behind another transaction, with no lock timeout of ours."""
    schemas = (
        " OR (NOT c.relispartition AND EXISTS (SELECT 1 FROM pg_publication_namespace s"
        " WHERE s.pnpubid = p.oid AND s.pnnspid = c.relnamespace))"
        if server_version >= 150000
        else ""
    )
    only = " AND c.oid = %(table)s::regclass" if one_table else ""
    return (
        "SELECT c.oid::text, n.nspname, c.relname FROM pg_publication p"
        " JOIN pg_class c ON c.relkind IN ('r', 'p') AND c.relpersistence = 'p'"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %(publication)s"
        " AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'"
        " AND ((p.puballtables AND NOT c.relispartition)"
        " OR EXISTS (SELECT 1 FROM pg_publication_rel r"
        " WHERE r.prpubid = p.oid AND r.prrelid = c.oid)" + schemas + ")" + only
    )


async def unpublished(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> bool:
    """Whether the publication exists and leaves the table out (the replicator refused it, or
    an operator's publication does not name it): a snapshot of it would be followed by no
    change, a copy of it silently stale. (No publication yet: nothing to say.)"""
    published = published_tables_query(conn.info.server_version, one_table=True)
    query = (
        "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s)"
        " AND NOT EXISTS (" + published + ")"
    )
    regclass = sql.Identifier(schema, table).as_string(conn)
    cur = await conn.execute(query, {"publication": publication, "table": regclass})
    row = await cur.fetchone()
    return bool(row and row[0])
