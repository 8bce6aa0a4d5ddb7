"""Reading one table under an exported snapshot in a thread, and handing its chunks to the
event loop for publishing as they fill, a few chunks of memory at most."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from psycopg import sql

from pg_nats_bridge.contract import Condition
from services.snapshotter.chunks import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.conditions import bound, condition_sql
from services.snapshotter.copy_rows import CopyRowPacker
from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.consistent_read import copy_query, snapshot_transaction
from shared.pg_cancel import QueryCanceller, finish_thread


class _Stopped(Exception):
    """The publishing side gave up; the table read ends early."""


class Rewritten(Exception):
    """The table was truncated or rewritten after the export: the snapshot would read it
    empty."""


@dataclass(frozen=True, slots=True)
class Columns:
    names: list[str]
    oids: list[int]
    key: list[str]
    row_filter: str | None = None  # the publication's, as PostgreSQL deparses it


@dataclass(frozen=True)
class TableRead:
    database_url: str
    snapshot_name: str
    table: sql.Identifier
    mode: ValueMode
    # Asked once the reading transaction holds the table's lock: the columns to read, or
    # `Rewritten` when the storage is no longer what it was before the export.
    locked: Callable[[], Columns]
    canceller: QueryCanceller  # ends the read's wait for the lock, or its COPY, on a stop
    conditions: tuple[Condition, ...] = ()  # a partial backfill's (conditions.py)


# Lines decoded together (copy_rows.py); a block is a few hundred kB at most.
_BLOCK_LINES = 256


def read_table(
    read: TableRead, builder: ChunkBuilder, emit: Callable[[Chunk | RangeDone], None]
) -> None:
    """In a thread: COPY the table under the exported snapshot, its lines decoded by the very
    converters CDC events use a block at a time, each row packed, each full chunk handed to
    `emit`."""
    with (
        postgres.connect(read.database_url, autocommit=True) as conn,
        read.canceller.cancelling(lambda: conn.cancel_safe(timeout=5)),
        bound(conn, read.conditions),
        snapshot_transaction(conn, read.snapshot_name, [read.table]),
    ):
        columns = read.locked()
        rows = CopyRowPacker(RowCodec(columns.names, columns.oids, read.mode))
        condition = condition_sql(read.table, read.conditions) if read.conditions else None
        query = copy_query(read.table, columns.names, columns.key, columns.row_filter, condition)
        for lines in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
            for chunk in builder.add_many(rows.pack_block(lines), columns.key):
                emit(chunk)
    last = builder.finish()
    if last is not None:
        emit(last)


T = TypeVar("T")

# Chunks the reader may have handed over and the publisher not yet published.
_CHUNKS_AHEAD = 4


async def publish_chunks(
    read: Callable[[ChunkBuilder, Callable[[Chunk | RangeDone], None]], T],
    canceller: QueryCanceller,
    builder: ChunkBuilder,
    publish: Callable[[Chunk | RangeDone], Awaitable[None]],
) -> T:
    """Run a table read (`read_table`, or a chunked one) in a thread and publish its chunks as
    they come, a few chunks of memory at most: the reader waits only while `_CHUNKS_AHEAD` of
    them are not published yet; the read's result once all are published.

    A hand-over does not wait for the loop to take the chunk (it did: a thread round trip per
    chunk, a quarter of the reader's time spent waiting while the loop wrote to the socket)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk | RangeDone] = asyncio.Queue()
    room = threading.Semaphore(_CHUNKS_AHEAD)
    stopped = threading.Event()

    def emit(chunk: Chunk | RangeDone) -> None:
        while not room.acquire(timeout=0.1):
            if stopped.is_set():
                raise _Stopped
        if stopped.is_set():
            raise _Stopped
        loop.call_soon_threadsafe(queue.put_nowait, chunk)

    async def publish_one(chunk: Chunk | RangeDone) -> None:
        try:
            await publish(chunk)
        finally:
            room.release()

    reader = asyncio.ensure_future(asyncio.to_thread(read, builder, emit))
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
            return reader.result()  # or the reader's error, if it failed
    finally:
        if not reader.done():
            stopped.set()  # seen at its next chunk; a wait in PostgreSQL ends by a cancel
            await finish_thread(reader, canceller)
