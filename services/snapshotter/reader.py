"""A reader process of a parallel snapshot (services/snapshotter/parallel.py): one key segment
of one table, read from PostgreSQL, decoded and packed into chunk bodies, written to stdout.

Decoding COPY's text and packing rows is Python work holding the GIL (about 1.5 µs a row, a
core's worth at the rate PostgreSQL sends them), so reader threads would take turns; reader
processes each have a core. The snapshotter keeps everything else: numbering the chunks,
publishing them, recording progress, answering the request.

Run as `python -m services.snapshotter.reader`; what it reads and writes is
services/snapshotter/reader_protocol.py. It reads exactly as one reader in the snapshotter
does: `table_read.copy_segment` under the exported snapshot, `key_ranges.read_key_ranges` in
chunked mode.
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import psycopg
from psycopg import sql

from services.snapshotter.chunk_packing import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.errors import SnapshotError
from services.snapshotter.key_ranges import Interrupted, KeyRangeRead, read_key_ranges
from services.snapshotter.reader_protocol import (
    GO,
    Frame,
    FrameWriter,
    ReaderJob,
    read_plan_line,
)
from services.snapshotter.table_read import copy_segment
from shared import postgres
from shared.consistent_read import snapshot_transaction
from shared.pg_cancel import QueryCanceller


def _builder(job: ReaderJob) -> ChunkBuilder:
    builder = ChunkBuilder(job.chunk_size, job.max_payload)
    builder.estimated_rows = job.estimated_rows
    return builder


def read_exported(job: ReaderJob, frames: FrameWriter, lines: BinaryIO) -> None:
    """Adopt the snapshot, lock, say so, wait for the plan, COPY the segment."""
    assert job.snapshot is not None
    with (
        postgres.connect(job.dsn, autocommit=True) as conn,
        snapshot_transaction(
            conn, job.snapshot, [sql.Identifier(job.schema, job.table)], job.lock_seconds
        ),
    ):
        frames.send(Frame.LOCKED)
        go = lines.readline()
        if not go.strip():
            return
        plan = read_plan_line(go)
        copy_segment(conn, plan, job.segment, _builder(job), frames.chunk)
    frames.send(Frame.DONE)


def read_ranges(job: ReaderJob, frames: FrameWriter, lines: BinaryIO) -> None:
    """The segment in short transactions, exactly as one reader reads a table, each range
    followed by `RANGE_DONE` and the snapshotter's `go` or `stop`."""
    assert job.plan is not None
    segment = job.segment
    read = KeyRangeRead(
        job.dsn,
        job.plan,
        job.transaction_seconds,
        QueryCanceller(),
        after=segment.after,
        statement_seconds=job.statement_seconds,
        start=segment.start,
        end=segment.end,
    )
    rows_before = 0

    def emit(piece: Chunk | RangeDone) -> None:
        nonlocal rows_before
        if isinstance(piece, Chunk):
            frames.chunk(piece)
            return
        rows, rows_before = piece.row_count - rows_before, piece.row_count
        frames.range_done(list(piece.after), rows)
        if lines.readline().strip() != GO:
            read.operator.action = "stop"  # read_key_ranges ends after this range

    try:
        read_key_ranges(read, _builder(job), emit)
    except Interrupted:
        frames.send(Frame.STOPPED)  # stopped as asked, the segment not read to its end
        return
    frames.send(Frame.DONE)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    frames = FrameWriter(sys.stdout.buffer)
    lines = sys.stdin.buffer
    try:
        job = ReaderJob.decode(lines.readline())
        if job.snapshot:
            read_exported(job, frames, lines)
        else:
            read_ranges(job, frames, lines)
    except SnapshotError as exc:
        frames.failed(exc.reason, str(exc))
        return 1
    except psycopg.errors.LockNotAvailable as exc:
        frames.failed("lock_timeout", str(exc).strip())
        return 1
    except psycopg.Error as exc:
        frames.failed("postgres_unavailable", f"PostgreSQL: {exc}")
        return 1
    except BrokenPipeError:
        return 1  # the snapshotter is gone, or stopped this reader
    except Exception as exc:
        frames.failed("internal", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
