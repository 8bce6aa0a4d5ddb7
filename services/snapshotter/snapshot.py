"""One consistent snapshot of one table, published in chunks to the INIT stream.

Consistency: a temporary logical slot created with `SNAPSHOT 'export'` gives a consistent
point (an LSN) and a snapshot name; the table is read in a REPEATABLE READ transaction that
adopts that snapshot (`SET TRANSACTION SNAPSHOT`). The rows are then exactly those of the
transactions that committed before the consistent point, which is the `lsn` of the meta
message: a consumer applies CDC events whose `commit_lsn` ≥ `lsn` on top. The slot is
temporary, so it disappears with its connection, also when the snapshotter is killed.

Except for TRUNCATE and a rewriting ALTER TABLE, which are not MVCC-safe: committed after the
export, they make the snapshot read the table empty, and a rewrite sends no CDC event that
would bring the rows back (the consumer would lose them all). So the transaction that reads
the table first locks it (ACCESS SHARE, which both wait for), then its storage
(`consistent_read.STORAGE_QUERY`) is compared with what it was before the export: if it
changed, one of them came in between, and the snapshot is exported anew. The reading
transaction takes the lock itself: held by another one, a TRUNCATE or ALTER TABLE queued
behind that lock queues the COPY's own lock request behind it in turn, and the three wait on
one another for good (and every other query on the table waits behind the ALTER).

The jobs, each in its module: the request's handling (app.py, requests.py), the consistent
read (shared/consistent_read.py), the table read in a thread (table_read.py), the chunks
(chunks.py), their publishing with many PubAcks outstanding (publishing.py); here, one
snapshot from export to meta, which goes out once JetStream stored every chunk.

Memory: rows stream from the server; a few chunks are held at most (the queue between the
reader thread and the publisher, and the chunks awaiting their PubAck).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from nats.js import JetStreamContext
from psycopg import sql

from pg_nats_bridge import contract
from pg_nats_bridge.contract import Condition
from services.snapshotter.chunked import (
    END_QUERY,
    ChunkedRead,
    Interrupted,
    Operator,
    read_chunked,
)
from services.snapshotter.chunks import Chunk, ChunkBuilder, RangeDone
from services.snapshotter.conditions import checked, validate
from services.snapshotter.errors import SnapshotError
from services.snapshotter.parallel import (
    LOCK_SECONDS,
    Ledger,
    LockBusy,
    ParallelJob,
    Segment,
    SegmentsDone,
    plan_segments,
    read_chunked_parallel,
    read_exported_parallel,
)
from services.snapshotter.progress import SnapshotProgress, estimate_rows
from services.snapshotter.publishing import PipelinedPublisher, PublishFailed
from services.snapshotter.resume import (
    ChunkedProgress,
    Recorder,
    last_progress,
    remove_unrecorded_chunks,
)
from services.snapshotter.table_read import (
    Columns,
    Rewritten,
    TableRead,
    publish_chunks,
    read_table,
)
from shared import failpoints, postgres
from shared.codec import ValueMode
from shared.consistent_read import (
    describe_table,
    export_snapshot,
    storage_async,
)
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller, run_cancellable
from shared.postgres import ReplicationConnection
from shared.published import unpublished
from shared.wire import pack

log = logging.getLogger(__name__)

# What a read hands the publisher: a chunk, or a point to record (chunked mode).
Piece = Chunk | RangeDone | SegmentsDone

# Exports tried before a table that keeps being truncated or rewritten fails the request.
_ATTEMPTS = 5


@dataclass(frozen=True)
class SnapshotOptions:
    chunk_size: int
    mode: str = "exported"  # or "chunked" (services/snapshotter/chunked.py)
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


def new_snapshot_id() -> str:
    """`snap-<unix time>-<random>`: ordered by time, unique within a second."""
    return f"snap-{int(time.time())}-{secrets.token_hex(3)}"


async def take_snapshot(
    database_url: str,
    schema: str,
    table: str,
    options: SnapshotOptions,
    publisher: PipelinedPublisher,
    max_payload: int,
    mode: ValueMode,
    publication: str,
    prefix: str = "init",
    on_rows: Callable[[int], None] = lambda n: None,
    primary_url: str | None = None,
    progress: SnapshotProgress | None = None,
    js: JetStreamContext | None = None,
    init_stream: str = contract.INIT_STREAM,
    owner: str = "",
    operator: Operator | None = None,
) -> dict[str, Any]:
    """Publish the snapshot's chunks, then, once JetStream stored them all, its meta; return
    the meta. A chunked one (with `js`) records its progress after every range and continues
    an unfinished one a dead reader left (services/snapshotter/resume.py)."""
    started = time.monotonic()
    progress = progress or SnapshotProgress(f"{schema}.{table}")
    builder = ChunkBuilder(options.chunk_size, max_payload)
    chunked: _Chunked | None = None
    if options.mode == "chunked" and js is not None and not options.where:
        chunked = await _Chunked.begin(
            js, init_stream, prefix, schema, table, owner, options, builder, progress
        )
    snapshot_id = chunked.snapshot_id if chunked else new_snapshot_id()

    async def publish(chunk: Piece) -> None:
        if isinstance(chunk, RangeDone | SegmentsDone):
            if chunked is not None:
                await publisher.wait_acked()  # its chunks are stored before it is recorded
                await chunked.record(chunk)
            return
        subject = contract.snapshot_chunk_subject(schema, table, snapshot_id, chunk.index, prefix)
        msg_id = contract.snapshot_msg_id(snapshot_id, schema, table, chunk.index)
        if chunked is not None and chunked.previous is not None:
            # JetStream remembers the Msg-Ids of the dead reader's unrecorded chunks (removed,
            # but within the duplicate window): the same number read again needs another.
            msg_id += f":{chunked.attempt}"
        await publisher.publish(subject, chunk.payload, msg_id)
        on_rows(chunk.rows)
        progress.add(chunk.rows)
        failpoints.hit("snapshot.after_chunk")

    extra: dict[str, Any] = {}
    try:
        async with await postgres.connect_async(database_url, autocommit=True) as catalog:
            if await unpublished(catalog, schema, table, publication):
                raise SnapshotError(
                    "not_published",
                    f"publication {publication} does not publish {schema}.{table}, so no change "
                    "of it would follow the snapshot (the replicator refused it: its log and "
                    "/health say why)",
                )
            if options.where:
                await _check_conditions(catalog, schema, table, publication, options.where)
            else:  # a backfill's rows are a part, of unknown size
                progress.estimated(await estimate_rows(catalog, schema, table))
                builder.estimated_rows = progress.estimated_rows
            job = None
            if options.readers > 1:
                job = _job(
                    database_url, schema, table, mode, options, max_payload,
                    progress.estimated_rows,
                )  # fmt: skip
            if options.mode == "chunked":
                lsn, extra = await read_chunked_snapshot(
                    catalog, database_url, schema, table, publication, mode, options,
                    builder, publish, primary_url, chunked, operator or Operator(), job,
                )  # fmt: skip
            else:
                lsn = await _export_and_read(
                    catalog, database_url, schema, table, publication, mode, builder,
                    publish, primary_url, options.where, job,
                )  # fmt: skip
            await publisher.wait_acked()
    except BaseException as exc:
        if isinstance(exc, Interrupted) and chunked is not None:
            done = "paused" if exc.action == "pause" else "cancelled"
            await chunked.mark(done)
            raise SnapshotError(
                done,
                f"the chunked snapshot {snapshot_id} of {schema}.{table} was {done} by an "
                f"operator after {builder.row_count} rows"
                + ("; resume it to go on" if done == "paused" else ""),
            ) from None
        if chunked is not None and not isinstance(exc, asyncio.CancelledError):
            await chunked.stop()
        if isinstance(exc, psycopg.OperationalError | psycopg.errors.QueryCanceled):
            raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
        if isinstance(exc, PublishFailed):
            raise SnapshotError(exc.reason, str(exc)) from exc
        raise
    meta = {
        "batch_count": builder.chunks,
        "lsn": str(lsn),
        "row_count": builder.row_count,
        "snapshot_id": snapshot_id,
        "table": table,
        "schema": schema,
        "timestamp": int(time.time()),
        **extra,
    }
    if options.where:
        meta["partial"] = True
        meta["where"] = [c.model_dump() for c in options.where]
    contract.SnapshotMeta.model_validate(meta)  # what is published is what the contract says
    meta_subject = (
        contract.backfill_meta_subject if options.where else contract.snapshot_meta_subject
    )
    try:
        await publisher.publish(
            meta_subject(schema, table, prefix),
            pack(meta),
            contract.meta_msg_id(snapshot_id),
        )
        await publisher.wait_acked()
    except PublishFailed as exc:
        if chunked is not None:
            await chunked.stop()  # every range is recorded: the next request publishes the meta
        raise SnapshotError(exc.reason, str(exc)) from exc
    if chunked is not None:
        await chunked.finish()
    log.info(
        "snapshot %s of %s.%s: %d rows in %d chunks at %s (%.1f s)",
        snapshot_id,
        schema,
        table,
        builder.row_count,
        builder.chunks,
        lsn,
        time.monotonic() - started,
    )
    return meta


def _locked_out(schema: str, table: str) -> None:
    log.warning(
        "a parallel snapshot of %s.%s waited %g s for the table's lock: an ALTER TABLE or "
        "TRUNCATE is queued behind another transaction's lock (each reader locks the table); "
        "trying again once the readers let go",
        schema,
        table,
        LOCK_SECONDS,
    )


def _job(
    database_url: str,
    schema: str,
    table: str,
    mode: ValueMode,
    options: SnapshotOptions,
    max_payload: int,
    estimated_rows: int | None,
) -> ParallelJob:
    """What the reader processes of this snapshot are told (services/snapshotter/parallel.py)."""
    return ParallelJob(
        dsn=database_url,
        table=(schema, table),
        mode=str(mode),
        chunk_size=options.chunk_size,
        max_payload=max_payload,
        estimated_rows=estimated_rows,
        readers=options.readers,
        rows_per_reader=options.rows_per_reader,
        conditions=[c.model_dump() for c in options.where],
        transaction_seconds=options.transaction_seconds,
        statement_seconds=options.statement_seconds,
    )


async def _export(
    database_url: str, what: str, primary_url: str | None, canceller: QueryCanceller
) -> tuple[ReplicationConnection, Lsn, str]:
    """A temporary slot with an exported snapshot (shared/consistent_read.py), in a thread
    that `canceller` can stop; a failure is PostgreSQL's."""
    export = functools.partial(
        export_snapshot, database_url, f"bridge_snap_{secrets.token_hex(6)}",
        canceller=canceller, what=what, primary_url=primary_url,
    )  # fmt: skip
    try:
        return await run_cancellable(export, canceller)
    except Exception as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc


async def _export_and_read(
    catalog: psycopg.AsyncConnection[Any],
    database_url: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    builder: ChunkBuilder,
    publish: Callable[[Piece], Awaitable[None]],
    primary_url: str | None,
    conditions: tuple[Condition, ...] = (),
    job: ParallelJob | None = None,
) -> Lsn:
    """Export a snapshot and read the table under it (again while a TRUNCATE or rewrite came
    in between); the snapshot's consistent point. With `job`, by reader processes when the
    table is large enough to cut into segments."""
    regclass = sql.Identifier(schema, table).as_string(catalog)
    segments: list[Segment] = []
    lock_waits = 0
    for _ in range(_ATTEMPTS):
        if job is not None:
            _, _, key, _ = await describe_table(catalog, schema, table, publication)
            try:
                segments = await plan_segments(
                    catalog, sql.Identifier(schema, table), key, job.readers,
                    job.estimated_rows, job.rows_per_reader,
                )  # fmt: skip
            except LockBusy:
                lock_waits += 1
                _locked_out(schema, table)
                await asyncio.sleep(1)
                continue
        before = await storage_async(catalog, regclass)
        canceller = QueryCanceller()
        repl, lsn, snapshot_name = await _export(
            database_url, f"the snapshot of {schema}.{table}", primary_url, canceller
        )

        async def unchanged(before: list[Any] = before) -> bool:
            return await storage_async(catalog, regclass) == before

        try:
            if segments and job is not None:
                if await _read_exported_parallel(
                    job, snapshot_name, schema, table, publication, unchanged, segments,
                    builder, publish,
                ):  # fmt: skip
                    return lsn
            elif await _read_exported(
                database_url, snapshot_name, schema, table, publication, mode, unchanged,
                builder, publish, canceller, conditions,
            ):  # fmt: skip
                return lsn
        except LockBusy:
            lock_waits += 1
            _locked_out(schema, table)
            await asyncio.sleep(1)
            continue
        finally:
            await asyncio.to_thread(repl.close)  # drops the temporary slot
        log.info(
            "%s.%s was truncated or rewritten after the snapshot was exported (it would read "
            "empty); exporting another",
            schema,
            table,
        )
    what = "truncated or rewritten"
    if lock_waits:
        what += (
            f", or could not be locked ({lock_waits} times: an ALTER TABLE or TRUNCATE waits "
            "behind a long transaction, see pg_locks),"
        )
    raise SnapshotError(
        "table_rewritten",
        f"{schema}.{table} was {what} during each of {_ATTEMPTS} attempts to snapshot it; ask "
        "again once that stops",
    )


async def read_chunked_snapshot(
    catalog: psycopg.AsyncConnection[Any],
    database_url: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    options: SnapshotOptions,
    builder: ChunkBuilder,
    publish: Callable[[Piece], Awaitable[None]],
    primary_url: str | None,
    chunked: _Chunked | None = None,
    operator: Operator | None = None,
    job: ParallelJob | None = None,
) -> tuple[Lsn, dict[str, Any]]:
    """A chunked snapshot (services/snapshotter/chunked.py): the consistent point of a
    temporary slot dropped at once (or the one of the snapshot it continues), then the ranges;
    that point, and the meta's own fields."""
    columns = Columns(*await describe_table(catalog, schema, table, publication))
    if not columns.key or not set(columns.key) <= set(columns.names):
        raise SnapshotError(
            "no_primary_key",
            f"{schema}.{table} has no primary key{'' if not columns.key else ' published'}: a "
            "chunked snapshot reads it in primary-key ranges. Ask for the default mode (one "
            "exported snapshot), or give the table a primary key",
        )
    canceller = QueryCanceller()
    if chunked is not None and chunked.previous is not None:
        lsn = Lsn.parse(chunked.previous.lsn)
    else:
        repl, lsn, snapshot_name = await _export(
            database_url, f"the chunked snapshot of {schema}.{table}", primary_url, canceller
        )
        try:
            exported = await _snapshot_text(database_url, snapshot_name)
        finally:
            await asyncio.to_thread(repl.close)  # only its consistent point was wanted
        await _until_visible(catalog, exported, f"{schema}.{table}")
    if chunked is not None:
        await chunked.claim(str(lsn))
    previous = chunked.previous if chunked is not None else None
    operator = operator or Operator()
    segments = await _chunked_segments(catalog, schema, table, columns, job, previous)
    if segments:
        if job is None:  # a continued one, read as it was cut whatever the setting is now
            job = _job(
                database_url, schema, table, mode, options, builder.limit + 1024,
                builder.estimated_rows,
            )  # fmt: skip
        ledger = Ledger(segments, builder.chunks, builder.row_count)
        stopped = await read_chunked_parallel(
            job, columns, segments, ledger, builder, publish, lambda: operator.action
        )
        if stopped is not None:
            raise Interrupted(stopped)
        cur = await catalog.execute(END_QUERY)
        (end,) = await cur.fetchone() or ("",)
        until = Lsn.parse(end)
        log.info(
            "chunked snapshot of %s.%s: %d rows by %d readers",
            schema, table, builder.row_count, len(segments),
        )  # fmt: skip
    else:
        read = ChunkedRead(
            database_url,
            sql.Identifier(schema, table),
            columns,
            mode,
            options.transaction_seconds,
            canceller,
            after=previous.after if previous is not None else None,
            statement_seconds=options.statement_seconds,
            operator=operator,
            conditions=options.where,
        )
        reading = functools.partial(read_chunked, read)
        until = await publish_chunks(reading, canceller, builder, publish)
        log.info(
            "chunked snapshot of %s.%s: %d rows in %d transactions, the longest %.2f s",
            schema,
            table,
            builder.row_count,
            read.transactions,
            read.longest_transaction,
        )
    extra: dict[str, Any] = {"mode": "chunked", "replay_until": str(max(until, lsn))}
    if previous is not None:
        extra["resumed"] = True
    if chunked is not None:
        extra["started"] = chunked.started
    return lsn, extra


async def _chunked_segments(
    catalog: psycopg.AsyncConnection[Any],
    schema: str,
    table: str,
    columns: Columns,
    job: ParallelJob | None,
    previous: ChunkedProgress | None,
) -> list[Segment]:
    """The segments a chunked snapshot's reader processes read: a continued one's as they
    were cut, a new one's from a sample of the key when readers are asked for; [] for one
    reader in this process."""
    if previous is not None:
        return list(previous.segments or ())
    if job is None:
        return []
    try:
        return await plan_segments(
            catalog, sql.Identifier(schema, table), columns.key, job.readers,
            job.estimated_rows, job.rows_per_reader,
        )  # fmt: skip
    except LockBusy:  # one reader, whose every range waits a bounded time for its lock
        _locked_out(schema, table)
        return []


async def _check_conditions(
    catalog: psycopg.AsyncConnection[Any],
    schema: str,
    table: str,
    publication: str,
    conditions: tuple[Condition, ...],
) -> None:
    """A backfill's conditions name published columns and values their types take."""
    names, _, _, _ = await describe_table(catalog, schema, table, publication)
    what = f"{schema}.{table}"
    checked(conditions, names, what)
    await validate(catalog, sql.Identifier(schema, table), conditions, what)


@contextlib.asynccontextmanager
async def _adopted(
    database_url: str, snapshot_name: str
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection in a read-only REPEATABLE READ transaction that adopted the exported
    snapshot."""
    async with await postgres.connect_async(database_url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
            )
            yield conn


async def _snapshot_text(database_url: str, snapshot_name: str) -> str:
    """The exported snapshot as `pg_snapshot` text (xmin:xmax:xip): what `lsn` holds."""
    async with _adopted(database_url, snapshot_name) as conn:
        cur = await conn.execute("SELECT pg_current_snapshot()::text")
        (text,) = await cur.fetchone() or ("",)
    return str(text)


# Transactions the exported snapshot sees (their commits were decoded before `lsn`, so
# consumers skip their events) that a snapshot taken now does not: still in the procarray,
# waiting for a synchronous standby's answer, say. They are among the running ones now, or
# at or above now's xmax (the xids up to the exported snapshot's xmax).
_SEEN_BEFORE_VISIBLE = """
WITH now AS (SELECT pg_current_snapshot() AS s)
SELECT count(*) FROM (
    SELECT pg_snapshot_xip(now.s) AS x FROM now
    UNION
    SELECT (pg_snapshot_xmax(now.s)::text::numeric + g)::text::xid8 FROM now,
        generate_series(0, pg_snapshot_xmax(%(exported)s::pg_snapshot)::text::numeric
            - pg_snapshot_xmax(now.s)::text::numeric - 1) AS g
) AS candidates
WHERE pg_visible_in_snapshot(x, %(exported)s::pg_snapshot)
"""


async def _until_visible(catalog: psycopg.AsyncConnection[Any], exported: str, what: str) -> None:
    """Before the first range: until every transaction the consistent point counts as
    committed is visible to a new snapshot (checked twice in a row, 50 ms apart); else a
    range would miss its rows while consumers skip its changes."""
    clear, started, next_log = 0, time.monotonic(), 5.0
    while clear < 2:
        cur = await catalog.execute(_SEEN_BEFORE_VISIBLE, {"exported": exported})
        (hidden,) = await cur.fetchone() or (0,)
        clear = clear + 1 if not hidden else 0
        if hidden and time.monotonic() - started >= next_log:
            next_log += 30
            log.warning(
                "the chunked snapshot of %s waits for %d committed transaction(s) to become "
                "visible (a synchronous standby's answer?)",
                what,
                hidden,
            )
        await asyncio.sleep(0.05)


class _Chunked:
    """A chunked snapshot's records (services/snapshotter/resume.py): a new one, or the
    unfinished one of a dead reader, continued."""

    def __init__(
        self,
        recorder: Recorder,
        previous: ChunkedProgress | None,
        owner: str,
        progress: SnapshotProgress,
        takeover_seconds: float,
    ) -> None:
        self.recorder, self.previous, self.owner = recorder, previous, owner
        self.takeover_seconds = takeover_seconds
        self.snapshot_id = previous.snapshot_id if previous else new_snapshot_id()
        self.started = previous.started if previous else int(time.time())
        self.progress = progress
        self.lsn = previous.lsn if previous else ""
        # Read through (the key, the next chunk's number, the rows): a record's fields.
        self.after = previous.after if previous else None
        self.next_chunk = previous.next_chunk if previous else 0
        self.row_count = previous.row_count if previous else 0
        self.segments = previous.segments if previous else None
        self.attempt = f"r{secrets.token_hex(3)}"  # this continuation's, in its chunks' Msg-Ids

    @classmethod
    async def begin(
        cls,
        js: JetStreamContext,
        stream: str,
        prefix: str,
        schema: str,
        table: str,
        owner: str,
        options: SnapshotOptions,
        builder: ChunkBuilder,
        progress: SnapshotProgress,
    ) -> _Chunked:
        token = contract.table_token(schema, table)
        found, seq = await last_progress(js, stream, token, prefix)
        previous = None
        if found is not None and found.state == "paused" and not options.fresh:
            raise SnapshotError(
                "paused",
                f"the chunked snapshot {found.snapshot_id} of {schema}.{table} is paused by an "
                f"operator ({found.row_count} rows read): resume it, or ask with "
                '{"fresh": true} for a new one',
            )
        if found is not None and found.state in ("running", "stopped") and not options.fresh:
            if found.state == "running" and found.age() < options.takeover_seconds:
                raise SnapshotError(
                    "busy",
                    f"a chunked snapshot of {schema}.{table} ({found.snapshot_id}) is being "
                    f"read by another snapshotter (its last record is {found.age():.0f} s "
                    "old); ask again",
                )
            previous = found
            removed = await remove_unrecorded_chunks(js, stream, schema, table, found, prefix)
            builder.chunks, builder.row_count = found.next_chunk, found.row_count
            progress.add(found.row_count)
            log.info(
                "continuing the chunked snapshot %s of %s.%s after its reader stopped %.0f s "
                "ago: from chunk %d (%d rows recorded; %d unrecorded chunks removed)",
                found.snapshot_id,
                schema,
                table,
                found.age(),
                found.next_chunk,
                found.row_count,
                removed,
            )
        return cls(
            Recorder(js, token, prefix, seq), previous, owner, progress, options.takeover_seconds
        )

    def _record(self, state: str = "running") -> ChunkedProgress:
        return ChunkedProgress(
            snapshot_id=self.snapshot_id,
            lsn=self.lsn,
            after=self.after,
            next_chunk=self.next_chunk,
            row_count=self.row_count,
            owner=self.owner,
            updated=time.time(),
            started=self.started,
            state=state,
            segments=self.segments,
            takeover_seconds=self.takeover_seconds,
        )

    async def claim(self, lsn: str) -> None:
        """This reader's first record: a second claimant's fails."""
        self.lsn = lsn
        await self.recorder.write(self._record())

    async def record(self, done: RangeDone | SegmentsDone) -> None:
        if isinstance(done, SegmentsDone):
            self.segments = tuple(done.segments)
        else:
            self.after = done.after
        self.next_chunk, self.row_count = done.next_chunk, done.row_count
        await self.recorder.write(self._record())

    async def finish(self) -> None:
        """The meta is published: the record says done (if this fails, a later request finds
        nothing more to read and publishes the meta again, which changes nothing)."""
        try:
            await self.recorder.write(self._record("done"))
        except Exception as exc:
            log.warning("snapshot %s: its last progress record: %s", self.snapshot_id, exc)

    async def mark(self, state: str) -> None:
        await self.recorder.write(self._record(state))

    async def stop(self) -> None:
        """The read failed here: any request may continue it at once (best effort: a reader
        that cannot write this is taken over once its last record is old)."""
        if self.lsn:
            with contextlib.suppress(Exception):
                await self.recorder.write(self._record("stopped"))


async def _read_exported_parallel(
    job: ParallelJob,
    snapshot_name: str,
    schema: str,
    table: str,
    publication: str,
    unchanged: Callable[[], Awaitable[bool]],
    segments: list[Segment],
    builder: ChunkBuilder,
    publish: Callable[[Piece], Awaitable[None]],
) -> bool:
    """`_read_exported` by reader processes; False, with nothing published, when the table was
    rewritten since the export, `LockBusy` when a reader could not lock it in time."""
    async with _adopted(job.dsn, snapshot_name) as conn:

        async def locked() -> Columns:
            # Every reader holds the lock now: the storage can no longer change.
            if not await unchanged():
                raise Rewritten
            return Columns(*await describe_table(conn, schema, table, publication))

        try:
            await read_exported_parallel(job, snapshot_name, segments, locked, builder, publish)
        except Rewritten:
            return False
    return True


async def _read_exported(
    database_url: str,
    snapshot_name: str,
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    unchanged: Callable[[], Awaitable[bool]],
    builder: ChunkBuilder,
    publish: Callable[[Piece], Awaitable[None]],
    canceller: QueryCanceller,
    conditions: tuple[Condition, ...] = (),
) -> bool:
    """Read the table under the exported snapshot and publish its chunks; False, with nothing
    published, when `unchanged` says the table was truncated or rewritten since the export."""
    loop = asyncio.get_running_loop()
    name = sql.Identifier(schema, table)
    async with _adopted(database_url, snapshot_name) as conn:

        async def columns_once_locked() -> Columns:
            if not await unchanged():
                raise Rewritten
            return Columns(*await describe_table(conn, schema, table, publication))

        def locked() -> Columns:
            # In the reading thread, while the loop awaits that thread.
            return asyncio.run_coroutine_threadsafe(columns_once_locked(), loop).result()

        try:
            read = TableRead(database_url, snapshot_name, name, mode, locked, canceller, conditions)
            await publish_chunks(functools.partial(read_table, read), canceller, builder, publish)
        except Rewritten:
            return False
    return True
