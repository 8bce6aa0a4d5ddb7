"""Copies of the bridge's tables for e2e tests: the test tables and a writer keeping them busy,
`bridge replica` and the library following them, and what a loaded copy holds."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import psycopg

from pg_nats_bridge import CaughtUp, SqliteCopy, TableFollower
from pg_nats_bridge.sqlite import stored_value
from tests.harness.background import Background
from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, copy_rows, slot_lag, wait_for


def grow_items(pg: Database) -> None:
    make_tables(pg)
    pg.execute(
        "INSERT INTO items SELECT g, g / 3.0, repeat('c', 20 + g % 2 * 4000), g % 3 = 0"
        " FROM generate_series(3002, 60000) g"
    )


def chunked_copy(nats_url: str, path: Path) -> FollowedCopy:
    """A SqliteCopy of items followed through chunked snapshots. It would ask again after
    600 s without an answer or a chunk: longer than any test waits, so that what makes it ask
    again for a dead reader's snapshot is the progress record saying it can be continued."""
    return FollowedCopy(
        nats_url, ["items"], lambda: SqliteCopy(path), snapshot_mode="chunked",
        snapshot_stall_seconds=600,
    )  # fmt: skip


def loaded_snapshot(path: Path) -> dict[str, Any]:
    """The meta of the snapshot a SqliteCopy of items loaded."""
    db = sqlite3.connect(path)
    try:
        [(value,)] = db.execute(
            "SELECT value FROM _bridge_state WHERE name = 'snapshot:public.items'"
        ).fetchall()
        return dict(json.loads(value))
    finally:
        db.close()


def bootstrapped(path: Path) -> bool:
    return bool(copy_rows(path, "SELECT 1 FROM _bridge_state WHERE name = 'follower'"))


def assert_loaded_the_continued_snapshot(
    meta: dict[str, Any], copies: list[Path], logs: list[str]
) -> None:
    """Each copy loaded the one snapshot, continued. The consumer whose request the dead
    reader had taken asked again because the progress record said the snapshot could be
    continued (one whose request was answered `busy` asks again anyway); none asked again for
    want of an answer, none refused what it got."""
    for path in copies:
        loaded = loaded_snapshot(path)
        assert loaded["snapshot_id"] == meta["snapshot_id"] and loaded["resumed"], loaded
    said = f"snapshot {meta['snapshot_id']} can be continued: its reader"
    assert any(said in log for log in logs), "\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert "no reply and no chunk" not in log and "re-bootstrapping" not in log, log[-3000:]


class Writer(Background):
    """Random single-row transactions (inserts, updates of a TOASTed column or not, deletes,
    key changes) on `items`, and inserts/updates/deletes on the key-less `events`, in a thread."""

    join_seconds = 20.0

    def __init__(self, url: str, seed: int = 1) -> None:
        super().__init__()
        self.url = url
        self.rng = random.Random(seed)
        self.transactions = 0

    def _run(self) -> None:
        rng = self.rng
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM items").fetchone()[0]
            while not self.done.is_set():
                roll = rng.random()
                with conn.transaction():
                    if roll < 0.3:
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (
                                next_id,
                                rng.random(),
                                "x" * rng.choice((5, 9000)),
                                rng.random() < 0.5,
                            ),
                        )
                        next_id += 1
                    elif roll < 0.6:  # the TOASTed column is left unchanged
                        conn.execute(
                            "UPDATE items SET score = %s WHERE id = %s",
                            (rng.random(), rng.randint(1, next_id)),
                        )
                    elif roll < 0.7:
                        conn.execute(
                            "UPDATE items SET big = %s WHERE id = %s",
                            ("y" * rng.randint(1, 12000), rng.randint(1, next_id)),
                        )
                    elif roll < 0.8:
                        conn.execute("DELETE FROM items WHERE id = %s", (rng.randint(1, next_id),))
                    elif roll < 0.85:
                        conn.execute(
                            "UPDATE items SET id = %s WHERE id = %s",
                            (next_id, rng.randint(1, next_id - 1)),
                        )
                        next_id += 1
                    elif roll < 0.95:
                        conn.execute(
                            "INSERT INTO events VALUES (%s, %s)", (rng.randint(1, 20), "e")
                        )
                    else:
                        conn.execute(
                            "UPDATE events SET note = note || 'u' WHERE ctid = "
                            "(SELECT ctid FROM events WHERE kind = %s LIMIT 1)",
                            (rng.randint(1, 20),),
                        )
                self.transactions += 1
                time.sleep(0.003)


class FollowedCopy:
    """A copy (`make_copy()`: a MemoryCopy, a SqliteCopy) following `tables` in a thread of
    its own, with its own event loop and NATS connection: `loaded` is set at each CaughtUp.
    `batches=False` applies item by item (`async for item in follower`)."""

    def __init__(
        self,
        nats_url: str,
        tables: list[str],
        make_copy: Callable[[], Any],
        *,
        batches: bool = True,
        **options: Any,
    ) -> None:
        self.nats_url, self.tables, self.make_copy = nats_url, tables, make_copy
        self.batches, self.options = batches, options
        self.copy: Any = None
        self.loaded = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._follow()), daemon=True)

    def start(self) -> FollowedCopy:
        self.thread.start()
        return self

    def stop(self) -> None:
        """At its next CaughtUp."""
        self.done.set()
        self.thread.join(30)

    def __enter__(self) -> FollowedCopy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def catch_up(
        self, pg: Database, replicator: Service | None = None, timeout: float = 60
    ) -> None:
        """Once the replicator published every change, until the copy applied them all."""
        wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to catch up", replicator)
        self.loaded.clear()
        wait_for(self.loaded.is_set, timeout, "the copy to catch up after the writes")

    async def _follow(self) -> None:
        nc = await nats.connect(self.nats_url)
        copy = self.copy = self.make_copy()
        try:
            follower = TableFollower(nc, self.tables, **self.options)
            if self.batches:
                async for batch in follower.batches():
                    copy.apply_all(batch)
                    if batch and isinstance(batch[-1], CaughtUp) and self._caught_up():
                        return
            else:
                async for item in follower:
                    copy.apply(item)
                    if isinstance(item, CaughtUp) and self._caught_up():
                        return
        finally:
            if hasattr(copy, "close"):
                copy.close()
            await nc.close()

    def follow_writes(self, pg: Database, replicator: Service, seed: int = 1) -> Any:
        """Start following 0.5 s into the writer's 4.5 s of writes; once they and the copy are
        caught up, stop; the copy."""
        with Writer(pg.url, seed=seed) as writer:
            time.sleep(0.5)
            self.start()
            time.sleep(4)
        assert writer.transactions > 300, f"only {writer.transactions} transactions"
        self.catch_up(pg, replicator, timeout=30)
        self.stop()
        return self.copy

    def _caught_up(self) -> bool:
        """Say so; whether to stop."""
        self.loaded.set()
        return self.done.is_set()


def make_tables(pg: Database) -> None:
    pg.execute(
        "CREATE TABLE items (id int PRIMARY KEY, score float8, big text, flag boolean);"
        "CREATE TABLE events (kind int, note text);"
        "ALTER TABLE events REPLICA IDENTITY FULL;"
        "INSERT INTO items SELECT g, g / 7.0, repeat('b', 10 + g % 3 * 5000), g % 2 = 0"
        " FROM generate_series(1, 3000) g;"
        "INSERT INTO items VALUES (3001, 'NaN', NULL, NULL);"
        "INSERT INTO events SELECT g % 20, 'n' FROM generate_series(1, 500) g"
    )


def table_rows(pg: Database, table: str, columns: str) -> list[tuple[Any, ...]]:
    rows = pg.execute(f"SELECT {columns} FROM {table}")
    return sorted((tuple(stored_value(v) for v in r) for r in rows), key=repr)


def start_stack(pg: Database, nats_url: str, services: Callable[..., Service]) -> Service:
    replicator = services("replicator", pg, nats_url, table="items,events").wait_healthy()
    services("snapshotter", pg, nats_url, table="items,events").wait_healthy()
    return replicator


def bridge(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BRIDGE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_replica(
    env: dict[str, str], path: Path, log: Path, *tables: str, extra: Sequence[str] = ()
) -> Service:
    """`bridge replica TABLES` (items and events by default, none with `--all-tables` in
    `extra`) with progress every second."""
    service = Service("replica", env, 0, log)
    default = () if "--all-tables" in extra else ("items", "events")
    argv = [BRIDGE, "replica", *(tables or default), "--sqlite", str(path), *extra]
    with open(log, "ab") as out:
        service.process = subprocess.Popen(
            [*argv, "--progress-seconds", "1"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return service


def replica_until_caught_up(env: dict[str, str], path: Path, log: Path) -> str:
    """`bridge replica items events` until it says the copy is caught up; its output."""
    replica = start_replica(env, path, log)
    wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to catch up", replica)
    assert replica.terminate() == 0
    return replica.output()
