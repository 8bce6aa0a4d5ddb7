"""Follow tables from the bridge: a consistent snapshot, then every change after it, in stream
order, resumable.

Why it is done this way (docs/wire-format.md has the contract):

- The CDC position is taken before any snapshot is requested: a snapshot's rows are exactly the
  transactions that committed below its `lsn`, and every later one is published after the
  position, so reading CDC from it and skipping events whose `commit_lsn` is below the table's
  `lsn` misses nothing and applies nothing twice.
- An existing complete snapshot is reused only when the CDC stream provably still holds every
  event from its `lsn` on: its oldest message committed below that `lsn`.
- The position stored with the copy is a stream sequence "seen through": it moves past other
  tables' events whenever the consumer has nothing pending, so a quiet table resumes without a
  new snapshot. A restart resumes at that sequence + 1 while the stream still holds it, and
  re-bootstraps (saying why) when retention removed it or the stream was recreated.
- One consumer reads all the tables (several filter subjects), so changes of one transaction
  arrive together and in commit order. It acknowledges nothing (`AckNone`): the caller's store
  holds the position, and a consumer-sequence gap (a delivery lost with a connection) or any
  consumer error recreates the consumer from that position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import KeyNotFoundError, NotFoundError

from pg_nats_bridge import contract
from pg_nats_bridge.change_reader import ChangeReader, Reload
from pg_nats_bridge.changes import (
    Backfilled,
    BackfillRows,
    Bootstrapped,
    CaughtUp,
    Delete,
    Insert,
    Item,
    Oversized,
    Reset,
    Row,
    Rows,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)
from pg_nats_bridge.follow_errors import FollowError, Undecodable
from pg_nats_bridge.lsn import Lsn
from pg_nats_bridge.marked_pull import MarkedPull, StreamLacks
from pg_nats_bridge.names import kv_key, parse_table_name, table_token
from pg_nats_bridge.position import StreamFacts, covered, stream_lacks
from pg_nats_bridge.pull import Idle, Puller
from pg_nats_bridge.snapshot_request import SnapshotRefused, ask_for_snapshot, last_meta
from pg_nats_bridge.transactions import TransactionTracker

log = logging.getLogger("pg_nats_bridge")


class _Rebootstrap(Exception):
    """The stream no longer holds what the copy needs next; the message says why."""


class _Backfill(Exception):
    """A backfill was asked for: following stops at the position handed out so far."""


class _Reload(Exception):
    """A table's schema changed so that it is read again: following stops at the position
    handed out so far (a transaction boundary)."""


_CHANGES = (Insert, Update, Delete, Truncate, Oversized)  # what `CdcChange` is


@dataclass
class _BackfillRequest:
    table: str
    body: dict[str, Any]
    done: asyncio.Future[dict[str, Any]]


class _ChunksMissing(Exception):
    pass


class _NoSchemaDocument(Exception):
    """The KV entry of a table is not a schema document (written by someone else): the
    snapshotter replaces it within one poll, so it is read again after a pause."""


@dataclass
class _Batch:
    """Items that arrived together, and the CDC position through them (None: unchanged)."""

    items: list[Item]
    end: int | None


def consumer_filters(tokens: Iterable[str]) -> list[str]:
    """The subjects a copy of the tables (by token) reads from the CDC stream: their changes,
    their oversized rows' markers, and the commit records."""
    tokens = list(tokens)
    filters = [contract.cdc_filter(tok) for tok in tokens]
    filters += [contract.oversized_subject(tok) for tok in tokens]
    filters.append(contract.commit_subject())
    return filters


def _began(meta: dict[str, Any]) -> float | None:
    """When a snapshot began (unix time): a chunked meta's `started`, else the time in its id
    (`snap-<unix time>-<hex>`); None when neither says."""
    started = meta.get("started")
    if isinstance(started, int | float) and not isinstance(started, bool):
        return float(started)
    parts = str(meta.get("snapshot_id", "")).split("-")
    return float(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _unpack(data: bytes | None) -> Any:
    """MessagePack, or `Undecodable`: anyone on the NATS account can publish on the bridge's
    subjects, and one foreign message must not stop a copy."""
    try:
        return msgpack.unpackb(data or b"", **contract.UNPACK_OPTIONS)
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise Undecodable(f"not MessagePack ({type(exc).__name__})") from None


class TableFollower:
    """`async for item in TableFollower(nc, ["users"], state=stored): apply(item)`.

    Items are the changes of pg_nats_bridge.changes, in the order to apply them. Store
    `follower.state` (JSON) with the applied changes at `Bootstrapped`, at `CaughtUp` and as
    often as you commit: a follower given it resumes right after.
    """

    def __init__(
        self,
        nc: Client,
        tables: Sequence[str],
        *,
        state: dict[str, Any] | None = None,
        durable: str | None = None,
        cdc_stream: str = contract.CDC_STREAM,
        init_stream: str = contract.INIT_STREAM,
        kv_bucket: str = contract.KV_BUCKET,
        snapshot_subject: str = contract.SNAPSHOT_PREFIX,
        chunk_size: int | None = None,
        reuse_snapshot: bool = True,
        snapshot_stall_seconds: float = 60.0,
        snapshot_heartbeat_seconds: float = 5.0,
        batch: int = 16000,
        idle_seconds: float = 1.0,
        snapshot_mode: str | None = None,
    ) -> None:
        if not tables:
            raise FollowError("no table to follow")
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        parsed = [parse_table_name(t) for t in tables]
        self.tables = [".".join(name) for name in parsed]  # the copy's names: `schema.table`
        # (schema, table) of each: `sales.Orders` read again as a name would be sales.orders.
        self._names = dict(zip(self.tables, parsed, strict=True))
        self.tokens = {t: table_token(*self._names[t]) for t in self.tables}
        self._by_token = {tok: t for t, tok in self.tokens.items()}
        self.durable = durable
        self.cdc_stream, self.init_stream, self.kv_bucket = cdc_stream, init_stream, kv_bucket
        self.snapshot_subject = snapshot_subject
        self.chunk_size = chunk_size
        self.reuse_snapshot = reuse_snapshot
        self.snapshot_stall_seconds = snapshot_stall_seconds
        self.snapshot_heartbeat_seconds = snapshot_heartbeat_seconds
        self.snapshot_mode = snapshot_mode  # None: the snapshotter's default ("exported")
        self.batch, self.idle_seconds = batch, idle_seconds
        self._stored = state
        self._seq = 0
        # What each CDC event asks of the copy: the tables' snapshot points, replay windows
        # and schemas, and the rules reading an event by them (change_reader.py).
        self.changes = ChangeReader(self._by_token)
        # Where transactions end, and from when the copy is one consistent state
        # (transactions.py).
        self.transactions = TransactionTracker(self._by_token, self.changes.before_snapshot)
        self._commit_subject = contract.commit_subject(contract.CDC).encode()
        self.pending = 0  # events the consumer holds beyond the last one delivered
        self.skipped = 0  # messages on the bridge's subjects that were not its messages
        self._consumer_name = ""
        self._backfills: list[_BackfillRequest] = []
        self._last_commit_lsn: str | None = None  # of the last change handed out
        # Tables that could not be loaded, and why: left out while the others go on, asked
        # for again at the next start (`_load_failed`).
        self._failed: dict[str, str] = {}
        # Tables to read again after a schema change, and why (`_reload`).
        self._reloads: dict[str, str] = {}

    # -- the position ------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """What to store with the copy: the CDC sequence applied (or seen) through and each
        table's snapshot LSN."""
        state: dict[str, Any] = {
            "seq": self._seq,
            "snapshots": {t: str(lsn) for t, lsn in self.changes.snapshots.items()},
            "stream": self.cdc_stream,
        }
        windows = self._windows(self._seq)
        if windows:
            state["replay_until"] = windows
        if self._failed:
            state["failed"] = dict(self._failed)
        shapes = {
            t: schema.document.fingerprint
            for t, schema in self.changes.schemas.items()
            if t not in self._failed and t not in self._reloads
        }
        if shapes:
            # What the copy's tables look like: at a resume, a table whose schema document is
            # not this any more changed while the copy was stopped, and is read again.
            state["shapes"] = shapes
        return state

    def state_before(self, seq: int) -> dict[str, Any]:
        """The state through the event before CDC sequence `seq`: what to store when stopping
        without applying the change at `seq` (one the copy could not apply: `ApplyError.seq`),
        so that following on from it hands that change out again, exactly as the first time."""
        state = {**self.state, "seq": seq - 1}
        state.pop("replay_until", None)
        windows = self._windows(seq - 1)
        if windows:
            state["replay_until"] = windows
        return state

    def _windows(self, seq: int) -> dict[str, str]:
        return self.changes.windows(seq)

    @property
    def last_commit_time(self) -> str | None:
        """The commit time of the last change read (`bridge replica` shows how far behind)."""
        return self.changes.last_commit_time

    async def _resumable(self, stored: dict[str, Any]) -> str | None:
        """Why `stored` cannot be resumed, or None when it can."""
        held = sorted({*stored.get("snapshots", {}), *(stored.get("failed") or {})})
        if held != sorted(self.tables):
            return f"the copy holds {held}, not {self.tables}"
        return self._stream_lacks(await self.js.stream_info(self.cdc_stream), int(stored["seq"]))

    def _stream_lacks(self, info: StreamInfo, seq: int) -> str | None:
        """Why the stream cannot give the copy every message after `seq` (position.py)."""
        return stream_lacks(self._facts(info), seq)

    def _facts(self, info: StreamInfo, oldest_lsn: str | None = None) -> StreamFacts:
        state = info.state
        return StreamFacts(
            self.cdc_stream,
            state.first_seq,
            state.last_seq,
            state.num_deleted or 0,
            info.created,
            oldest_lsn,
        )

    def backfill(
        self, table: str, where: Sequence[dict[str, Any]], *, mode: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Re-read the rows of `table` matching `where` (conditions as in a snapshot request,
        e.g. `[{"column": "updated_at", "op": ">=", "value": "2026-01-01"}]`) into the copy
        while it follows: the follower stops at the position handed out so far, asks for the
        backfill, hands out its rows as `BackfillRows` and `Backfilled`, then goes on from that
        position, replaying changes until the backfill's window closes (docs/wire-format.md,
        "Partial backfills"). The future is the backfill's meta once handed out, or the
        snapshotter's refusal (`FollowError`); a table not followed or a condition that is not
        one raises `FollowError` at once."""
        name = ".".join(parse_table_name(table))
        if name not in self.tables:
            raise FollowError(f"{table} is not one of the followed tables ({self.tables})")
        if name in self._failed:
            raise FollowError(f"{table} is not in the copy: {self._failed[name]}")
        try:
            conditions = [contract.Condition.model_validate(c).model_dump() for c in where]
        except ValueError as exc:  # pydantic's ValidationError is one
            raise FollowError(f"backfill of {table}: {exc}") from None
        if not conditions:
            raise FollowError(f"backfill of {table}: no condition (a backfill is a part)")
        body: dict[str, Any] = {"where": conditions, "mode": mode or self.snapshot_mode}
        if self.chunk_size:
            body["chunk_size"] = self.chunk_size
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._backfills.append(_BackfillRequest(name, {k: v for k, v in body.items() if v}, done))
        return done

    async def _backfill(self) -> AsyncIterator[Item]:
        """The asked backfills, each into the copy at the position handed out so far. Its
        snapshot is taken after the request, so its consistent point is at or past every change
        handed out: its rows are as new as the copy's or newer, and replaying the changes from
        here to the end of its window brings every row to its state there. A request leaves
        the queue once answered: cut short by a NATS error, it is asked again."""
        while self._backfills:
            request = self._backfills[0]
            if request.done.done():  # cancelled by its asker
                self._backfills.pop(0)
                continue
            table = request.table
            try:
                if not self.changes.schemas[table].primary_key:
                    raise FollowError(
                        f"{table} has no primary key: a backfill's rows cannot replace the "
                        "copy's; re-bootstrap the copy instead"
                    )
                meta = await self._request_snapshot(table, request.body)
                if self._last_commit_lsn and Lsn.parse(meta["lsn"]) < Lsn.parse(
                    self._last_commit_lsn
                ):  # the snapshotter reads a server behind the one decoded (a standby)
                    raise FollowError(
                        f"backfill {meta['snapshot_id']} of {table} was read at {meta['lsn']}, "
                        f"before changes the copy holds ({self._last_commit_lsn}): its server "
                        "lags the replicator's; ask again"
                    )
            except FollowError as exc:
                self._backfills.pop(0)
                request.done.set_exception(exc)
                log.warning("backfill of %s: %s", table, exc)
                continue
            until = Lsn.parse(meta.get("replay_until") or meta["lsn"])
            self.changes.open_window(table, max(until, self.changes.replay_until.get(table, until)))
            self.transactions.until(until)  # the backfilled rows are newer than the others
            # Cut short, the next one's rows replace these, and the replay from this position
            # covers both windows.
            async for rows in self._chunks(table, meta):
                yield BackfillRows(table, rows)
            self._backfills.pop(0)
            log.info(
                "%s: backfill %s loaded (%d rows where %s, lsn %s)",
                table,
                meta["snapshot_id"],
                meta["row_count"],
                " and ".join(
                    contract.Condition(**c).describe() for c in request.body.get("where", ())
                ),
                meta["lsn"],
            )
            yield Backfilled(table, meta, self.state, consistent=self.transactions.consistent)
            if not request.done.done():
                request.done.set_result(meta)

    # -- the items ---------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Item]:
        return self.items()

    async def items(self) -> AsyncGenerator[Item, None]:
        """The items one at a time; `state` after each is the position through it."""
        async for batch in self._batches():
            for item in batch.items:
                seq = getattr(item, "seq", None)  # a change: the position moves to it
                if seq is not None:
                    self._seq = seq
                yield item
            if batch.end is not None:
                self._seq = batch.end

    async def batches(self) -> AsyncGenerator[list[Item], None]:
        """The items in lists of what arrived together, to apply in one go (a copy's
        `apply_all`: one transaction, one `executemany` per run of inserts); `state` after a
        list is the position through its last item, so store it only once the whole list is
        applied."""
        async for batch in self._batches():
            if batch.end is not None:
                self._seq = batch.end
            yield batch.items

    async def _batches(self) -> AsyncGenerator[_Batch, None]:
        attempt = 0
        backfill_due = reload_due = False
        while True:
            try:
                if reload_due:
                    reload_due = False
                    async for item in self._reload():
                        yield _Batch([item], None)
                    self._stored = self.state
                if backfill_due:
                    # Here, not in the handler of `_Backfill`: a NATS error while it loads is
                    # handled below like any other (and the backfill asked again).
                    backfill_due = False
                    async for item in self._backfill():
                        yield _Batch([item], None)
                    self._stored = self.state  # following goes on from where it stopped
                stored, self._stored = self._stored, None
                why = await self._resumable(stored) if stored else "the copy is empty"
                if why is None:
                    assert stored is not None
                    self._seq = int(stored["seq"])
                    self.changes.reset(
                        {t: Lsn.parse(v) for t, v in stored["snapshots"].items()},
                        {t: Lsn.parse(v) for t, v in (stored.get("replay_until") or {}).items()},
                    )
                    self._failed = dict(stored.get("failed") or {})
                    shapes = stored.get("shapes") or {}
                    for table in self.tables:
                        if table not in self._failed:
                            schema = await self._schema(table)
                            if shapes.get(table, schema.document.fingerprint) != (
                                schema.document.fingerprint
                            ):
                                self._reload_later(
                                    table, "its schema changed while the copy was stopped"
                                )
                    log.info("resuming %s after CDC sequence %d", ", ".join(self.tables), self._seq)
                    for table in list(self._failed):
                        async for item in self._load_failed(table):
                            yield _Batch([item], None)
                    if self._reloads:
                        async for item in self._reload():
                            yield _Batch([item], None)
                else:
                    log.info("bootstrapping %s: %s", ", ".join(self.tables), why)
                    async for item in self._bootstrap():
                        yield _Batch([item], None)
                async for batch in self._follow():
                    if any(isinstance(item, CaughtUp) for item in batch.items):
                        attempt = 0  # following again: the next failure waits briefly
                    yield batch
            except _Rebootstrap as exc:
                log.warning("re-bootstrapping %s: %s", ", ".join(self.tables), exc)
                self._stored = None
            except _Backfill:
                backfill_due = True
                self._stored = self.state
            except _Reload:
                reload_due = True
                self._stored = self.state
            except (TimeoutError, nats.errors.Error, _ChunksMissing, _NoSchemaDocument) as exc:
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
                log.warning(
                    "following %s: %s; again in %.1f s",
                    ", ".join(self.tables),
                    str(exc) or type(exc).__name__,
                    delay,
                )
                # Resume from what was handed out, unless a bootstrap was cut short.
                loaded = sorted({*self.changes.snapshots, *self._failed}) == sorted(self.tables)
                self._stored = self.state if loaded else None
                await asyncio.sleep(delay)
            else:  # pragma: no cover - _follow never ends by itself
                return

    # -- bootstrap ---------------------------------------------------------------------------

    async def _bootstrap(self) -> AsyncIterator[Item]:
        self.changes.reset({}, {})
        self._failed = {}
        info = await self.js.stream_info(self.cdc_stream)
        start = info.state.last_seq + 1
        for table in self.tables:
            try:
                meta, reused_from = await self._snapshot(table)
                schema = await self._schema(table, meta)
            except FollowError as exc:
                yield self._left_out(table, exc)
                continue
            if reused_from is None and (meta.get("joined") or meta.get("resumed")):
                # It began before this copy's position was taken (it was running already):
                # the changes from its `lsn` on are read from further back.
                reused_from, compared = await self._covered(meta["lsn"], _began(meta))
                if reused_from is None:
                    raise _Rebootstrap(
                        f"snapshot {meta['snapshot_id']} of {table} began before this copy's "
                        "CDC position, and the CDC stream may not hold every change after its "
                        f"lsn: {compared}; asking for another"
                    )
                log.info(
                    "%s: snapshot %s began before this copy's CDC position; its changes are "
                    "read from CDC sequence %d: %s",
                    table,
                    meta["snapshot_id"],
                    reused_from,
                    compared,
                )
            if reused_from is not None:
                start = min(start, reused_from)
            async for item in self._load(table, schema, meta):
                yield item
            log.info(
                "%s: snapshot %s loaded (%d rows, lsn %s%s)",
                table,
                meta["snapshot_id"],
                meta["row_count"],
                meta["lsn"],
                ", reused" if reused_from is not None else "",
            )
        if len(self._failed) == len(self.tables):
            raise FollowError(
                "no table could be loaded: "
                + "; ".join(f"{t}: {why}" for t, why in self._failed.items())
            )
        self._seq = start - 1
        self.transactions.reset()
        points = {
            max(lsn, self.changes.replay_until.get(table, lsn))
            for table, lsn in self.changes.snapshots.items()
        }
        windows = bool(self.changes.replay_until)
        if len(points) > 1 or windows:
            # Different moments of the tables, or a chunked snapshot's rows read over time:
            # one state once CDC reaches the latest of them.
            self.transactions.until(max(points))
        yield Bootstrapped(self.state, consistent=self.transactions.consistent)

    async def _load(
        self, table: str, schema: TableSchema, meta: dict[str, Any]
    ) -> AsyncIterator[Item]:
        """The snapshot `meta` into the copy (`Reset`, its `Rows`), then the table follows
        from its `lsn` on, replaying a chunked one's window."""
        yield Reset(table, schema, meta)
        async for rows in self._chunks(table, meta):
            yield Rows(table, rows)
        self.changes.loaded(table, Lsn.parse(meta["lsn"]))
        if meta.get("mode") == "chunked" and meta.get("replay_until"):
            self.changes.open_window(table, Lsn.parse(meta["replay_until"]))

    def _left_out(self, table: str, exc: FollowError) -> TableFailed:
        """A table whose load failed for good: said, and left out while the others go on."""
        self._failed[table] = str(exc)
        log.error(
            "%s is left out of the copy: %s; the other tables go on, and it is asked for again "
            "when the copy is next started",
            table,
            exc,
        )
        return TableFailed(table, str(exc))

    async def _load_failed(self, table: str) -> AsyncIterator[Item]:
        """A table left out at an earlier start, asked for again while the others resume: a
        snapshot taken now (its `lsn` is past every change the copy holds, so its changes
        below it are skipped as in a bootstrap), then `Bootstrapped` with the state that
        holds it."""
        try:
            for _ in range(3):
                meta = await self._request_snapshot(table)
                # One that was running already began before this position: the changes
                # between its `lsn` and here are behind the position. The next one is new.
                if not (meta.get("joined") or meta.get("resumed")):
                    break
            else:
                raise FollowError(f"every snapshot of {table} asked for was one running already")
            schema = await self._schema(table, meta)
        except FollowError as exc:
            yield self._left_out(table, exc)
            return
        async for item in self._load(table, schema, meta):
            yield item
        del self._failed[table]
        log.info(
            "%s: snapshot %s loaded (%d rows, lsn %s); the table was left out before",
            table,
            meta["snapshot_id"],
            meta["row_count"],
            meta["lsn"],
        )
        # Newer than the other tables: one moment again once CDC passes its point.
        self.transactions.until(Lsn.parse(meta.get("replay_until") or meta["lsn"]))
        yield Bootstrapped(self.state, consistent=self.transactions.consistent)

    def _reload_later(self, table: str, why: str) -> None:
        """Read `table` again at the next transaction boundary (`_reload`); until it is
        loaded, its changes are in the snapshot asked for, and the copy is not one state."""
        self._reloads[table] = why
        self.changes.reloading.add(table)
        self.changes.past_snapshot.discard(table)
        self.transactions.hold(table)
        log.info("%s: read again from a new snapshot: %s", table, why)

    async def _reload(self) -> AsyncIterator[Item]:
        """The tables whose schema changed, each from a snapshot taken now: after the change,
        so in the new shape and with every value PostgreSQL gave the existing rows (a
        DEFAULT, a rewrite) that no row change carried. The copy holds different moments of
        its tables until CDC passes the snapshot's point, so it is not one state before."""
        while self._reloads:
            table, why = next(iter(self._reloads.items()))
            try:
                meta = await self._request_snapshot(table)
                schema = await self._schema(table, meta)
            except FollowError as exc:
                del self._reloads[table]
                self.changes.reloading.discard(table)
                self.transactions.release(table)
                yield self._left_out(table, exc)
                continue
            async for item in self._load(table, schema, meta):
                yield item
            del self._reloads[table]
            self._failed.pop(table, None)  # left out before it joined the publication
            self.transactions.release(table)
            log.info(
                "%s: snapshot %s loaded (%d rows, lsn %s) after its schema changed (%s)",
                table,
                meta["snapshot_id"],
                meta["row_count"],
                meta["lsn"],
                why,
            )
            self.transactions.until(Lsn.parse(meta.get("replay_until") or meta["lsn"]))
            yield Bootstrapped(self.state, consistent=self.transactions.consistent)

    async def _schema(self, table: str, meta: dict[str, Any] | None = None) -> TableSchema:
        """The table as a snapshot's rows have it: its meta's document (read under the
        snapshot; KV may already hold the next ALTER TABLE's), else (a snapshotter of an
        earlier release, or no snapshot) KV's."""
        document = (meta or {}).get("schema_document")
        try:
            schema = (
                TableSchema.from_document(document)
                if document is not None
                else await self._stored_schema(table)
            )
        except ValueError as exc:
            raise FollowError(
                f"snapshot {(meta or {}).get('snapshot_id')} of {table}: its schema document "
                f"is not one: {exc}"
            ) from None
        if schema.unpublished_key and schema.replica_identity != "full":
            raise FollowError(
                f"{table}: its primary key includes {', '.join(schema.unpublished_key)}, which "
                "is not published (a generated column before PostgreSQL 18, or left out by the "
                "publication's column list), so a change cannot say which row it is about: set "
                "REPLICA IDENTITY FULL on the table, or publish every key column"
            )
        if not schema.primary_key and schema.replica_identity not in ("full", "default"):
            raise FollowError(
                f"{table} has no primary key and replica identity {schema.replica_identity}: "
                "its rows cannot be located; give it a primary key or REPLICA IDENTITY FULL"
            )
        self.changes.schemas[table] = schema
        return schema

    async def _stored_schema(self, table: str) -> TableSchema:
        kv = await self.js.key_value(self.kv_bucket)
        try:
            entry = await kv.get(kv_key(*self._names[table]))
        except KeyNotFoundError:
            raise FollowError(
                f"no schema document for {table} in KV bucket {self.kv_bucket}: is the "
                "snapshotter running with this table in BRIDGE_TABLE?"
            ) from None
        assert entry.revision is not None
        try:
            return TableSchema.from_document(_unpack(entry.value))
        except ValueError as exc:
            self.skip(f"KV {self.kv_bucket}", entry.key, entry.revision, str(exc))
            raise _NoSchemaDocument(
                f"the KV entry of {table} (revision {entry.revision}) is not a schema "
                "document; waiting for the snapshotter to replace it"
            ) from None

    async def _snapshot(self, table: str) -> tuple[dict[str, Any], int | None]:
        """A complete snapshot to load, and the CDC sequence to read from when it is an
        existing one (None for a new one: the position taken before it serves)."""
        if self.reuse_snapshot:
            reusable = await self._reusable(table)
            if reusable is not None:
                return reusable
        return await self._request_snapshot(table), None

    async def _reusable(self, table: str) -> tuple[dict[str, Any], int] | None:
        meta = await last_meta(self.js, self.init_stream, self.tokens[table])
        if meta is None:  # none, or not the bridge's: nothing proves a snapshot reusable
            return None
        start, compared = await self._covered(meta["lsn"], _began(meta))
        if start is None:
            log.info("%s: not reusing snapshot %s: %s", table, meta["snapshot_id"], compared)
            return None
        return meta, start

    async def _covered(self, lsn: str, began: float | None) -> tuple[int | None, str]:
        """Whether the stream holds every change after a snapshot's `lsn` (position.covered):
        the sequence to read from, or None; and what was compared."""
        try:
            info = await self.js.stream_info(self.cdc_stream)
            oldest: str | None = None
            if info.state.messages:
                first = await self.js.get_msg(self.cdc_stream, seq=info.state.first_seq)
                try:
                    event = _unpack(first.data)
                    oldest = str(event.get("commit_lsn") or event.get("lsn") or "")
                    if oldest:
                        Lsn.parse(oldest)
                except (Undecodable, AttributeError, TypeError, ValueError):
                    oldest = ""  # not the bridge's event: it proves nothing
        except NotFoundError:
            return None, f"stream {self.cdc_stream} or its oldest message is gone"
        return covered(self._facts(info, oldest), lsn, began)

    async def _request_snapshot(
        self, table: str, request: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Ask the snapshotters until one answers (pg_nats_bridge.snapshot_request: again as
        soon as a dead reader's chunked snapshot can be continued)."""
        if request is None:
            options = {"chunk_size": self.chunk_size, "mode": self.snapshot_mode}
            request = {k: v for k, v in options.items() if v}
        try:
            return await ask_for_snapshot(
                self.nc,
                self.js,
                self.tokens[table],
                request,
                table=table,
                request_prefix=self.snapshot_subject,
                init_stream=self.init_stream,
                stall_seconds=self.snapshot_stall_seconds,
                heartbeat_seconds=self.snapshot_heartbeat_seconds,
                on_foreign=lambda subject, why: self.skip("snapshot reply", subject, None, why),
            )
        except SnapshotRefused as exc:
            raise FollowError(f"snapshot of {table} refused: {exc}") from None

    async def _chunks(self, table: str, meta: dict[str, Any]) -> AsyncIterator[list[Row]]:
        count = int(meta["batch_count"])
        if not count:
            return
        subject = contract.snapshot_chunks_filter(self.tokens[table], meta["snapshot_id"])
        sub = await self.js.subscribe(
            subject,
            stream=self.init_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            for expected in range(count):
                try:
                    msg = await sub.next_msg(timeout=30)
                except nats.errors.TimeoutError:
                    raise _ChunksMissing(
                        f"snapshot {meta['snapshot_id']} of {table}: chunk {expected} of "
                        f"{count} is not in stream {self.init_stream}"
                    ) from None
                try:
                    number, rows = contract.chunk_rows(msg.data)
                except ValueError as exc:
                    seq = msg.metadata.sequence.stream
                    raise _ChunksMissing(
                        f"snapshot {meta['snapshot_id']} of {table}: stream {self.init_stream} "
                        f"sequence {seq} ({msg.subject}) is {exc}"
                    ) from None
                if number != expected:
                    raise _ChunksMissing(
                        f"snapshot {meta['snapshot_id']} of {table}: chunk {number} "
                        f"where {expected} was expected"
                    )
                yield rows
        finally:
            await sub.unsubscribe()

    # -- CDC ---------------------------------------------------------------------------------

    async def _consumer(self) -> str:
        """A pull consumer of the tables' subjects from the stored position; its name."""
        filters = consumer_filters(self.tokens.values())
        name = self._consumer_name = self.durable or f"pnb-{secrets.token_hex(6)}"
        config = ConsumerConfig(
            name=name,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._seq + 1,
            ack_policy=AckPolicy.NONE,
            filter_subjects=filters,
            inactive_threshold=3600.0 if self.durable else 300.0,
            description=f"pg_nats_bridge copy of {', '.join(self.tables)}",
        )
        if self.durable:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(self.cdc_stream, self.durable)
        await self.js.add_consumer(self.cdc_stream, config)
        return name

    async def _follow(self) -> AsyncIterator[_Batch]:
        """The consumer's messages as changes, a batch for what arrived together (the pull
        requests and their markers: marked_pull.py), with a `Committed` where each
        transaction ends and `CaughtUp` when nothing more is pending at a boundary."""
        puller = Puller(
            self.nc,
            self.cdc_stream,
            await self._consumer(),
            batch=self.batch,
            expires=self.idle_seconds,
        )
        await puller.start()
        pull = MarkedPull(puller, self.js, self.cdc_stream, self.idle_seconds, self._stream_lacks)
        if not self.transactions.records_seen:
            try:  # a stream with any commit record ends every transaction with one
                await self.js.get_last_msg(self.cdc_stream, contract.commit_subject())
                self.transactions.records_seen = True
            except NotFoundError:
                pass
        delivered = 0  # consumer sequence of the last delivery
        received = seq = self._seq  # the last message received; the position through it
        # Every change of a backlog passes the loop below: what it calls is looked up once.
        read_change, track = self.changes.read, self.transactions.change
        tokens, commit_subject = self.tokens, self._commit_subject
        try:
            while True:
                if self._reloads and self.transactions.at_boundary:
                    raise _Reload
                if self._backfills and self.transactions.at_boundary:
                    raise _Backfill
                try:
                    arrived = await pull.take(received, self.pending)
                except StreamLacks as exc:
                    raise _Rebootstrap(str(exc)) from None
                items: list[Item] = []
                for entry in arrived:
                    if isinstance(entry, Idle):
                        seq = max(seq, entry.marker)
                        self.pending = 0
                        self.transactions.idle(items)
                        if not self.transactions.at_boundary:
                            continue  # the open transaction's record is on its way
                        consistent = self.transactions.consistent
                        items.append(CaughtUp({**self.state, "seq": seq}, consistent))
                        continue
                    subject, stream_seq, consumer_seq, pending, data = entry
                    if consumer_seq != delivered + 1:
                        raise nats.errors.Error(
                            f"consumer delivered {consumer_seq} after {delivered}: "
                            "a delivery was lost; reading again from the stored position"
                        )
                    delivered, received, self.pending = consumer_seq, stream_seq, pending
                    try:
                        if subject == commit_subject:
                            record = contract.CommitRecord.decode(data)
                            self.transactions.record(record, stream_seq, items)
                            seq = stream_seq
                            continue
                        read = read_change(subject, stream_seq, data)
                        item: Item | None = None
                        if isinstance(read, _CHANGES):
                            item = read
                            if isinstance(read, Oversized):  # its marker carries the LSN
                                commit_lsn = str(read.marker["commit_lsn"])
                            else:
                                commit_lsn = read.commit_lsn
                            track(tokens[read.table], commit_lsn, stream_seq, items)
                        elif isinstance(read, Reload):
                            self._reload_later(read.table, read.why)
                        elif read is not None:  # the copy's columns dropped, the table renamed
                            if isinstance(read, TableFailed):
                                self._left_out(read.table, FollowError(read.reason))
                            item = read
                    except (Undecodable, KeyError, TypeError, ValueError, AttributeError) as exc:
                        why = str(exc) if isinstance(exc, Undecodable) else "not a CDC event"
                        self.skip(
                            self.cdc_stream, subject.decode(errors="replace"), stream_seq, why
                        )
                        item = None
                    seq = stream_seq
                    if item is not None:
                        items.append(item)
                for handed in reversed(items):
                    lsn = getattr(handed, "commit_lsn", None)
                    if lsn is not None:
                        self._last_commit_lsn = lsn
                        break
                if arrived:
                    yield _Batch(items, seq)
        finally:
            await pull.stop()
            if not self.durable:  # an ephemeral one would linger until its inactive threshold
                with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                    await self.js.delete_consumer(self.cdc_stream, self._consumer_name)

    def skip(self, where: str, subject: str | None, seq: int | None, why: str) -> None:
        """One message the bridge did not publish: logged with where it is, counted."""
        self.skipped += 1
        log.warning("skipped %s sequence %s (%s): %s", where, seq, subject, why)
