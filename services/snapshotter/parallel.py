"""A snapshot read by several reader processes (`--snapshot-readers`), one primary-key segment
each (services/snapshotter/reader.py), their chunks numbered and published here.

Segments: the table's key is sampled (`TABLESAMPLE SYSTEM`, about 20,000 rows) and cut at its
quantiles, so each reader gets about as many rows; the first segment is open below, the last
above, so every row is in exactly one whatever was sampled. A table of fewer rows than
`--snapshot-rows-per-reader` per reader gets fewer readers (a process takes about 0.3 s to
start); one too small to cut, or without a primary key, is read by one.

- Exported mode: every reader adopts the one exported snapshot and locks the table (with a
  bounded wait: an ALTER TABLE queued behind one reader's lock would queue the next reader's
  behind it for good, so a reader that cannot lock fails the attempt and the snapshot is
  exported again); once all hold it, the table's storage is compared with the export's as for
  one reader, and they read. The rows are those of one snapshot, as with one reader.
- Chunked mode: every reader pages through its segment in short transactions. After each
  range the reader waits for a `go`, which comes once the range's chunks are stored and the
  progress recorded. Chunks of several readers interleave, so a record holds each segment's
  key read through, and `next_chunk` is the cut below which every chunk belongs to a finished
  and recorded range (`Ledger.cut`): a continuation removes the chunks from the cut on and
  reads each segment again from its recorded key, so no row is sent twice.

Chunks are numbered here in the order they are published, so numbers follow stream order as
with one reader; rows are in key order within a chunk and within a segment, not across
segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from services.snapshotter.chunks import Chunk, ChunkBuilder
from services.snapshotter.errors import SnapshotError
from services.snapshotter.reader import HEADER
from services.snapshotter.table_read import Columns
from shared import failpoints

log = logging.getLogger(__name__)

# Rows sampled to cut the key into segments.
SAMPLE_ROWS = 20_000
# How long a reader waits for the table's lock before the attempt is given up (exported).
LOCK_SECONDS = 5.0


@dataclass
class Segment:
    """A part of the key: from `start` (inclusive; None: from the first) to `end` (exclusive;
    None: to the last), read through `after` so far (chunked)."""

    start: list[str] | None
    end: list[str] | None
    after: list[str] | None = None
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "after": self.after, "done": self.done}

    @classmethod
    def read(cls, body: dict[str, Any]) -> Segment:
        def key(value: Any) -> list[str] | None:
            return None if value is None else [str(v) for v in value]

        return cls(key(body["start"]), key(body["end"]), key(body["after"]), bool(body["done"]))


class LockBusy(Exception):
    """A reader could not lock the table in time (exported mode): export again."""


async def plan_segments(
    conn: psycopg.AsyncConnection[Any],
    table: sql.Identifier,
    key: list[str],
    readers: int,
    estimated_rows: int | None,
    rows_per_reader: int = 500_000,
) -> list[Segment]:
    """`readers` segments of about equal rows, fewer for a small table; [] for one reader.
    Without the planner's estimate (a table never analyzed) 1% of its pages are sampled, and
    the sample says the size. `LockBusy` when the table could not be locked in time."""
    if readers <= 1 or not key:
        return []
    if estimated_rows is not None:
        readers = min(readers, max(1, estimated_rows // rows_per_reader))
        if readers <= 1:
            return []
        percent = min(100.0, max(0.001, 100.0 * SAMPLE_ROWS / max(estimated_rows, 1)))
    else:
        percent = 1.0
    columns = sql.SQL(", ").join(map(sql.Identifier, key))
    # Each as text under a name of its own: `ORDER BY id` would otherwise sort by the output
    # column `id::text`, lexically (a bare name in ORDER BY means an output column first).
    query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) ORDER BY {}").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"bound {i}"))
            for i, k in enumerate(key)
        ),
        table,
        sql.Literal(percent),
        columns,
    )
    try:
        async with conn.transaction():
            # Bounded as the readers' own locks are: an ALTER TABLE queued behind another
            # transaction would hold this up for as long.
            await conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(LOCK_SECONDS * 1000)}ms")
                )
            )
            cur = await conn.execute(query)
            sample = [list(row) for row in await cur.fetchall()]
    except psycopg.errors.LockNotAvailable as exc:
        raise LockBusy(str(exc)) from None
    if estimated_rows is None:
        readers = min(readers, max(1, len(sample) * 100 // rows_per_reader))
    bounds: list[list[str]] = []
    for i in range(1, readers):
        bound = sample[len(sample) * i // readers] if sample else None
        if bound is not None and bound not in bounds:
            bounds.append(bound)
    if not bounds:
        return []
    edges: list[list[str] | None] = [None, *bounds, None]
    return [Segment(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class _Reader:
    """One reader process and its pipes."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.finished = False

    @classmethod
    async def start(cls, index: int, job: dict[str, Any]) -> _Reader:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.snapshotter.reader",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        reader = cls(index, process)
        await reader.send(json.dumps(job).encode())
        return reader

    async def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        await self.process.stdin.drain()

    async def frame(self) -> tuple[bytes, bytes]:
        assert self.process.stdout is not None
        try:
            kind, size = HEADER.unpack(await self.process.stdout.readexactly(HEADER.size))
            return kind, await self.process.stdout.readexactly(size)
        except asyncio.IncompleteReadError:
            code = await self.process.wait()
            raise SnapshotError(
                "internal", f"snapshot reader {self.index} ended without a word (exit {code})"
            ) from None

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


def _failure(payload: bytes) -> Exception:
    body = json.loads(payload)
    if body.get("reason") == "lock_timeout":
        return LockBusy(body.get("error", ""))
    return SnapshotError(str(body.get("reason", "internal")), str(body.get("error", "")))


class Ledger:
    """Which chunks belong to which reader's ranges, for records a continuation can trust."""

    def __init__(self, segments: list[Segment], next_chunk: int, row_count: int) -> None:
        self.segments = segments
        self.base_rows = row_count
        self.ranges: list[list[tuple[int, int, list[str], int]]] = [[] for _ in segments]
        self.open: list[tuple[int, int] | None] = [None for _ in segments]
        self.finished = [s.done for s in segments]

    def chunk(self, reader: int, index: int) -> None:
        first = self.open[reader]
        self.open[reader] = (index if first is None else first[0], index)

    def range_done(self, reader: int, after: list[str], rows: int) -> None:
        span = self.open[reader]
        assert span is not None, "a range without a chunk"
        self.ranges[reader].append((span[0], span[1], after, rows))
        self.open[reader] = None

    def cut(self, published: int) -> int:
        """The highest number below which every chunk is in a finished range that lies
        entirely below it."""
        cut = published
        while True:
            low = cut
            for reader, ranges in enumerate(self.ranges):
                span = self.open[reader]
                if span is not None:
                    low = min(low, span[0])
                for first, last, _, _ in ranges:
                    if last >= cut:
                        low = min(low, first)
            if low == cut:
                return cut
            cut = low

    def record(self, published: int) -> tuple[list[Segment], int, int]:
        """The segments as read through the cut, the cut, and the rows below it."""
        cut = self.cut(published)
        rows = self.base_rows
        segments = []
        for reader, segment in enumerate(self.segments):
            after, whole = segment.after, self.open[reader] is None
            for _, last, through, count in self.ranges[reader]:
                if last < cut:
                    after, rows = through, rows + count
                else:
                    whole = False
            done = self.finished[reader] and whole
            segments.append(Segment(segment.start, segment.end, after, done))
        return segments, cut, rows


@dataclass(frozen=True)
class SegmentsDone:
    """Handed to the publisher in line with the chunks: record this (chunked mode)."""

    segments: list[Segment]
    next_chunk: int
    row_count: int


@dataclass
class ParallelJob:
    """What every reader is told: the table, the columns (chunked: known before), how."""

    dsn: str
    table: tuple[str, str]
    mode: str
    chunk_size: int
    max_payload: int
    estimated_rows: int | None
    readers: int = 1
    rows_per_reader: int = 500_000
    conditions: list[dict[str, Any]] = field(default_factory=list)
    transaction_seconds: float = 1.0
    statement_seconds: float = 20.0

    def for_segment(self, segment: Segment, **more: Any) -> dict[str, Any]:
        return {
            "dsn": self.dsn,
            "table": list(self.table),
            "mode": self.mode,
            "chunk_size": self.chunk_size,
            "max_payload": self.max_payload,
            "estimated_rows": self.estimated_rows,
            "conditions": self.conditions,
            "transaction_seconds": self.transaction_seconds,
            "statement_seconds": self.statement_seconds,
            "lock_seconds": LOCK_SECONDS,
            "start": segment.start,
            "end": segment.end,
            "after": segment.after,
            **more,
        }


def columns_body(columns: Columns) -> dict[str, Any]:
    return {
        "names": columns.names,
        "oids": columns.oids,
        "key": columns.key,
        "row_filter": columns.row_filter,
    }


async def _merge(
    readers: list[_Reader],
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
    on_range: Callable[[_Reader, dict[str, Any]], Awaitable[None]] | None = None,
    ledger: Ledger | None = None,
) -> None:
    """Publish the readers' chunks as they come (numbered in that order) until every reader
    is done; a reader's failure fails the read."""
    queue: asyncio.Queue[tuple[_Reader, bytes, bytes]] = asyncio.Queue(2 * len(readers))

    async def pump(reader: _Reader) -> None:
        while True:
            kind, payload = await reader.frame()
            await queue.put((reader, kind, payload))
            if kind in (b"D", b"S", b"E"):
                return

    pumps = [asyncio.ensure_future(pump(r)) for r in readers if not r.finished]
    try:
        left = len(pumps)
        while left:
            getting = asyncio.ensure_future(queue.get())
            failed = [p for p in pumps if p.done() and p.exception() is not None]
            if failed:
                getting.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            running = {p for p in pumps if not p.done()}
            await asyncio.wait({getting, *running}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                continue
            reader, kind, payload = getting.result()
            if kind == b"C":
                rows, entries = struct.unpack_from(">IB", payload)
                chunk = builder.adopt(entries, payload[5:], rows)
                if ledger is not None:
                    ledger.chunk(reader.index, chunk.index)
                await publish(chunk)
            elif kind == b"R":
                assert on_range is not None
                await on_range(reader, json.loads(payload))
            elif kind in (b"D", b"S"):  # done; stopped before the segment's end
                reader.finished = True
                if ledger is not None and kind == b"D":
                    ledger.finished[reader.index] = True
                left -= 1
            elif kind == b"E":
                raise _failure(payload)
            else:
                raise SnapshotError("internal", f"snapshot reader sent a {kind!r} frame")
    finally:
        for pump_task in pumps:
            pump_task.cancel()
        for pump_task in pumps:
            with contextlib.suppress(BaseException):
                await pump_task


async def read_exported_parallel(
    job: ParallelJob,
    snapshot_name: str,
    segments: list[Segment],
    locked: Callable[[], Awaitable[Columns]],
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
) -> None:
    """Every segment under the exported snapshot, once all readers hold the table's lock and
    `locked` (the storage check, the columns) passed. `LockBusy` or `Rewritten`: nothing was
    published, export again."""
    failpoints.hit("snapshot.before_readers")
    readers = [
        await _Reader.start(i, job.for_segment(s, snapshot=snapshot_name))
        for i, s in enumerate(segments)
    ]
    try:
        for reader in readers:
            kind, payload = await reader.frame()
            if kind == b"E":
                raise _failure(payload)
            if kind != b"L":
                raise SnapshotError("internal", f"snapshot reader sent {kind!r} before locking")
        columns = json.dumps({"columns": columns_body(await locked())}).encode()
        for reader in readers:
            await reader.send(columns)
        await _merge(readers, builder, publish)
    finally:
        for reader in readers:
            await reader.stop()


async def read_chunked_parallel(
    job: ParallelJob,
    columns: Columns,
    segments: list[Segment],
    ledger: Ledger,
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
    stop_requested: Callable[[], str | None],
) -> str | None:
    """Every unfinished segment in short transactions; after each range, its chunks stored and
    the progress recorded (`SegmentsDone` through `publish`), the reader goes on unless an
    operator asked to stop: then the action, once every reader stopped."""
    body = columns_body(columns)
    readers = [
        await _Reader.start(i, job.for_segment(s, columns=body))
        for i, s in enumerate(segments)
        if not s.done
    ]
    stopping: str | None = None

    async def on_range(reader: _Reader, done: dict[str, Any]) -> None:
        nonlocal stopping
        ledger.range_done(reader.index, [str(v) for v in done["after"]], int(done["rows"]))
        segments_now, cut, rows = ledger.record(builder.chunks)
        await publish(SegmentsDone(segments_now, cut, rows))
        stopping = stopping or stop_requested()
        await reader.send(b"stop" if stopping else b"go")

    try:
        await _merge(readers, builder, publish, on_range, ledger)
    finally:
        for reader in readers:
            await reader.stop()
    segments_now, cut, rows = ledger.record(builder.chunks)
    await publish(SegmentsDone(segments_now, cut, rows))
    return stopping if any(not s.done for s in segments_now) else None
