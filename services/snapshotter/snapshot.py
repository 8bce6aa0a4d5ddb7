"""One consistent snapshot of one table, published in chunks to the INIT stream.

Consistency: a temporary logical slot created with `SNAPSHOT 'export'` gives a consistent
point (an LSN) and a snapshot name; the table is read in a REPEATABLE READ transaction that
adopts that snapshot (`SET TRANSACTION SNAPSHOT`). The rows are then exactly those of the
transactions that committed before the consistent point, which is the `lsn` of the meta
message: a consumer applies CDC events whose `commit_lsn` ≥ `lsn` on top. The slot is
temporary, so it disappears with its connection, also when the snapshotter is killed.

Except for TRUNCATE and a rewriting ALTER TABLE, which are not MVCC-safe: committed after the
export, they make the snapshot read the table empty, and a rewrite sends no CDC event that
would bring the rows back (the consumer would lose them all). So the transaction that reads
the table first locks it (ACCESS SHARE, which both wait for), then its storage
(`consistent_read.STORAGE_QUERY`) is compared with what it was before the export: if it
changed, one of them came in between, and the snapshot is exported anew. The reading
transaction takes the lock itself: held by another one, a TRUNCATE or ALTER TABLE queued
behind that lock queues the COPY's own lock request behind it in turn, and the three wait on
one another for good (and every other query on the table waits behind the ALTER).

The jobs, each in its module: the request's handling (app.py, requests.py), the consistent
read (shared/consistent_read.py), the table read in a thread (table_read.py), the chunks
(chunks.py), their publishing with many PubAcks outstanding (publishing.py); here, one
snapshot from export to meta, which goes out once JetStream stored every chunk.

Memory: rows stream from the server; a few chunks are held at most (the queue between the
reader thread and the publisher, and the chunks awaiting their PubAck).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pg_nats_bridge import contract
from services.snapshotter.chunked import ChunkedRead, read_chunked
from services.snapshotter.chunks import Chunk, ChunkBuilder
from services.snapshotter.errors import SnapshotError
from services.snapshotter.progress import SnapshotProgress, estimate_rows
from services.snapshotter.publishing import PipelinedPublisher, PublishFailed
from services.snapshotter.table_read import (
    Columns,
    Rewritten,
    TableRead,
    publish_chunks,
    read_table,
)
from shared import failpoints, postgres
from shared.codec import ValueMode
from shared.consistent_read import (
    describe_table,
    export_snapshot,
    storage_async,
)
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller, run_cancellable
from shared.wire import pack

log = logging.getLogger(__name__)

# Exports tried before a table that keeps being truncated or rewritten fails the request.
_ATTEMPTS = 5


@dataclass(frozen=True)
class SnapshotOptions:
    chunk_size: int
    mode: str = "exported"  # or "chunked" (services/snapshotter/chunked.py)
    transaction_seconds: float = 1.0  # chunked: how long one reading transaction lasts


def new_snapshot_id() -> str:
    """`snap-<unix time>-<random>`: ordered by time, unique within a second."""
    return f"snap-{int(time.time())}-{secrets.token_hex(3)}"


async def take_snapshot(
    database_url: str,
    schema: str,
    table: str,
    options: SnapshotOptions,
    publisher: PipelinedPublisher,
    max_payload: int,
    mode: ValueMode,
    publication: str,
    prefix: str = "init",
    on_rows: Callable[[int], None] = lambda n: None,
    primary_url: str | None = None,
    progress: SnapshotProgress | None = None,
) -> dict[str, Any]:
    """Publish the snapshot's chunks, then, once JetStream stored them all, its meta; return
    the meta."""
    snapshot_id = new_snapshot_id()
    started = time.monotonic()
    progress = progress or SnapshotProgress(f"{schema}.{table}")
    builder = ChunkBuilder(options.chunk_size, max_payload)

    async def publish(chunk: Chunk) -> None:
        subject = contract.snapshot_chunk_subject(schema, table, snapshot_id, chunk.index, prefix)
        msg_id = contract.snapshot_msg_id(snapshot_id, schema, table, chunk.index)
        await publisher.publish(subject, chunk.payload, msg_id)
        on_rows(chunk.rows)
        progress.add(chunk.rows)
        failpoints.hit("snapshot.after_chunk")

    extra: dict[str, Any] = {}
    try:
        async with await postgres.connect_async(database_url, autocommit=True) as catalog:
            progress.estimated(await estimate_rows(catalog, schema, table))
            builder.estimated_rows = progress.estimated_rows
            if options.mode == "chunked":
                lsn, extra = await read_chunked_snapshot(
                    catalog, database_url, schema, table, publication, mode, options,
                    builder, publish, primary_url,
                )  # fmt: skip
            else:
                lsn = await _export_and_read(
                    catalog, database_url, schema, table, publication, mode, builder,
                    publish, primary_url,
                )  # fmt: skip
            await publisher.wait_acked()
    except psycopg.OperationalError as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
    except PublishFailed as exc:
        raise SnapshotError(exc.reason, str(exc)) from exc
    meta = {
        "batch_count": builder.chunks,
        "lsn": str(lsn),
        "row_count": builder.row_count,
        "snapshot_id": snapshot_id,
        "table": table,
        "schema": schema,
        "timestamp": int(time.time()),
        **extra,
    }
    try:
        await publisher.publish(
            contract.snapshot_meta_subject(schema, table, prefix),
            pack(meta),
            contract.meta_msg_id(snapshot_id),
        )
        await publisher.wait_acked()
    except PublishFailed as exc:
        raise SnapshotError(exc.reason, str(exc)) from exc
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


async def _export_and_read(
    catalog: psycopg.AsyncConnection[Any],
    database_url: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    builder: ChunkBuilder,
    publish: Callable[[Chunk], Awaitable[None]],
    primary_url: str | None,
) -> Lsn:
    """Export a snapshot and read the table under it (again while a TRUNCATE or rewrite came
    in between); the snapshot's consistent point."""
    regclass = sql.Identifier(schema, table).as_string(catalog)
    for _ in range(_ATTEMPTS):
        before = await storage_async(catalog, regclass)
        slot = f"bridge_snap_{secrets.token_hex(6)}"
        canceller = QueryCanceller()
        export = functools.partial(
            export_snapshot, database_url, slot, canceller=canceller,
            what=f"the snapshot of {schema}.{table}", primary_url=primary_url,
        )  # fmt: skip
        try:
            repl, lsn, snapshot_name = await run_cancellable(export, canceller)
        except Exception as exc:
            raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc

        async def unchanged(before: list[Any] = before) -> bool:
            return await storage_async(catalog, regclass) == before

        try:
            if await _read_exported(
                database_url, snapshot_name, schema, table, publication, mode, unchanged,
                builder, publish, canceller,
            ):  # fmt: skip
                return lsn
        finally:
            await asyncio.to_thread(repl.close)  # drops the temporary slot
        log.info(
            "%s.%s was truncated or rewritten after the snapshot was exported (it would read "
            "empty); exporting another",
            schema,
            table,
        )
    raise SnapshotError(
        "table_rewritten",
        f"{schema}.{table} was truncated or rewritten during each of {_ATTEMPTS} attempts to "
        "snapshot it; ask again once that stops",
    )


async def read_chunked_snapshot(
    catalog: psycopg.AsyncConnection[Any],
    database_url: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    options: SnapshotOptions,
    builder: ChunkBuilder,
    publish: Callable[[Chunk], Awaitable[None]],
    primary_url: str | None,
) -> tuple[Lsn, dict[str, Any]]:
    """A chunked snapshot (services/snapshotter/chunked.py): the consistent point of a
    temporary slot dropped at once, then the ranges; that point, and the meta's own fields."""
    columns = Columns(*await describe_table(catalog, schema, table, publication))
    if not columns.key or not set(columns.key) <= set(columns.names):
        raise SnapshotError(
            "no_primary_key",
            f"{schema}.{table} has no primary key{'' if not columns.key else ' published'}: a "
            "chunked snapshot reads it in primary-key ranges. Ask for the default mode (one "
            "exported snapshot), or give the table a primary key",
        )
    canceller = QueryCanceller()
    export = functools.partial(
        export_snapshot, database_url, f"bridge_snap_{secrets.token_hex(6)}",
        canceller=canceller, what=f"the chunked snapshot of {schema}.{table}",
        primary_url=primary_url,
    )  # fmt: skip
    try:
        repl, lsn, _ = await run_cancellable(export, canceller)
    except Exception as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
    await asyncio.to_thread(repl.close)  # only its consistent point was wanted
    read = ChunkedRead(
        database_url,
        sql.Identifier(schema, table),
        columns,
        mode,
        options.transaction_seconds,
        canceller,
    )
    until = await publish_chunks(functools.partial(read_chunked, read), canceller, builder, publish)
    log.info(
        "chunked snapshot of %s.%s: %d rows in %d transactions, the longest %.2f s",
        schema,
        table,
        builder.row_count,
        read.transactions,
        read.longest_transaction,
    )
    return lsn, {"mode": "chunked", "replay_until": str(max(until, lsn))}


async def _read_exported(
    database_url: str,
    snapshot_name: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    unchanged: Callable[[], Awaitable[bool]],
    builder: ChunkBuilder,
    publish: Callable[[Chunk], Awaitable[None]],
    canceller: QueryCanceller,
) -> bool:
    """Read the table under the exported snapshot and publish its chunks; False, with nothing
    published, when `unchanged` says the table was truncated or rewritten since the export."""
    loop = asyncio.get_running_loop()
    name = sql.Identifier(schema, table)
    async with await postgres.connect_async(database_url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
            )

            async def columns_once_locked() -> Columns:
                if not await unchanged():
                    raise Rewritten
                return Columns(*await describe_table(conn, schema, table, publication))

            def locked() -> Columns:
                # In the reading thread, while the loop awaits that thread.
                return asyncio.run_coroutine_threadsafe(columns_once_locked(), loop).result()

            try:
                read = TableRead(database_url, snapshot_name, name, mode, locked, canceller)
                await publish_chunks(
                    functools.partial(read_table, read), canceller, builder, publish
                )
            except Rewritten:
                return False
    return True
