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
(`consistent_read.STORAGE_QUERY`) is compared with what it was before the export: if it changed, one
of them came in between, and the snapshot is exported anew. The reading transaction takes
the lock itself: held by another one, a TRUNCATE or ALTER TABLE queued behind that lock
queues the COPY's own lock request behind it in turn, and the three wait on one another for
good (and every other query on the table waits behind the ALTER).

Speed: the table is read by `COPY … TO STDOUT` in a thread, a libpq call per row
(`postgres.copy_out`), while the event loop publishes finished chunks with
many PubAcks outstanding (publishing.py); the meta goes out once JetStream stored every chunk.

Memory: rows stream from the server; a few chunks are held at most (the queue between the
reader thread and the publisher, and the chunks awaiting their PubAck).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import psycopg
from psycopg import sql

from pg_nats_bridge import contract
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.publishing import PipelinedPublisher, PublishFailed
from shared import failpoints, postgres
from shared.codec import RowCodec, ValueMode
from shared.consistent_read import (
    copy_query,
    describe_table,
    export_snapshot,
    snapshot_transaction,
    storage_async,
)
from shared.pg_cancel import QueryCanceller, finish_thread, run_cancellable
from shared.wire import pack, unpack

log = logging.getLogger(__name__)

# Exports tried before a table that keeps being truncated or rewritten fails the request.
_ATTEMPTS = 5

# Room for headers and framing beside a chunk's payload.
_OVERHEAD = 1024


class SnapshotError(Exception):
    """A snapshot request that cannot be served; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SnapshotOptions:
    chunk_size: int


def new_snapshot_id() -> str:
    """`snap-<unix time>-<random>`: ordered by time, unique within a second."""
    return f"snap-{int(time.time())}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    payload: bytes
    rows: int


class _ChunkBuilder:
    """Packs rows into `{"chunk": n, "data": [...]}` chunks no larger than `max_payload`."""

    def __init__(self, chunk_size: int, max_payload: int) -> None:
        self.chunk_size = chunk_size
        self.limit = max_payload - _OVERHEAD
        self.rows: list[bytes] = []
        self.size = 0
        self.chunks = 0
        self.row_count = 0
        self.packer = msgpack.Packer(use_bin_type=True)

    def refuse(self, packed_row: bytes, row: dict[str, Any], key: list[str]) -> SnapshotError:
        return SnapshotError(
            "row_too_large",
            f"row {_describe_row(row, key)} is {len(packed_row)} bytes encoded, more than NATS "
            f"max_payload allows ({self.limit + _OVERHEAD}); raise max_payload on the server",
        )

    def add_many(self, packed_rows: list[bytes], key: list[str]) -> list[Chunk]:
        """Adds a block of packed rows; returns the chunks they completed (a row too large
        for any chunk is refused)."""
        done: list[Chunk] = []
        limit, chunk_size = self.limit, self.chunk_size
        sizes = list(map(len, packed_rows))
        total = sum(sizes)
        if (
            len(self.rows) + len(packed_rows) <= chunk_size
            and self.size + total + 64 <= limit
            and max(sizes, default=0) + 64 <= limit
        ):  # the whole block joins the chunk being filled (the common case)
            self.rows.extend(packed_rows)
            self.size += total
            self.row_count += len(packed_rows)
            return done
        for packed in packed_rows:
            size = len(packed) + 64
            if size > limit:
                raise self.refuse(packed, unpack(packed), key)
            if self.rows and (len(self.rows) >= chunk_size or self.size + size > limit):
                chunk = self.finish()
                assert chunk is not None
                done.append(chunk)
            self.rows.append(packed)
            self.size += size - 64
        self.row_count += len(packed_rows)
        return done

    def finish(self) -> Chunk | None:
        if not self.rows:
            return None
        packer = self.packer
        payload = b"".join(
            (
                packer.pack_map_header(2),
                packer.pack("chunk"),
                packer.pack(self.chunks),
                packer.pack("data"),
                packer.pack_array_header(len(self.rows)),
                *self.rows,
            )
        )
        chunk = Chunk(self.chunks, payload, len(self.rows))
        self.chunks += 1
        self.rows, self.size = [], 0
        return chunk


class _Stopped(Exception):
    """The publishing side gave up; the table read ends early."""


class _Rewritten(Exception):
    """The table was truncated or rewritten after the export: the snapshot would read it
    empty."""


@dataclass(frozen=True, slots=True)
class _Columns:
    names: list[str]
    oids: list[int]
    key: list[str]
    row_filter: str | None = None  # the publication's, as PostgreSQL deparses it


@dataclass(frozen=True)
class _TableRead:
    database_url: str
    snapshot_name: str
    table: sql.Identifier
    mode: ValueMode
    # Asked once the reading transaction holds the table's lock: the columns to read, or
    # `_Rewritten` when the storage is no longer what it was before the export.
    locked: Callable[[], _Columns]
    canceller: QueryCanceller  # ends the read's wait for the lock, or its COPY, on a stop


# Lines decoded together (copy_rows.py); a block is a few hundred kB at most.
_BLOCK_LINES = 256


def _read_table(read: _TableRead, builder: _ChunkBuilder, emit: Callable[[Chunk], None]) -> None:
    """In a thread: COPY the table under the exported snapshot, its lines decoded by the very
    converters CDC events use a block at a time, each row packed, each full chunk handed to
    `emit`."""
    with (
        postgres.connect(read.database_url, autocommit=True) as conn,
        read.canceller.cancelling(lambda: conn.cancel_safe(timeout=5)),
        snapshot_transaction(conn, read.snapshot_name, [read.table]),
    ):
        columns = read.locked()
        rows = CopyRowPacker(RowCodec(columns.names, columns.oids, read.mode))
        query = copy_query(read.table, columns.names, columns.key, columns.row_filter)
        for lines in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
            for chunk in builder.add_many(rows.pack_block(lines), columns.key):
                emit(chunk)
    last = builder.finish()
    if last is not None:
        emit(last)


# Chunks the reader may have handed over and the publisher not yet published.
_CHUNKS_AHEAD = 4


async def _publish_chunks(
    read: _TableRead,
    builder: _ChunkBuilder,
    publish: Callable[[Chunk], Awaitable[None]],
) -> None:
    """Run the table read in a thread and publish its chunks as they come, a few chunks of
    memory at most: the reader waits only while `_CHUNKS_AHEAD` of them are not published yet.

    A hand-over does not wait for the loop to take the chunk (it did: a thread round trip per
    chunk, a quarter of the reader's time spent waiting while the loop wrote to the socket)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk] = asyncio.Queue()
    room = threading.Semaphore(_CHUNKS_AHEAD)
    stopped = threading.Event()

    def emit(chunk: Chunk) -> None:
        while not room.acquire(timeout=0.1):
            if stopped.is_set():
                raise _Stopped
        if stopped.is_set():
            raise _Stopped
        loop.call_soon_threadsafe(queue.put_nowait, chunk)

    async def publish_one(chunk: Chunk) -> None:
        try:
            await publish(chunk)
        finally:
            room.release()

    reader = asyncio.ensure_future(asyncio.to_thread(_read_table, read, builder, emit))
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getting.done():
                await publish_one(getting.result())
                continue
            getting.cancel()
            # The reader is done, and its hand-overs are all queued: each was a callback on
            # the loop, made before the thread's end was (its completion is one too).
            while not queue.empty():
                await publish_one(queue.get_nowait())
            reader.result()  # the reader's error, if it failed
            return
    finally:
        if not reader.done():
            stopped.set()  # seen at its next chunk; a wait in PostgreSQL ends by a cancel
            await finish_thread(reader, read.canceller)


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
) -> dict[str, Any]:
    """Publish the snapshot's chunks, then, once JetStream stored them all, its meta; return
    the meta."""
    snapshot_id = new_snapshot_id()
    started = time.monotonic()
    builder = _ChunkBuilder(options.chunk_size, max_payload)

    async def publish(chunk: Chunk) -> None:
        subject = contract.snapshot_chunk_subject(schema, table, snapshot_id, chunk.index, prefix)
        msg_id = contract.snapshot_msg_id(snapshot_id, schema, table, chunk.index)
        await publisher.publish(subject, chunk.payload, msg_id)
        on_rows(chunk.rows)
        failpoints.hit("snapshot.after_chunk")

    name = sql.Identifier(schema, table)
    try:
        async with await postgres.connect_async(database_url, autocommit=True) as catalog:
            regclass = name.as_string(catalog)
            for _ in range(_ATTEMPTS):
                before = await storage_async(catalog, regclass)
                slot = f"bridge_snap_{secrets.token_hex(6)}"
                canceller = QueryCanceller()
                export = functools.partial(
                    export_snapshot, database_url, slot, canceller=canceller,
                    what=f"the snapshot of {schema}.{table}",
                )  # fmt: skip
                try:
                    repl, lsn, snapshot_name = await run_cancellable(export, canceller)
                except Exception as exc:
                    raise SnapshotError(
                        "postgres_unavailable", f"PostgreSQL: {str(exc).strip()}"
                    ) from exc

                async def unchanged(before: list[Any] = before) -> bool:
                    return await storage_async(catalog, regclass) == before

                try:
                    if await _read_exported(
                        database_url, snapshot_name, schema, table, publication, mode, unchanged,
                        builder, publish, canceller,
                    ):  # fmt: skip
                        await publisher.wait_acked()
                        break
                finally:
                    await asyncio.to_thread(repl.close)  # drops the temporary slot
                log.info(
                    "%s.%s was truncated or rewritten after the snapshot was exported (it would "
                    "read empty); exporting another",
                    schema,
                    table,
                )
            else:
                raise SnapshotError(
                    "table_rewritten",
                    f"{schema}.{table} was truncated or rewritten during each of {_ATTEMPTS} "
                    "attempts to snapshot it; ask again once that stops",
                )
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


async def _read_exported(
    database_url: str,
    snapshot_name: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    unchanged: Callable[[], Awaitable[bool]],
    builder: _ChunkBuilder,
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

            async def columns_once_locked() -> _Columns:
                if not await unchanged():
                    raise _Rewritten
                return _Columns(*await describe_table(conn, schema, table, publication))

            def locked() -> _Columns:
                # In the reading thread, while the loop awaits that thread.
                return asyncio.run_coroutine_threadsafe(columns_once_locked(), loop).result()

            try:
                await _publish_chunks(
                    _TableRead(database_url, snapshot_name, name, mode, locked, canceller),
                    builder,
                    publish,
                )
            except _Rewritten:
                return False
    return True


def _describe_row(row: dict[str, Any], key: list[str]) -> str:
    if key:
        return "with key " + ", ".join(f"{k}={row.get(k)!r}" for k in key)
    return "(table without primary key)"
