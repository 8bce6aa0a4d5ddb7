"""One snapshot of one table, published in chunks to the INIT stream, then its meta.

Two ways to read it, each by one reader in a thread or by several reader processes: an
exported snapshot, every row as of one consistent point (exported_read.py), or chunked, in
short transactions per key range, recorded so that a killed one is continued
(ranged_read.py). Both are handed one `TableSnapshot`: the table described once
(table_plan.py), the chunks packed (chunk_packing.py) and published with many PubAcks
outstanding (publishing.py). Here: the checks before anything is read, the publishing of each
piece, the meta once JetStream stored every chunk, and what a failure is called.

Memory: rows stream from the server; a few chunks are held at most (the queue between the
reader and the publisher, and the chunks awaiting their PubAck).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psycopg

from pg_nats_bridge import contract
from services.snapshotter.chunk_packing import ChunkBuilder, RangeDone
from services.snapshotter.conditions import checked, validate
from services.snapshotter.errors import SnapshotError
from services.snapshotter.exported_read import read_exported_snapshot
from services.snapshotter.key_ranges import Interrupted, Operator
from services.snapshotter.ledger import SegmentsDone
from services.snapshotter.progress import SnapshotProgress, estimate_rows
from services.snapshotter.publishing import PipelinedPublisher, PublishFailed
from services.snapshotter.ranged_read import read_ranged_snapshot
from services.snapshotter.resume import ChunkedRecords, ProgressStore, new_snapshot_id
from services.snapshotter.snapshot_context import (
    Piece,
    SnapshotContext,
    SnapshotOptions,
    TableSnapshot,
)
from services.snapshotter.table_plan import TablePlan, describe
from shared import failpoints, postgres
from shared.published import unpublished
from shared.wire import pack

__all__ = ["SnapshotContext", "SnapshotOptions", "new_snapshot_id", "take_snapshot"]

log = logging.getLogger(__name__)


async def take_snapshot(
    context: SnapshotContext,
    schema: str,
    table: str,
    options: SnapshotOptions,
    publisher: PipelinedPublisher,
    progress: SnapshotProgress | None = None,
    operator: Operator | None = None,
    on_rows: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Publish the snapshot's chunks, then, once JetStream stored them all, its meta; return
    the meta. A chunked one (with `context.js`) records its progress after every range and
    continues an unfinished one a dead reader left (services/snapshotter/resume.py)."""
    started = time.monotonic()
    progress = progress or SnapshotProgress(f"{schema}.{table}")
    builder = ChunkBuilder(options.chunk_size, context.max_payload)
    records: ChunkedRecords | None = None
    if options.mode == "chunked" and context.js is not None and not options.where:
        store = ProgressStore(context.js, context.init_stream, context.prefix, context.owner)
        records = await ChunkedRecords.begin(
            store, schema, table, options.fresh, options.takeover_seconds, builder
        )
        progress.add(builder.row_count)
    snapshot_id = records.snapshot_id if records else new_snapshot_id()
    msg_id_suffix = records.msg_id_suffix() if records else ""

    async def publish(piece: Piece) -> None:
        if isinstance(piece, RangeDone | SegmentsDone):
            if records is not None:
                await publisher.wait_acked()  # its chunks are stored before it is recorded
                await records.record(piece)
            return
        subject = contract.snapshot_chunk_subject(
            schema, table, snapshot_id, piece.index, context.prefix
        )
        msg_id = contract.snapshot_msg_id(snapshot_id, schema, table, piece.index)
        await publisher.publish(subject, piece.payload, msg_id + msg_id_suffix)
        on_rows(piece.rows)
        progress.add(piece.rows)
        failpoints.hit("snapshot.after_chunk")

    extra: dict[str, Any] = {}
    try:
        async with await postgres.connect_async(context.database_url, autocommit=True) as catalog:
            plan = await _plan(catalog, context, schema, table, options)
            if not options.where:  # a backfill's rows are a part, of unknown size
                progress.estimated(await estimate_rows(catalog, schema, table))
                builder.estimated_rows = progress.estimated_rows
            snapshot = TableSnapshot(
                context, options, plan, builder, publish, operator or Operator()
            )
            if options.mode == "chunked":
                lsn, extra = await read_ranged_snapshot(catalog, snapshot, records)
            else:
                lsn = await read_exported_snapshot(catalog, snapshot)
            await publisher.wait_acked()
            failpoints.hit("snapshot.after_read")
            if context.publish_schema is not None and not options.where:
                await context.publish_schema(catalog, schema, table)
    except BaseException as exc:
        await _fail(exc, records, snapshot_id, f"{schema}.{table}", builder)
    meta: dict[str, Any] = {
        "batch_count": builder.chunks,
        "lsn": str(lsn),
        "row_count": builder.row_count,
        "snapshot_id": snapshot_id,
        "table": table,
        "schema": schema,
        "timestamp": int(time.time()),
        **extra,
    }
    if snapshot.document is not None and not options.where:
        meta["schema_document"] = snapshot.document.as_dict()
    if options.where:
        meta["partial"] = True
        meta["where"] = [c.model_dump() for c in options.where]
    contract.SnapshotMeta.model_validate(meta)  # what is published is what the contract says
    meta_subject = (
        contract.backfill_meta_subject if options.where else contract.snapshot_meta_subject
    )
    try:
        await publisher.publish(
            meta_subject(schema, table, context.prefix),
            pack(meta),
            contract.meta_msg_id(snapshot_id),
        )
        await publisher.wait_acked()
    except PublishFailed as exc:
        if records is not None:
            await records.stop()  # every range is recorded: the next request publishes the meta
        raise SnapshotError(exc.reason, str(exc)) from exc
    if records is not None:
        await records.finish()
    await _mark_in_the_wal(context, meta)
    log.info(
        "snapshot %s of %s.%s: %d rows in %d chunks at %s (%.1f s)",
        snapshot_id,
        schema,
        table,
        builder.row_count,
        builder.chunks,
        lsn,
        time.monotonic() - started,
    )
    return meta


MARKER_PREFIX = "pg-nats-bridge"
"""The prefix of the logical decoding message written after every snapshot."""


async def _mark_in_the_wal(context: SnapshotContext, meta: dict[str, Any]) -> None:
    """A transaction after the snapshot's point, whatever else the database is doing: a
    logical decoding message (`cdc.~message.pg-nats-bridge`) whose commit record tells a copy
    holding tables at different moments that CDC has carried them all to one point
    (pg_nats_bridge/transactions.py); without it an idle database would leave such a copy
    unexposed until its next write. Best effort: a copy then waits for that write."""
    body = json.dumps(
        {"snapshot_id": meta["snapshot_id"], "schema": meta["schema"], "table": meta["table"]}
    )
    try:
        url = context.primary_url or context.database_url  # a standby takes no writes
        async with await postgres.connect_async(url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_logical_emit_message(true, %s, %s)", (MARKER_PREFIX, body)
            )
    except psycopg.Error as exc:
        log.warning(
            "snapshot %s: no marker written to the WAL (%s); copies holding tables at "
            "different moments show them once the database commits its next transaction",
            meta["snapshot_id"],
            str(exc).strip(),
        )


async def _plan(
    catalog: psycopg.AsyncConnection[Any],
    context: SnapshotContext,
    schema: str,
    table: str,
    options: SnapshotOptions,
) -> TablePlan:
    """The table described once, after the checks that refuse a snapshot before anything is
    read: a table the publication leaves out, a backfill's conditions on columns it does not
    publish or with values their types do not take."""
    if await unpublished(catalog, schema, table, context.publication):
        raise SnapshotError(
            "not_published",
            f"publication {context.publication} does not publish {schema}.{table}, so no change "
            "of it would follow the snapshot (the replicator refused it: its log and /health "
            "say why)",
        )
    plan = await describe(
        catalog, schema, table, context.publication, context.value_mode, options.where
    )
    if options.where:
        checked(options.where, plan.names, plan.what)
        await validate(catalog, plan.identifier, options.where, plan.what)
    return plan


async def _fail(
    exc: BaseException,
    records: ChunkedRecords | None,
    snapshot_id: str,
    what: str,
    builder: ChunkBuilder,
) -> NoReturn:
    """Raise a failed read as what it is, its records told first: a pause or cancel is
    recorded as such, an ALTER TABLE during the read as `cancelled` (its rows would not have
    one shape), any other failure as `stopped` (a request may continue it at once)."""
    if isinstance(exc, Interrupted) and records is not None:
        done = "paused" if exc.action == "pause" else "cancelled"
        await records.mark(done)
        raise SnapshotError(
            done,
            f"the chunked snapshot {snapshot_id} of {what} was {done} by an operator after "
            f"{builder.row_count} rows" + ("; resume it to go on" if done == "paused" else ""),
        ) from None
    if isinstance(exc, SnapshotError) and exc.reason == "table_rewritten" and records:
        if records.lsn:  # claimed: its rows so far have another shape, never to be continued
            await records.mark("cancelled")
        raise exc
    if records is not None and not isinstance(exc, asyncio.CancelledError):
        await records.stop()
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.QueryCanceled):
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
    if isinstance(exc, PublishFailed):
        raise SnapshotError(exc.reason, str(exc)) from exc
    raise exc
