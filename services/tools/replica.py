"""`bridge replica TABLE… --sqlite PATH`: a live SQLite copy of tables, built on the consumer
library (pg_nats_bridge). Changes and the follower's position commit together, every
`--commit-seconds` and whenever the copy is caught up, so a kill loses nothing and repeats
nothing; progress and lag are logged every `--progress-seconds`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.js.errors import NoKeysError
from psycopg import sql

from pg_nats_bridge import (
    ApplyError,
    Backfilled,
    Bootstrapped,
    CaughtUp,
    FollowError,
    Reset,
    Rows,
    SqliteCopy,
    TableFollower,
)
from pg_nats_bridge.names import parse_kv_key
from services.tools.arguments import ReplicaArguments, parse_condition
from services.tools.copy_lock import CopyInUse, lock_copy
from shared.nats_connection import connect
from shared.settings import BridgeSettings

log = logging.getLogger("bridge.replica")


class Progress:
    """Bootstrap rows per table, then changes applied, the rate and the lag."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = time.monotonic()
        self.expected: dict[str, int] = {}
        self.loaded: dict[str, int] = {}
        self.applied = 0
        self.applied_at_last = 0
        self.current = False  # the copy has applied everything the stream held

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def bootstrap(self, table: str) -> None:
        done, total = self.loaded.get(table, 0), self.expected.get(table, 0)
        log.info(
            "bootstrap %s: %d / %d rows (%.0f%%)",
            table,
            done,
            total,
            100.0 * done / total if total else 100.0,
        )
        self.last = time.monotonic()

    def caught_up(self, follower: TableFollower) -> None:
        """Said once when the copy becomes current (after its bootstrap, after a backlog)."""
        if not self.current:
            self.current = True
            log.info(
                "caught up: %d changes applied, CDC sequence %d",
                self.applied,
                follower.state["seq"],
            )

    def following(self, follower: TableFollower, left_out: dict[str, str]) -> None:
        now = time.monotonic()
        rate = (self.applied - self.applied_at_last) / max(now - self.last, 1e-9)
        lag_seconds = 0.0
        if follower.pending and follower.last_commit_time:
            committed = datetime.fromisoformat(follower.last_commit_time.replace("Z", "+00:00"))
            lag_seconds = max(0.0, (datetime.now(UTC) - committed).total_seconds())
        log.info(
            "applied %d changes (%.0f/s), CDC sequence %d, %s, %d foreign messages skipped",
            self.applied,
            rate,
            follower.state["seq"],
            "caught up"
            if self.current
            else f"behind: lag {follower.pending} events, {lag_seconds:.1f} s",
            follower.skipped,
        )
        if left_out:
            log.warning(
                "%d table(s) left out of the copy: %s",
                len(left_out),
                "; ".join(f"{t}: {why}" for t, why in sorted(left_out.items())),
            )
        self.last, self.applied_at_last = now, self.applied


async def run_replica(
    settings: BridgeSettings,
    tables: Sequence[str],
    path: Path,
    snapshot_subject: str,
    durable: str | None,
    commit_seconds: float,
    progress_seconds: float,
    stopping: asyncio.Event,
    snapshot_mode: str | None = None,
    backfill: tuple[str, list[dict[str, Any]]] | None = None,
    skip: Sequence[int] = (),
) -> int:
    copy = SqliteCopy(path, skip=skip)
    nc = await connect(settings, "bridge-replica", reconnect=True)
    if not tables:  # --all-tables
        tables = await every_table(nc, settings.kv_bucket)
    follower = TableFollower(
        nc,
        tables,
        state=copy.state(),
        durable=durable,
        cdc_stream=settings.cdc_stream,
        init_stream=settings.init_stream,
        kv_bucket=settings.kv_bucket,
        snapshot_subject=snapshot_subject,
        snapshot_mode=snapshot_mode,
    )
    bootstrapped = copy.state() is not None
    progress = Progress(progress_seconds)
    if backfill is not None:
        asked = follower.backfill(*backfill)
        asked.add_done_callback(functools.partial(_backfill_done, backfill[0]))
    # What start-up built (modules, settings, the connection) lives as long as the process:
    # moved out of the collector's way, full collections while applying a backlog no longer
    # walk it (0.4 µs of the ~5 µs a change costs, measured on a 200k-change backlog).
    gc.freeze()
    last_commit = time.monotonic()
    try:
        async for batch in follower.batches():
            # One call per batch: runs of inserts go to SQLite in one executemany each.
            copy.apply_all(batch)
            # A bootstrap's items come one per batch; changes come many to a batch.
            for item in batch if len(batch) == 1 else ():
                if isinstance(item, Reset):
                    bootstrapped = False
                    progress.expected[item.table] = int(item.snapshot.get("row_count", 0))
                    progress.loaded[item.table] = 0
                    progress.bootstrap(item.table)
                elif isinstance(item, Rows):
                    progress.loaded[item.table] = progress.loaded.get(item.table, 0) + len(
                        item.rows
                    )
                    if progress.due():
                        progress.bootstrap(item.table)
                elif isinstance(item, Bootstrapped):
                    bootstrapped = True
                    for table in progress.expected:
                        progress.bootstrap(table)
            progress.applied = copy.applied
            if bootstrapped and any(isinstance(item, CaughtUp) for item in batch):
                progress.caught_up(follower)
            elif follower.pending:
                progress.current = False
            if batch and isinstance(batch[-1], Bootstrapped | CaughtUp | Backfilled):
                last_commit = time.monotonic()  # the copy committed with the item's state
            elif time.monotonic() - last_commit >= commit_seconds and copy.commit(
                follower.state if bootstrapped else None
            ):  # where every transaction applied ended, and the tables are at one moment
                last_commit = time.monotonic()
            if bootstrapped and progress.due():
                progress.following(follower, copy.left_out())
            if stopping.is_set():  # between two batches: what was applied commits below
                break
        return 0
    except ApplyError as exc:
        # The copy rolled back to its last commit: its position is before the change, so the
        # next start hands it out again. Nothing after it is applied, nothing is committed.
        log.error(
            "stopped at a change the copy cannot apply: %s. The copy holds everything up to "
            "its last commit; fix the cause and start again (the change is retried), or give "
            "up on it with --skip-change %s (recorded in the copy's _bridge_skipped table)",
            exc,
            exc.seq if exc.seq is not None else "SEQ",
        )
        return 3
    finally:
        if copy.failed is None:
            # Whatever else stopped us (SIGTERM, a NATS error), every batch handed out was
            # applied whole: it and its position commit together, unless a transaction is
            # open or the tables are not yet at one moment (then the copy stays at its last
            # commit, and the next start hands the rest out again).
            whole = copy.commit(follower.state if bootstrapped else None)
            log.info(
                "stopped; the copy is committed%s: %d changes applied, %d foreign messages skipped",
                "" if whole else " through its last whole transaction",
                progress.applied,
                follower.skipped,
            )
        copy.close()
        with contextlib.suppress(Exception):
            await nc.close()


async def every_table(nc: Any, bucket: str) -> list[str]:
    """Every table the snapshotter publishes a schema document of (its KV bucket's keys), as
    a quoted `schema.table` each."""
    try:
        keys = await (await nc.jetstream().key_value(bucket)).keys()
    except NoKeysError:
        keys = []
    if not keys:
        raise FollowError(
            f"--all-tables: KV bucket {bucket} holds no schema document: is the snapshotter "
            "running (with --table, or following its publication)?"
        )
    names = map(parse_kv_key, keys)
    tables = [sql.Identifier(schema, table).as_string(None) for schema, table in names]
    log.info("--all-tables: %d tables", len(tables))
    return sorted(tables)


def _backfill_done(table: str, done: asyncio.Future[dict[str, Any]]) -> None:
    if done.cancelled():
        return
    if done.exception() is not None:
        log.error("backfill of %s refused: %s", table, done.exception())
        return
    meta = done.result()
    log.info(
        "backfill %s of %s applied: %d rows (lsn %s)",
        meta["snapshot_id"],
        table,
        meta["row_count"],
        meta["lsn"],
    )


def replica(own: ReplicaArguments) -> int:
    settings = own
    try:
        lock = lock_copy(own.sqlite, "replica")
    except CopyInUse as exc:
        print(f"bridge replica: {exc}", flush=True)
        return 2
    if bool(own.copy_tables) == own.all_tables:
        print("bridge replica: name the tables to copy, or give --all-tables (not both)")
        lock.close()
        return 2
    backfill = None
    if own.backfill is not None or own.where:
        try:
            if own.backfill is None:
                raise ValueError("--where needs --backfill TABLE")
            if not own.where:
                raise ValueError("--backfill needs at least one --where condition")
            backfill = (own.backfill, [parse_condition(text) for text in own.where])
        except ValueError as exc:
            print(f"bridge replica: {exc}", flush=True)
            lock.close()
            return 2
    durable = own.durable or "replica-" + "".join(
        c if c.isalnum() or c in "-_" else "_" for c in own.sqlite.stem
    )

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def stop() -> None:
            # The loop stops at the next item (one comes at least every second); cancelling
            # is the fallback, as a cancellation can be lost inside nats-py's waits.
            stopping.set()
            loop.call_later(10, task.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            return await run_replica(
                settings,
                own.copy_tables,
                own.sqlite,
                own.snapshot_prefix,
                durable,
                own.commit_seconds,
                own.progress_seconds,
                stopping,
                own.snapshot_mode,
                backfill,
                own.skip_change,
            )
        except asyncio.CancelledError:
            return 0

    try:
        return asyncio.run(main())
    except FollowError as exc:
        print(f"bridge replica: {exc}", flush=True)
        return 2
    finally:
        lock.close()
