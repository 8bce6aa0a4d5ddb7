"""A table's primary key cut into segments of about equal rows, one per reader process of a
parallel snapshot: the key is sampled (`TABLESAMPLE SYSTEM`, about 20,000 rows) and cut at its
quantiles; the first segment is open below, the last above, so every row is in exactly one
whatever was sampled. A table of fewer rows than `--snapshot-rows-per-reader` per reader gets
fewer readers (a process takes about 0.3 s to start); one too small to cut, or without a
primary key, is read by one."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pg_nats_bridge.contract import KeySegment

# Rows sampled to cut the key into segments.
SAMPLE_ROWS = 20_000
# How long a reader waits for the table's lock before the attempt is given up (exported).
LOCK_SECONDS = 5.0


Segment = KeySegment


class LockBusy(Exception):
    """A reader could not lock the table in time (exported mode): export again."""


async def plan_segments(
    conn: psycopg.AsyncConnection[Any],
    table: sql.Identifier,
    key: list[str],
    readers: int,
    estimated_rows: int | None,
    rows_per_reader: int = 500_000,
) -> list[Segment]:
    """`readers` segments of about equal rows, fewer for a small table; [] for one reader.
    Without the planner's estimate (a table never analyzed) 1% of its pages are sampled, and
    the sample says the size. `LockBusy` when the table could not be locked in time."""
    if readers <= 1 or not key:
        return []
    if estimated_rows is not None:
        readers = min(readers, max(1, estimated_rows // rows_per_reader))
        if readers <= 1:
            return []
        percent = min(100.0, max(0.001, 100.0 * SAMPLE_ROWS / max(estimated_rows, 1)))
    else:
        percent = 1.0
    columns = sql.SQL(", ").join(map(sql.Identifier, key))
    # Each as text under a name of its own: `ORDER BY id` would otherwise sort by the output
    # column `id::text`, lexically (a bare name in ORDER BY means an output column first).
    query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) ORDER BY {}").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"bound {i}"))
            for i, k in enumerate(key)
        ),
        table,
        sql.Literal(percent),
        columns,
    )
    try:
        async with conn.transaction():
            # Bounded as the readers' own locks are: an ALTER TABLE queued behind another
            # transaction would hold this up for as long.
            await conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(LOCK_SECONDS * 1000)}ms")
                )
            )
            cur = await conn.execute(query)
            sample = [list(row) for row in await cur.fetchall()]
    except psycopg.errors.LockNotAvailable as exc:
        raise LockBusy(str(exc)) from None
    if estimated_rows is None:
        readers = min(readers, max(1, len(sample) * 100 // rows_per_reader))
    bounds: list[list[str]] = []
    for i in range(1, readers):
        bound = sample[len(sample) * i // readers] if sample else None
        if bound is not None and bound not in bounds:
            bounds.append(bound)
    if not bounds:
        return []
    edges: list[list[str] | None] = [None, *bounds, None]
    return [Segment(start=edges[i], end=edges[i + 1]) for i in range(len(edges) - 1)]
