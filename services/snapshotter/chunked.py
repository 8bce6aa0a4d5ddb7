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

from pg_nats_bridge.contract import Condition
from services.snapshotter.chunks import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.conditions import bound, condition_sql
from services.snapshotter.copy_rows import CopyRowPacker
from services.snapshotter.table_read import Columns
from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.codec.copy_text import split_line
from shared.consistent_read import PINNED_SEARCH_PATH
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
class ChunkedRead:
    database_url: str
    table: sql.Identifier
    columns: Columns
    mode: ValueMode
    transaction_seconds: float
    canceller: QueryCanceller
    after: tuple[str, ...] | None = None  # where to start: after this key (a resumed read)
    statement_seconds: float = 20.0  # a range's lock wait and read end with an error past it
    operator: Operator = field(default_factory=Operator)
    conditions: tuple[Condition, ...] = ()  # a partial backfill's (conditions.py)
    # A parallel reader's key segment (services/snapshotter/parallel.py): from `start`
    # (inclusive) to `end` (exclusive); None, unbounded.
    start: tuple[str, ...] | None = None
    end: tuple[str, ...] | None = None
    transactions: int = 0
    longest_transaction: float = 0.0
    key_positions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key_positions = [self.columns.names.index(k) for k in self.columns.key]


def key_bounds(
    key: list[str],
    start: Sequence[str] | None,
    end: Sequence[str] | None,
    after: Sequence[str] | None = None,
) -> list[sql.Composable]:
    """`(key) > (after)` (or `>= (start)` before anything was read) and `(key) < (end)`, as
    literals PostgreSQL reads as the key columns' types: keys this snapshot read or sampled
    from the table, never a request's."""
    columns = sql.SQL(", ").join(map(sql.Identifier, key))

    def row(values: Sequence[str]) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Literal, values))

    bounds: list[sql.Composable] = []
    if after is not None:
        bounds.append(sql.SQL("({}) > ({})").format(columns, row(after)))
    elif start is not None:
        bounds.append(sql.SQL("({}) >= ({})").format(columns, row(start)))
    if end is not None:
        bounds.append(sql.SQL("({}) < ({})").format(columns, row(end)))
    return bounds


def range_query(read: ChunkedRead, after: tuple[str, ...] | None, limit: int) -> sql.Composed:
    """`COPY (SELECT … WHERE (<row filter>) AND (<key>) > (<after>) ORDER BY <key> LIMIT n)`.
    The row filter is the publication's, as shared/consistent_read.copy_query explains; a
    backfill's conditions and a parallel reader's segment join it."""
    columns = read.columns
    key = sql.SQL(", ").join(map(sql.Identifier, columns.key))
    conditions: list[sql.Composable] = []
    if columns.row_filter:
        conditions.append(sql.SQL("({})").format(sql.SQL(columns.row_filter)))  # type: ignore[arg-type]
    if read.conditions:
        conditions.append(condition_sql(read.table, read.conditions))
    conditions += key_bounds(columns.key, read.start, read.end, after)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    return sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, columns.names)),
        read.table,
        where,
        key,
        sql.Literal(limit),
    )


def read_chunked(
    read: ChunkedRead, builder: ChunkBuilder, emit: Callable[[Chunk | RangeDone], None]
) -> Lsn:
    """In a thread: every range of the table from `read.after` on, each in its own
    transaction, packed into chunks handed to `emit`, each range's last chunk followed by a
    `RangeDone` (a range ends its chunk, so that a resumed read starts a chunk of its own);
    returns `replay_until`, the WAL position once the last range was read (every change a
    range can hold committed before it)."""
    packer = CopyRowPacker(RowCodec(read.columns.names, read.columns.oids, read.mode))
    with (
        postgres.connect(read.database_url, autocommit=True) as conn,
        read.canceller.cancelling(lambda: conn.cancel_safe(timeout=5)),
        bound(conn, read.conditions),
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
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(read.table))
                conn.execute(PINNED_SEARCH_PATH)
                query = range_query(read, after, limit)
                for lines in postgres.copy_out_blocks(conn, query, _BLOCK_LINES):
                    for chunk in builder.add_many(packer.pack_block(lines), read.columns.key):
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
            after = tuple(_text(fields[i]) for i in read.key_positions)
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
