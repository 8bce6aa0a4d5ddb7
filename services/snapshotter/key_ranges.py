"""A chunked snapshot: the table read in primary-key order, each range in its own short
transaction, so that no transaction (and no xmin horizon) is held for the whole read.

The rows of such a snapshot are not one point in time, and need not be (docs/wire-format.md,
"Chunked snapshots"): a temporary slot's consistent point `lsn`, taken first and dropped at
once, is a moment every range is read after, so every change committed before it is in every
range; the CDC stream holds every change from it on. A consumer loads the chunks and replays
the changes from `lsn` idempotently up to `replay_until`, an LSN past the last range's read,
after which no change can be in any chunk; from there on CDC applies as usual.

Each range's transaction is REPEATABLE READ and takes ACCESS SHARE on the table before its
snapshot (the lock comes first, the snapshot with the first query): a TRUNCATE or rewriting
ALTER TABLE committed between two ranges cannot make a range read empty, it is either seen or
waited for. How many rows a transaction reads adapts to the rate so far so that it lasts about
`transaction_seconds`; the next range starts after the last key read, passed back as the text
COPY gave it (PostgreSQL parses it as the key column's type: no type name is written into the
query).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from services.snapshotter.chunk_packing import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.conditions import bound
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.errors import SnapshotError
from services.snapshotter.table_plan import TablePlan
from shared import postgres
from shared.codec.copy_text import split_line
from shared.consistent_read import PINNED_SEARCH_PATH, SHAPE_QUERY
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller

log = logging.getLogger(__name__)

# Past every change a range can hold: the WAL written so far (replayed so far, on a standby).
END_QUERY = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_insert_lsn() END)::text"
)

FIRST_RANGE_ROWS = 1_000
MAX_RANGE_ROWS = 1_000_000
_BLOCK_LINES = 256


class Interrupted(Exception):
    """An operator paused or cancelled the snapshot: its reader stopped after a range."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


@dataclass
class Operator:
    """What an operator asked of a running chunked snapshot (`pause` or `cancel`), set from
    the event loop, seen by the reader at the end of its range."""

    action: str | None = None


@dataclass
class KeyRangeRead:
    """One reader's ranges: of the whole table, or of a parallel reader's key segment
    (services/snapshotter/parallel.py) from `start` (inclusive) to `end` (exclusive)."""

    database_url: str
    plan: TablePlan
    transaction_seconds: float
    canceller: QueryCanceller
    after: Sequence[str] | None = None  # where to start: after this key (a resumed read)
    statement_seconds: float = 20.0  # a range's lock wait and read end with an error past it
    operator: Operator = field(default_factory=Operator)
    start: Sequence[str] | None = None
    end: Sequence[str] | None = None
    transactions: int = 0
    longest_transaction: float = 0.0


def read_key_ranges(
    read: KeyRangeRead, builder: ChunkBuilder, emit: Callable[[Chunk | RangeDone], None]
) -> Lsn:
    """In a thread: every range of the table from `read.after` on, each in its own
    transaction, packed into chunks handed to `emit`, each range's last chunk followed by a
    `RangeDone` (a range ends its chunk, so that a resumed read starts a chunk of its own);
    returns `replay_until`, the WAL position once the last range was read (every change a
    range can hold committed before it)."""
    plan = read.plan
    packer = CopyRowPacker(plan.codec())
    key_positions = plan.key_positions()
    with (
        postgres.connect(read.database_url, autocommit=True) as conn,
        read.canceller.cancelling(lambda: conn.cancel_safe(timeout=5)),
        bound(conn, plan.conditions),
    ):
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        after = read.after
        limit = FIRST_RANGE_ROWS
        while True:
            started = time.monotonic()
            last: bytes | None = None
            count = 0
            with conn.transaction():
                # Bounded, so that a live reader records its progress well within the time
                # after which another snapshotter takes its snapshot over (resume.py).
                limit_ms = sql.Literal(f"{int(read.statement_seconds * 1000)}ms")
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(limit_ms))
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(limit_ms))
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(plan.identifier))
                if plan.shape is not None:
                    regclass = plan.identifier.as_string(conn)
                    (now,) = conn.execute(SHAPE_QUERY, {"table": regclass}).fetchone() or ("",)
                    if now != plan.shape:
                        raise SnapshotError(
                            "table_rewritten",
                            f"{plan.what} was altered while its chunked snapshot was read "
                            f"({builder.row_count} rows read): an ALTER TABLE changed its "
                            "columns, key or storage, so its rows would not all have one "
                            "shape; ask again for a new snapshot",
                        )
                conn.execute(PINNED_SEARCH_PATH)
                query = plan.copy_query(read.start, read.end, after, limit)
                for lines in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
                    for chunk in builder.add_many(packer.pack_block(lines), plan.key):
                        emit(chunk)
                    count += len(lines)
                    last = lines[-1]
            seconds = time.monotonic() - started
            read.transactions += 1
            read.longest_transaction = max(read.longest_transaction, seconds)
            if last is None:
                break
            rest = builder.finish()
            if rest is not None:
                emit(rest)
            fields = split_line(last)
            after = tuple(_text(fields[i]) for i in key_positions)
            emit(RangeDone(after, builder.chunks, builder.row_count))
            if count < limit:
                break
            if read.operator.action is not None:
                raise Interrupted(read.operator.action)
            # About `transaction_seconds` at the rate of this one (at most doubling or halving).
            wanted = count * read.transaction_seconds / max(seconds, 1e-3)
            limit = int(min(MAX_RANGE_ROWS, max(limit // 2, min(wanted, limit * 2), 1)))
        with conn.transaction():
            (end,) = conn.execute(END_QUERY).fetchone() or ("",)
    return Lsn.parse(end)


def _text(value: bytes | None) -> str:
    if value is None:  # a primary key column is never NULL
        raise ValueError("a primary key value is NULL")
    return value.decode()
