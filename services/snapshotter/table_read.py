"""Reading a table (or a reader's key segment of it) under an exported snapshot, and handing
its chunks to the event loop for publishing as they fill, a few chunks of memory at most."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from pg_nats_bridge.contract import KeySegment
from services.snapshotter.chunk_packing import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.conditions import bound
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.table_plan import TablePlan
from shared import postgres
from shared.consistent_read import snapshot_transaction
from shared.pg_cancel import QueryCanceller, finish_thread


class _Stopped(Exception):
    """The publishing side gave up; the table read ends early."""


class Rewritten(Exception):
    """The table was truncated or rewritten after the export: the snapshot would read it
    empty."""


# Lines decoded together (copy_rows.py); a block is a few hundred kB at most.
_BLOCK_LINES = 256


def copy_segment(
    conn: psycopg.Connection[Any],
    plan: TablePlan,
    segment: KeySegment,
    builder: ChunkBuilder,
    emit: Callable[[Chunk], None],
) -> None:
    """In `conn`'s snapshot transaction: COPY the segment, its lines decoded by the very
    converters CDC events use a block at a time, each row packed, each full chunk handed to
    `emit`, the last one too."""
    rows = CopyRowPacker(plan.codec())
    query = plan.copy_query(segment.start, segment.end)
    with bound(conn, plan.conditions):
        for lines in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
            for chunk in builder.add_many(rows.pack_block(lines), plan.key):
                emit(chunk)
    last = builder.finish()
    if last is not None:
        emit(last)


@dataclass(frozen=True)
class TableRead:
    """The whole table under an exported snapshot, by a thread of the snapshotter."""

    database_url: str
    snapshot_name: str
    plan: TablePlan
    # Asked once the reading transaction holds the table's lock: the plan as the snapshot
    # sees the table, or `Rewritten` when its storage is no longer what it was at the export.
    locked: Callable[[], TablePlan]
    canceller: QueryCanceller  # ends the read's wait for the lock, or its COPY, on a stop


def read_table(
    read: TableRead, builder: ChunkBuilder, emit: Callable[[Chunk | RangeDone], None]
) -> None:
    """In a thread: adopt the snapshot, lock the table, COPY it (`copy_segment`)."""
    with (
        postgres.connect(read.database_url, autocommit=True) as conn,
        read.canceller.cancelling(lambda: conn.cancel_safe(timeout=5)),
        snapshot_transaction(conn, read.snapshot_name, [read.plan.identifier]),
    ):
        copy_segment(conn, read.locked(), KeySegment(), builder, emit)


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
