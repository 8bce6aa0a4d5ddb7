"""An exported snapshot: one transaction's view of the table, read at one consistent point.

A temporary logical slot created with `SNAPSHOT 'export'` gives a consistent point (an LSN)
and a snapshot name (shared/consistent_read.py); the table is read in a REPEATABLE READ
transaction that adopts that snapshot. The rows are then exactly those of the transactions
that committed before the consistent point, the meta's `lsn`: a consumer applies CDC events
whose `commit_lsn` ≥ `lsn` on top. The slot is temporary, so it disappears with its
connection, also when the snapshotter is killed.

Except for TRUNCATE and a rewriting ALTER TABLE, which are not MVCC-safe: committed after the
export, they make the snapshot read the table empty, and a rewrite sends no CDC event that
would bring the rows back. So the transaction that reads the table first locks it (ACCESS
SHARE, which both wait for), then its storage (`consistent_read.STORAGE_QUERY`) is compared
with what it was before the export: if it changed, one of them came in between, and the
snapshot is exported anew. The reading transaction takes the lock itself: held by another
one, a TRUNCATE or ALTER TABLE queued behind that lock queues the COPY's own lock request
behind it in turn, and the three wait on one another for good.

One reader reads in a thread of the snapshotter (table_read.py); several, a key segment each
in reader processes (parallel.py). Either way the plan the rows are read with is described
under the snapshot once the table is locked: the columns as of the consistent point.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psycopg

from services.snapshotter.errors import SnapshotError
from services.snapshotter.parallel import read_exported_parallel
from services.snapshotter.schema_documents import read_schema
from services.snapshotter.segments import LockBusy, Segment, plan_segments
from services.snapshotter.snapshot_context import TableSnapshot
from services.snapshotter.table_plan import TablePlan, redescribe
from services.snapshotter.table_read import Rewritten, TableRead, publish_chunks, read_table
from shared import postgres
from shared.consistent_read import export_snapshot, snapshot_transaction_async, storage_async
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller, run_cancellable
from shared.postgres import ReplicationConnection

log = logging.getLogger(__name__)

# Exports tried before a table that keeps being truncated or rewritten fails the request.
ATTEMPTS = 5


async def export(
    snapshot: TableSnapshot, what: str, canceller: QueryCanceller
) -> tuple[ReplicationConnection, Lsn, str]:
    """A temporary slot with an exported snapshot (shared/consistent_read.py), in a thread
    that `canceller` can stop; a failure is PostgreSQL's."""
    context = snapshot.context
    exporting = functools.partial(
        export_snapshot, context.database_url, f"bridge_snap_{secrets.token_hex(6)}",
        canceller=canceller, what=what, primary_url=context.primary_url,
    )  # fmt: skip
    try:
        return await run_cancellable(exporting, canceller)
    except Exception as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc


async def read_exported_snapshot(
    catalog: psycopg.AsyncConnection[Any], snapshot: TableSnapshot
) -> Lsn:
    """Export a snapshot and read the table under it (again while a TRUNCATE or rewrite came
    in between); the snapshot's consistent point. By reader processes when more than one is
    asked for and the table is large enough to cut into segments."""
    plan = snapshot.plan
    regclass = plan.identifier.as_string(catalog)
    lock_waits = 0
    for _ in range(ATTEMPTS):
        try:
            segments = await _segments(catalog, snapshot)
        except LockBusy:
            lock_waits += 1
            snapshot.locked_out()
            await asyncio.sleep(1)
            continue
        before = await storage_async(catalog, regclass)
        canceller = QueryCanceller()
        repl, lsn, snapshot_name = await export(snapshot, f"the snapshot of {plan.what}", canceller)

        async def unchanged(before: list[Any] = before) -> bool:
            return await storage_async(catalog, regclass) == before

        try:
            if await _read(snapshot, snapshot_name, unchanged, segments, canceller):
                return lsn
        except LockBusy:
            lock_waits += 1
            snapshot.locked_out()
            await asyncio.sleep(1)
            continue
        finally:
            await asyncio.to_thread(repl.close)  # drops the temporary slot
        log.info(
            "%s was truncated or rewritten after the snapshot was exported (it would read "
            "empty); exporting another",
            plan.what,
        )
    what = "truncated or rewritten"
    if lock_waits:
        what += (
            f", or could not be locked ({lock_waits} times: an ALTER TABLE or TRUNCATE waits "
            "behind a long transaction, see pg_locks),"
        )
    raise SnapshotError(
        "table_rewritten",
        f"{plan.what} was {what} during each of {ATTEMPTS} attempts to snapshot it; ask "
        "again once that stops",
    )


async def _segments(
    catalog: psycopg.AsyncConnection[Any], snapshot: TableSnapshot
) -> list[Segment]:
    """The key segments of reader processes, or [] for one reader in a thread."""
    options, plan = snapshot.options, snapshot.plan
    if options.readers <= 1:
        return []
    return await plan_segments(
        catalog, plan.identifier, plan.key, options.readers,
        snapshot.builder.estimated_rows, options.rows_per_reader,
    )  # fmt: skip


async def _read(
    snapshot: TableSnapshot,
    snapshot_name: str,
    unchanged: Callable[[], Awaitable[bool]],
    segments: list[Segment],
    canceller: QueryCanceller,
) -> bool:
    """Read the table under the exported snapshot, by a thread or (`segments`) by reader
    processes; False, with nothing published, when the table was rewritten since the export,
    `LockBusy` when a reader process could not lock it in time."""
    context = snapshot.context
    async with (
        await postgres.connect_async(context.database_url) as conn,
        snapshot_transaction_async(conn, snapshot_name, []),
    ):

        async def locked() -> TablePlan:
            # The readers hold the table's lock now: its storage can no longer change.
            if not await unchanged():
                raise Rewritten
            plan = snapshot.plan
            snapshot.document = await read_schema(
                conn, plan.schema, plan.table, context.publication
            )
            return await redescribe(conn, plan, context.publication)

        try:
            if segments:
                await read_exported_parallel(
                    snapshot.reader_job(snapshot=snapshot_name), segments, locked,
                    snapshot.builder, snapshot.publish,
                )  # fmt: skip
            else:
                await _read_in_thread(snapshot, snapshot_name, locked, canceller)
        except Rewritten:
            return False
    return True


async def _read_in_thread(
    snapshot: TableSnapshot,
    snapshot_name: str,
    locked: Callable[[], Coroutine[Any, Any, TablePlan]],
    canceller: QueryCanceller,
) -> None:
    """The table by a thread under the exported snapshot, its chunks published as they
    come."""
    loop = asyncio.get_running_loop()

    def locked_in_thread() -> TablePlan:
        # In the reading thread, while the loop awaits that thread.
        return asyncio.run_coroutine_threadsafe(locked(), loop).result()

    url = snapshot.context.database_url
    read = TableRead(url, snapshot_name, snapshot.plan, locked_in_thread, canceller)
    await publish_chunks(
        functools.partial(read_table, read), canceller, snapshot.builder, snapshot.publish
    )
