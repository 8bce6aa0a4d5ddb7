"""The columns of a table that its CDC events carry: snapshots and schema documents list
exactly these, so that snapshot + CDC rebuilds the table (DESIGN §2).

pgoutput never sends a virtual generated column, sends stored generated columns only on
PostgreSQL 18 with the publication's `publish_generated_columns = stored` (which the bridge
sets on its own publication), and before 18 sends no generated column at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from shared.codec.domains import BASE_TYPES_QUERY, oids_to_resolve, with_base_types

_ATTRIBUTES = (
    "SELECT a.attname, a.atttypid::int, a.attgenerated::text FROM pg_attribute a"
    " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY a.attnum"
)


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


async def published_columns(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> Columns:
    stored = await publishes_stored_generated(conn, publication)
    cur = await conn.execute(_ATTRIBUTES, (sql.Identifier(schema, table).as_string(conn),))
    rows = [
        (name, oid)
        for name, oid, generated in await cur.fetchall()
        if generated == "" or (generated == "s" and stored)
    ]
    oids = [oid for _, oid in rows]
    lookup = oids_to_resolve(oids)
    resolved: list[tuple[int, int]] = []
    if lookup:
        cur = await conn.execute(BASE_TYPES_QUERY, (lookup,))
        resolved = await cur.fetchall()
    return Columns([name for name, _ in rows], with_base_types(oids, resolved))
