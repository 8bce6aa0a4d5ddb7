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
import dataclasses
import logging
import sys
from collections.abc import Awaitable, Callable

from pg_nats_bridge.contract import KeySegment
from services.snapshotter.chunk_packing import Chunk, ChunkBuilder
from services.snapshotter.errors import SnapshotError
from services.snapshotter.ledger import Ledger, SegmentsDone
from services.snapshotter.reader_protocol import (
    GO,
    HEADER,
    STOP,
    Frame,
    ReaderJob,
    chunk_parts,
    failure_parts,
    plan_line,
    range_parts,
    read_header,
)
from services.snapshotter.segments import LockBusy, Segment
from services.snapshotter.table_plan import TablePlan
from shared import failpoints

log = logging.getLogger(__name__)


class _Reader:
    """One reader process and its pipes."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.finished = False

    @classmethod
    async def start(cls, index: int, job: ReaderJob) -> _Reader:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.snapshotter.reader",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        reader = cls(index, process)
        await reader.send(job.encode())
        return reader

    async def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        await self.process.stdin.drain()

    async def frame(self) -> tuple[Frame, bytes]:
        assert self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
        except asyncio.IncompleteReadError:
            code = await self.process.wait()
            raise SnapshotError(
                "internal", f"snapshot reader {self.index} ended without a word (exit {code})"
            ) from None
        try:
            kind, size = read_header(header)
        except ValueError:
            raise SnapshotError(
                "internal", f"snapshot reader {self.index} sent a {header[:1]!r} frame"
            ) from None
        return kind, await self.process.stdout.readexactly(size)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


def _failure(payload: bytes) -> Exception:
    reason, error = failure_parts(payload)
    if reason == "lock_timeout":
        return LockBusy(error)
    return SnapshotError(reason, error)


def reader_job(template: ReaderJob, segment: KeySegment) -> ReaderJob:
    return dataclasses.replace(template, segment=segment)


async def _merge(
    readers: list[_Reader],
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
    on_range: Callable[[_Reader, list[str], int], Awaitable[None]] | None = None,
    ledger: Ledger | None = None,
) -> None:
    """Publish the readers' chunks as they come (numbered in that order) until every reader
    is done; a reader's failure fails the read."""
    queue: asyncio.Queue[tuple[_Reader, Frame, bytes]] = asyncio.Queue(2 * len(readers))

    async def pump(reader: _Reader) -> None:
        while True:
            kind, payload = await reader.frame()
            await queue.put((reader, kind, payload))
            if kind in (Frame.DONE, Frame.STOPPED, Frame.FAILED):
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
            if kind is Frame.CHUNK:
                chunk = builder.adopt(*chunk_parts(payload))
                if ledger is not None:
                    ledger.chunk(reader.index, chunk.index)
                await publish(chunk)
            elif kind is Frame.RANGE_DONE and on_range is not None:
                await on_range(reader, *range_parts(payload))
            elif kind in (Frame.DONE, Frame.STOPPED):  # stopped: before the segment's end
                reader.finished = True
                if ledger is not None and kind is Frame.DONE:
                    ledger.finished[reader.index] = True
                left -= 1
            elif kind is Frame.FAILED:
                raise _failure(payload)
            else:
                raise SnapshotError("internal", f"snapshot reader sent a {kind.name} frame")
    finally:
        for pump_task in pumps:
            pump_task.cancel()
        for pump_task in pumps:
            with contextlib.suppress(BaseException):
                await pump_task


async def read_exported_parallel(
    template: ReaderJob,
    segments: list[Segment],
    locked: Callable[[], Awaitable[TablePlan]],
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
) -> None:
    """Every segment under the exported snapshot (`template.snapshot`), once all readers hold
    the table's lock and `locked` (the storage check, the plan as the snapshot sees the table)
    passed. `LockBusy` or `Rewritten`: nothing was published, export again."""
    failpoints.hit("snapshot.before_readers")
    readers = [await _Reader.start(i, reader_job(template, s)) for i, s in enumerate(segments)]
    try:
        for reader in readers:
            kind, payload = await reader.frame()
            if kind is Frame.FAILED:
                raise _failure(payload)
            if kind is not Frame.LOCKED:
                raise SnapshotError("internal", f"snapshot reader sent {kind.name} before locking")
        go = plan_line(await locked())
        for reader in readers:
            await reader.send(go)
        await _merge(readers, builder, publish)
    finally:
        for reader in readers:
            await reader.stop()


async def read_ranges_parallel(
    template: ReaderJob,
    ledger: Ledger,
    builder: ChunkBuilder,
    publish: Callable[[Chunk | SegmentsDone], Awaitable[None]],
    stop_requested: Callable[[], str | None],
) -> str | None:
    """Every unfinished segment of the ledger in short transactions (`template.plan`); after
    each range, its chunks stored and the progress recorded (`SegmentsDone` through
    `publish`), the reader goes on unless an operator asked to stop: then the action, once
    every reader stopped."""
    readers = [
        await _Reader.start(i, reader_job(template, s))
        for i, s in enumerate(ledger.segments)
        if not s.done
    ]
    stopping: str | None = None

    async def on_range(reader: _Reader, after: list[str], rows: int) -> None:
        nonlocal stopping
        ledger.range_done(reader.index, after, rows)
        segments_now, cut, rows_below = ledger.record(builder.chunks)
        await publish(SegmentsDone(segments_now, cut, rows_below))
        stopping = stopping or stop_requested()
        await reader.send(STOP if stopping else GO)

    try:
        await _merge(readers, builder, publish, on_range, ledger)
    finally:
        for reader in readers:
            await reader.stop()
    segments_now, cut, rows = ledger.record(builder.chunks)
    await publish(SegmentsDone(segments_now, cut, rows))
    return stopping if any(not s.done for s in segments_now) else None
