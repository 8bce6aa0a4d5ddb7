"""A reader process of a parallel snapshot (services/snapshotter/parallel.py): one key segment
of one table, read from PostgreSQL, decoded and packed into chunk bodies, written to stdout.

Decoding COPY's text and packing rows is Python work holding the GIL (about 1.5 µs a row, a
core's worth at the rate PostgreSQL sends them), so reader threads would take turns; reader
processes each have a core. The snapshotter keeps everything else: numbering the chunks,
publishing them, recording progress, answering the request.

Run as `python -m services.snapshotter.reader`; the job is one JSON line on stdin. Frames on
stdout are `<kind: 1 byte><length: 4 bytes, big-endian><payload>`:

- `L` (exported mode) the reader's transaction adopted the snapshot and locked the table; it
  then reads one more stdin line: `{"columns": …}` to go on, or nothing (EOF) to stop.
- `C` a chunk: 4 bytes of row count, 1 byte of map entries, then the chunk's map entries after
  its `chunk` number (the snapshotter puts its own number in front).
- `R` (chunked mode) a range is done, its chunks sent: `{"after": [key as text], "rows": n}`;
  the reader reads a line, `go` or `stop`, before the next range.
- `E` a failure: `{"reason": …, "error": …}` (a snapshot refusal's reason); then it exits.
- `D` the segment is done; `S` (chunked) it stopped after a range, as the snapshotter asked.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from pg_nats_bridge.contract import Condition
from services.snapshotter.chunked import ChunkedRead, Interrupted, key_bounds, read_chunked
from services.snapshotter.chunks import Chunk, ChunkBuilder, RangeDone, split_chunk
from services.snapshotter.conditions import bound, condition_sql
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.errors import SnapshotError
from services.snapshotter.table_read import Columns
from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.consistent_read import PINNED_SEARCH_PATH, copy_query
from shared.pg_cancel import QueryCanceller

_BLOCK_LINES = 256
HEADER = struct.Struct(">cI")


class Frames:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.out.write(HEADER.pack(kind, len(payload)))
        self.out.write(payload)
        self.out.flush()

    def chunk(self, chunk: Chunk) -> None:
        entries, body = split_chunk(chunk.payload)
        self.out.write(HEADER.pack(b"C", 5 + len(body)))
        self.out.write(struct.pack(">IB", chunk.rows, entries))
        self.out.write(body)

    def json(self, kind: bytes, value: Any) -> None:
        self.send(kind, json.dumps(value).encode())


def _columns(job: dict[str, Any]) -> Columns:
    c = job["columns"]
    return Columns(c["names"], c["oids"], c["key"], c.get("row_filter"))


def _builder(job: dict[str, Any]) -> ChunkBuilder:
    builder = ChunkBuilder(job["chunk_size"], job["max_payload"])
    builder.estimated_rows = job.get("estimated_rows")
    return builder


def read_exported(job: dict[str, Any], frames: Frames, lines: BinaryIO) -> None:
    """Adopt the snapshot, lock, say so, wait for the columns, COPY the segment."""
    conditions = tuple(Condition(**c) for c in job.get("conditions", ()))
    table = sql.Identifier(*job["table"])
    with postgres.connect(job["dsn"], autocommit=True) as conn, bound(conn, conditions):
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(job["snapshot"]))
            )
            # Bounded: with another reader's lock held, an ALTER TABLE queued behind it would
            # queue this one's behind it for good (the snapshotter then exports again).
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(job['lock_seconds'] * 1000)}ms")
                )
            )
            conn.execute(sql.SQL("SELECT FROM {} LIMIT 0").format(table))
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute(PINNED_SEARCH_PATH)
            frames.send(b"L")
            go = lines.readline()
            if not go.strip():
                return
            job = {**job, **json.loads(go)}
            columns = _columns(job)
            parts = key_bounds(columns.key, job.get("start"), job.get("end"))
            if conditions:
                parts.append(condition_sql(table, conditions))
            condition = sql.SQL(" AND ").join(parts) if parts else None
            query = copy_query(table, columns.names, columns.key, columns.row_filter, condition)
            rows = CopyRowPacker(RowCodec(columns.names, columns.oids, ValueMode(job["mode"])))
            builder = _builder(job)
            for block in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
                for chunk in builder.add_many(rows.pack_block(block), columns.key):
                    frames.chunk(chunk)
            last = builder.finish()
            if last is not None:
                frames.chunk(last)
    frames.send(b"D")


def read_ranges(job: dict[str, Any], frames: Frames, lines: BinaryIO) -> None:
    """The segment in short transactions, exactly as one reader reads a table
    (`chunked.read_chunked`), each range followed by `R` and the snapshotter's `go` or
    `stop`."""
    columns = _columns(job)
    read = ChunkedRead(
        job["dsn"],
        sql.Identifier(*job["table"]),
        columns,
        ValueMode(job["mode"]),
        job["transaction_seconds"],
        QueryCanceller(),
        after=tuple(job["after"]) if job.get("after") else None,
        statement_seconds=job["statement_seconds"],
        conditions=tuple(Condition(**c) for c in job.get("conditions", ())),
        start=tuple(job["start"]) if job.get("start") else None,
        end=tuple(job["end"]) if job.get("end") else None,
    )
    rows_before = 0

    def emit(piece: Chunk | RangeDone) -> None:
        nonlocal rows_before
        if isinstance(piece, Chunk):
            frames.chunk(piece)
            return
        rows, rows_before = piece.row_count - rows_before, piece.row_count
        frames.json(b"R", {"after": list(piece.after), "rows": rows})
        if lines.readline().strip() != b"go":
            read.operator.action = "stop"  # read_chunked ends after this range

    try:
        read_chunked(read, _builder(job), emit)
    except Interrupted:
        frames.send(b"S")  # stopped as asked, the segment not read to its end
        return
    frames.send(b"D")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    frames = Frames(sys.stdout.buffer)
    lines = sys.stdin.buffer
    try:
        job = json.loads(lines.readline())
        if job.get("snapshot"):
            read_exported(job, frames, lines)
        else:
            read_ranges(job, frames, lines)
    except SnapshotError as exc:
        frames.json(b"E", {"reason": exc.reason, "error": str(exc)})
        return 1
    except psycopg.errors.LockNotAvailable as exc:
        frames.json(b"E", {"reason": "lock_timeout", "error": str(exc).strip()})
        return 1
    except psycopg.Error as exc:
        frames.json(b"E", {"reason": "postgres_unavailable", "error": f"PostgreSQL: {exc}"})
        return 1
    except BrokenPipeError:
        return 1  # the snapshotter is gone, or stopped this reader
    except Exception as exc:
        frames.json(b"E", {"reason": "internal", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
