"""A chunked snapshot: the table read in primary-key ranges, each in its own short transaction
(services/snapshotter/key_ranges.py), so that no transaction (and no xmin horizon) is held for
the whole read; recorded after every range so that one killed mid-way is continued
(services/snapshotter/resume.py).

The rows of such a snapshot are not one point in time, and need not be (docs/wire-format.md,
"Chunked snapshots"): a temporary slot's consistent point `lsn`, taken first and dropped at
once, is a moment every range is read after, so every change committed before it is in every
range; the CDC stream holds every change from it on. A consumer loads the chunks and replays
the changes from `lsn` idempotently up to `replay_until`, past the last range's read.

One reader reads in a thread of the snapshotter; several, a key segment each in reader
processes (parallel.py), whose records then hold each segment's key read through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Any

import psycopg

from pg_nats_bridge.contract import ProgressRecord
from services.snapshotter.errors import SnapshotError
from services.snapshotter.exported_read import export
from services.snapshotter.key_ranges import END_QUERY, Interrupted, KeyRangeRead, read_key_ranges
from services.snapshotter.ledger import Ledger
from services.snapshotter.parallel import read_ranges_parallel
from services.snapshotter.resume import ChunkedRecords
from services.snapshotter.schema_documents import read_schema
from services.snapshotter.segments import LockBusy, Segment, plan_segments
from services.snapshotter.snapshot_context import TableSnapshot
from services.snapshotter.table_plan import TablePlan
from services.snapshotter.table_read import publish_chunks
from shared import postgres
from shared.consistent_read import SHAPE_QUERY, snapshot_transaction_async
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller

log = logging.getLogger(__name__)


async def read_ranged_snapshot(
    catalog: psycopg.AsyncConnection[Any],
    snapshot: TableSnapshot,
    records: ChunkedRecords | None,
) -> tuple[Lsn, dict[str, Any]]:
    """The consistent point of a temporary slot dropped at once (or the one of the snapshot
    `records` continues), then the ranges; that point, and the meta's own fields."""
    plan = snapshot.plan
    if not plan.keyed():
        raise SnapshotError(
            "no_primary_key",
            f"{plan.what} has no primary key{'' if not plan.key else ' published'}: a "
            "chunked snapshot reads it in primary-key ranges. Ask for the default mode (one "
            "exported snapshot), or give the table a primary key",
        )
    previous = records.previous if records is not None else None
    began = previous.shape if previous is not None else await _shape(catalog, plan)
    lsn = (
        Lsn.parse(previous.lsn)
        if previous is not None
        else await _consistent_point(catalog, snapshot)
    )
    # The same shape on both sides of the consistent point: no ALTER TABLE between it and
    # the ranges, whose changes before it would have the old shape and the rows the new.
    shape = await _shape(catalog, plan)
    if began not in (None, shape):
        raise SnapshotError(
            "table_rewritten",
            f"{plan.what} was altered after its chunked snapshot began: an ALTER TABLE "
            "changed its columns, key or storage, so its rows would not all have one shape; "
            "ask again for a new one",
        )
    snapshot.plan = dataclasses.replace(plan, shape=shape)
    # Read after the digest: an ALTER TABLE between the two fails the first range.
    snapshot.document = await read_schema(
        catalog, plan.schema, plan.table, snapshot.context.publication
    )
    if records is not None:
        await records.claim(str(lsn), shape)
    segments = await _segments(catalog, snapshot, previous)
    if segments:
        until = await _read_by_processes(catalog, snapshot, segments)
    else:
        until = await _read_in_thread(snapshot, previous)
    extra: dict[str, Any] = {"mode": "chunked", "replay_until": str(max(until, lsn))}
    if previous is not None:
        extra["resumed"] = True
    if records is not None:
        extra["started"] = records.started
    return lsn, extra


async def _shape(catalog: psycopg.AsyncConnection[Any], plan: TablePlan) -> str:
    """The table's shape digest every range compares (services/snapshotter/key_ranges.py)."""
    cursor = await catalog.execute(SHAPE_QUERY, {"table": plan.identifier.as_string(catalog)})
    row = await cursor.fetchone()
    return str(row[0]) if row else ""


async def _consistent_point(catalog: psycopg.AsyncConnection[Any], snapshot: TableSnapshot) -> Lsn:
    """A temporary slot's consistent point, once every transaction it counts as committed is
    visible to the ranges' transactions."""
    canceller = QueryCanceller()
    repl, lsn, snapshot_name = await export(
        snapshot, f"the chunked snapshot of {snapshot.plan.what}", canceller
    )
    try:
        async with (
            await postgres.connect_async(snapshot.context.database_url) as conn,
            snapshot_transaction_async(conn, snapshot_name, []),
        ):
            cur = await conn.execute("SELECT pg_current_snapshot()::text")
            (exported,) = await cur.fetchone() or ("",)
    finally:
        await asyncio.to_thread(repl.close)  # only its consistent point was wanted
    await _until_visible(catalog, str(exported), snapshot.plan.what)
    return lsn


async def _segments(
    catalog: psycopg.AsyncConnection[Any],
    snapshot: TableSnapshot,
    previous: ProgressRecord | None,
) -> list[Segment]:
    """The segments reader processes read: a continued snapshot's as they were cut, a new
    one's from a sample of the key when readers are asked for; [] for one reader in a
    thread."""
    if previous is not None:
        return list(previous.segments or ())
    options, plan = snapshot.options, snapshot.plan
    if options.readers <= 1:
        return []
    try:
        return await plan_segments(
            catalog, plan.identifier, plan.key, options.readers,
            snapshot.builder.estimated_rows, options.rows_per_reader,
        )  # fmt: skip
    except LockBusy:  # one reader, whose every range waits a bounded time for its lock
        snapshot.locked_out()
        return []


async def _read_by_processes(
    catalog: psycopg.AsyncConnection[Any], snapshot: TableSnapshot, segments: list[Segment]
) -> Lsn:
    """Every unfinished segment by a reader process; the WAL position past them."""
    builder, operator = snapshot.builder, snapshot.operator
    ledger = Ledger(segments, builder.chunks, builder.row_count)
    stopped = await read_ranges_parallel(
        snapshot.reader_job(plan=snapshot.plan), ledger, builder, snapshot.publish,
        lambda: operator.action,
    )  # fmt: skip
    if stopped is not None:
        raise Interrupted(stopped)
    cur = await catalog.execute(END_QUERY)
    (end,) = await cur.fetchone() or ("",)
    log.info(
        "chunked snapshot of %s: %d rows by %d readers",
        snapshot.plan.what, builder.row_count, len(segments),
    )  # fmt: skip
    return Lsn.parse(end)


async def _read_in_thread(snapshot: TableSnapshot, previous: ProgressRecord | None) -> Lsn:
    """Every range from where `previous` got to by a thread; the WAL position past them."""
    canceller = QueryCanceller()
    options = snapshot.options
    read = KeyRangeRead(
        snapshot.context.database_url,
        snapshot.plan,
        options.transaction_seconds,
        canceller,
        after=previous.after if previous is not None else None,
        statement_seconds=options.statement_seconds,
        operator=snapshot.operator,
    )
    reading = functools.partial(read_key_ranges, read)
    until = await publish_chunks(reading, canceller, snapshot.builder, snapshot.publish)
    log.info(
        "chunked snapshot of %s: %d rows in %d transactions, the longest %.2f s",
        snapshot.plan.what,
        snapshot.builder.row_count,
        read.transactions,
        read.longest_transaction,
    )
    return until


# Transactions the exported snapshot sees (their commits were decoded before `lsn`, so
# consumers skip their events) that a snapshot taken now does not: still in the procarray,
# waiting for a synchronous standby's answer, say. They are among the running ones now, or
# at or above now's xmax (the xids up to the exported snapshot's xmax).
_SEEN_BEFORE_VISIBLE = """
WITH now AS (SELECT pg_current_snapshot() AS s)
SELECT count(*) FROM (
    SELECT pg_snapshot_xip(now.s) AS x FROM now
    UNION
    SELECT (pg_snapshot_xmax(now.s)::text::numeric + g)::text::xid8 FROM now,
        generate_series(0, pg_snapshot_xmax(%(exported)s::pg_snapshot)::text::numeric
            - pg_snapshot_xmax(now.s)::text::numeric - 1) AS g
) AS candidates
WHERE pg_visible_in_snapshot(x, %(exported)s::pg_snapshot)
"""


async def _until_visible(catalog: psycopg.AsyncConnection[Any], exported: str, what: str) -> None:
    """Before the first range: until every transaction the consistent point counts as
    committed is visible to a new snapshot (checked twice in a row, 50 ms apart); else a
    range would miss its rows while consumers skip its changes."""
    clear, started, next_log = 0, time.monotonic(), 5.0
    while clear < 2:
        cur = await catalog.execute(_SEEN_BEFORE_VISIBLE, {"exported": exported})
        (hidden,) = await cur.fetchone() or (0,)
        clear = clear + 1 if not hidden else 0
        if hidden and time.monotonic() - started >= next_log:
            next_log += 30
            log.warning(
                "the chunked snapshot of %s waits for %d committed transaction(s) to become "
                "visible (a synchronous standby's answer?)",
                what,
                hidden,
            )
        await asyncio.sleep(0.05)
