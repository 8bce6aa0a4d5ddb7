"""What a snapshot is read with: the snapshotter's setup (`SnapshotContext`, the same for all
its snapshots), a request's options (`SnapshotOptions`), and one running snapshot of one table
(`TableSnapshot`) that the two reads (exported_read.py, ranged_read.py) are handed whole."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from pg_nats_bridge import contract
from pg_nats_bridge.contract import Condition, KeySegment, SchemaDocument
from services.snapshotter.chunk_packing import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.key_ranges import Operator
from services.snapshotter.ledger import SegmentsDone
from services.snapshotter.reader_protocol import ReaderJob
from services.snapshotter.segments import LOCK_SECONDS
from services.snapshotter.table_plan import TablePlan
from shared.codec import ValueMode

log = logging.getLogger(__name__)

# Publishes a table's schema document (a connection, the schema, the table).
SchemaPublisher = Callable[[Any, str, str], Awaitable[None]]

# What a read hands the publisher: a chunk, or a point to record (chunked mode).
Piece = Chunk | RangeDone | SegmentsDone


@dataclass(frozen=True)
class SnapshotContext:
    """Where a snapshotter reads and publishes, the same for every snapshot it takes."""

    database_url: str
    publication: str
    value_mode: ValueMode
    max_payload: int
    prefix: str = contract.INIT
    primary_url: str | None = None  # on a standby: the primary, asked to hurry slot waits
    init_stream: str = contract.INIT_STREAM
    js: JetStreamContext | None = None  # chunked snapshots keep their records there
    owner: str = ""  # this snapshotter process, in its records
    # The table's schema document published now, before the meta (SchemaWatcher.publish_now)
    publish_schema: SchemaPublisher | None = None


@dataclass(frozen=True)
class SnapshotOptions:
    chunk_size: int
    mode: str = "exported"  # or "chunked" (services/snapshotter/ranged_read.py)
    transaction_seconds: float = 1.0  # chunked: how long one reading transaction lasts
    takeover_seconds: float = 60.0  # chunked: a record older than this is a dead reader's
    fresh: bool = False  # chunked: start anew rather than continue an unfinished one
    # A partial backfill: only rows matching these (services/snapshotter/conditions.py). Its
    # meta goes to its own subject, and a chunked one is not recorded for resuming.
    where: tuple[Condition, ...] = ()
    readers: int = 1  # reader processes, each a key segment (services/snapshotter/parallel.py)
    rows_per_reader: int = 500_000  # the fewest rows worth another reader

    @property
    def statement_seconds(self) -> float:
        """Chunked: a range's lock wait and read end with an error past this, so that a live
        reader records its progress well within `takeover_seconds`."""
        return min(20.0, self.takeover_seconds / 3)


@dataclass
class TableSnapshot:
    """One snapshot of one table being read: the plan it was described with, the chunks
    built so far, and where they go."""

    context: SnapshotContext
    options: SnapshotOptions
    plan: TablePlan
    builder: ChunkBuilder
    publish: Callable[[Piece], Awaitable[None]]
    operator: Operator
    # The table as the snapshot's rows have it (the meta's `schema_document`), once read.
    document: SchemaDocument | None = None

    def reader_job(self, snapshot: str | None = None, plan: TablePlan | None = None) -> ReaderJob:
        """What its reader processes are told (services/snapshotter/parallel.py), each given
        its segment."""
        return ReaderJob(
            dsn=self.context.database_url,
            schema=self.plan.schema,
            table=self.plan.table,
            segment=KeySegment(),
            chunk_size=self.options.chunk_size,
            max_payload=self.context.max_payload,
            estimated_rows=self.builder.estimated_rows,
            snapshot=snapshot,
            plan=plan,
            lock_seconds=LOCK_SECONDS,
            transaction_seconds=self.options.transaction_seconds,
            statement_seconds=self.options.statement_seconds,
        )

    def locked_out(self) -> None:
        log.warning(
            "a parallel snapshot of %s waited %g s for the table's lock: an ALTER TABLE or "
            "TRUNCATE is queued behind another transaction's lock (each reader locks the "
            "table); trying again once the readers let go",
            self.plan.what,
            LOCK_SECONDS,
        )
