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
- `D` the segment is done.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from pg_nats_bridge.contract import Condition
from services.snapshotter.chunked import range_query
from services.snapshotter.chunks import Chunk, ChunkBuilder, split_chunk
from services.snapshotter.conditions import bound, condition_sql
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.errors import SnapshotError
from services.snapshotter.table_read import Columns
from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.codec.copy_text import split_line
from shared.consistent_read import PINNED_SEARCH_PATH, copy_query

_BLOCK_LINES = 256
HEADER = struct.Struct(">cI")


def key_bounds(
    key: list[str], start: list[str] | None, end: list[str] | None, after: list[str] | None
) -> sql.Composable | None:
    """`(key) >= (start)` (or `> (after)`, once part of the segment is read) and
    `(key) < (end)`: the segment's bounds, as literals PostgreSQL reads as the key's types
    (values the snapshotter sampled from the table, not from a request)."""
    columns = sql.SQL(", ").join(map(sql.Identifier, key))
    parts: list[sql.Composable] = []

    def row(values: list[str]) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Literal, values))

    if after is not None:
        parts.append(sql.SQL("({}) > ({})").format(columns, row(after)))
    elif start is not None:
        parts.append(sql.SQL("({}) >= ({})").format(columns, row(start)))
    if end is not None:
        parts.append(sql.SQL("({}) < ({})").format(columns, row(end)))
    return sql.SQL("({})").format(sql.SQL(" AND ").join(parts)) if parts else None


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
            segment = key_bounds(columns.key, job.get("start"), job.get("end"), None)
            condition: sql.Composable | None = segment
            if conditions:
                backfill = condition_sql(table, conditions)
                condition = (
                    backfill if segment is None else sql.SQL("{} AND {}").format(segment, backfill)
                )
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
    """The segment in short transactions, as services/snapshotter/chunked.py reads a table,
    each range followed by `R` and the snapshotter's `go` or `stop`."""
    from services.snapshotter.chunked import FIRST_RANGE_ROWS, MAX_RANGE_ROWS, ChunkedRead
    from shared.pg_cancel import QueryCanceller

    columns = _columns(job)
    conditions = tuple(Condition(**c) for c in job.get("conditions", ()))
    read = ChunkedRead(
        job["dsn"],
        sql.Identifier(*job["table"]),
        columns,
        ValueMode(job["mode"]),
        job["transaction_seconds"],
        QueryCanceller(),
        statement_seconds=job["statement_seconds"],
        conditions=conditions,
    )
    packer = CopyRowPacker(RowCodec(columns.names, columns.oids, read.mode))
    builder = _builder(job)
    after: list[str] | None = job.get("after")
    limit = FIRST_RANGE_ROWS
    with postgres.connect(read.database_url, autocommit=True) as conn, bound(conn, conditions):
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        while True:
            started = time.monotonic()
            last: bytes | None = None
            count = 0
            segment = key_bounds(columns.key, job.get("start"), job.get("end"), after)
            with conn.transaction():
                timeout = sql.Literal(f"{int(read.statement_seconds * 1000)}ms")
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(timeout))
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(timeout))
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(read.table))
                conn.execute(PINNED_SEARCH_PATH)
                query = range_query(read, None, limit, segment)
                for block in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
                    for chunk in builder.add_many(packer.pack_block(block), columns.key):
                        frames.chunk(chunk)
                    count += len(block)
                    last = block[-1]
            seconds = time.monotonic() - started
            if last is None:
                break
            rest = builder.finish()
            if rest is not None:
                frames.chunk(rest)
            fields = split_line(last)
            after = [_text(fields[i]) for i in read.key_positions]
            frames.json(b"R", {"after": after, "rows": count, "seconds": seconds})
            if lines.readline().strip() != b"go" or count < limit:
                break
            wanted = count * read.transaction_seconds / max(seconds, 1e-3)
            limit = int(min(MAX_RANGE_ROWS, max(limit // 2, min(wanted, limit * 2), 1)))
    frames.send(b"D")


def _text(value: bytes | None) -> str:
    if value is None:
        raise ValueError("a primary key value is NULL")
    return value.decode()


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
