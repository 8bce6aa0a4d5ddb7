"""A change a copy cannot apply, against the real services: `bridge replica` stops naming it
(table, key, commit LSN, CDC sequence), a restart retries it instead of skipping it, and once
the cause is gone the copy verifies equal to PostgreSQL; the failure is injected at the first,
a middle and the last change of one transaction over two tables, which arrives as one batch.
An operator's explicit `--skip-change` is recorded and `bridge verify` shows what it cost.
The library's MemoryCopy (through `TableFollower.batches` and `state_before`) is held to the
same: following on from where it stopped ends equal to the tables."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

from pg_nats_bridge import ApplyError, CaughtUp, MemoryCopy, TableFollower
from pg_nats_bridge.sqlite import stored_value
from tests.harness.copies import bridge, make_tables, start_replica, start_stack, table_rows
from tests.harness.postgres import Database
from tests.harness.services import Service, slot_lag, stream_messages, wait_for

# One transaction over both tables, seven changes in this order.
TRANSACTION = (
    "INSERT INTO items VALUES (5001, 1, 'first', true);"
    "INSERT INTO events VALUES (1, 'second');"
    "INSERT INTO items VALUES (5002, 2, 'third', false);"
    "UPDATE items SET score = -1 WHERE id = 7;"
    "DELETE FROM items WHERE id = 8;"
    "INSERT INTO items VALUES (5003, 3, 'sixth', true);"
    "INSERT INTO events VALUES (99, 'last')"
)
# A trigger in the copy's file that makes one change of it fail, by its ordinal.
FAILING = {
    0: 'BEFORE INSERT ON "public.items" WHEN NEW.id = 5001',
    3: 'BEFORE UPDATE ON "public.items" WHEN OLD.id = 7',
    6: 'BEFORE INSERT ON "public.events" WHEN NEW.kind = 99',
}


def poison(path: Path, when: str | None) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS poison")
    if when is not None:
        db.execute(f"CREATE TRIGGER poison {when} BEGIN SELECT RAISE(ABORT, 'injected'); END")
    db.commit()
    db.close()


def stored(path: Path) -> tuple[int, dict[str, list[tuple[Any, ...]]]]:
    """The copy's committed position and rows."""
    db = sqlite3.connect(path)
    try:
        [(state,)] = db.execute("SELECT value FROM _bridge_state WHERE name = 'follower'")
        rows = {
            t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
            for t in ("public.items", "public.events")
        }
        return int(re.search(r'"seq": (\d+)', state).group(1)), rows  # type: ignore[union-attr]
    finally:
        db.close()


def events_of_transaction(nats_url: str) -> dict[int, tuple[int, str]]:
    """CDC sequence of each change of TRANSACTION by ordinal, with its commit LSN (the stream
    starts at 1 and loses nothing in this test)."""
    messages = stream_messages(nats_url, commits=True)  # every message, so that seq is exact
    last_lsn = [event for _, _, event in messages if "ordinal" in event][-1]["commit_lsn"]
    return {
        event["ordinal"]: (seq, event["commit_lsn"])
        for seq, (_, _, event) in enumerate(messages, 1)
        if event.get("commit_lsn") == last_lsn and "ordinal" in event
    }


def caught_up_to(path: Path, seq: int) -> bool:
    try:
        return stored(path)[0] >= seq
    except (sqlite3.Error, ValueError):
        return False


def test_a_change_the_copy_cannot_apply_is_retried_never_skipped(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_tables(pg)
    replicator = start_stack(pg, nats_url, services)
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    replica = start_replica(env, path, log)
    wait_for(lambda: "applied" in replica.output(), 60, "the replica to bootstrap", replica)
    assert replica.terminate() == 0
    memory = PoisonedMemoryCopy()
    error, memory_state = asyncio.run(follow(nats_url, memory, None))
    assert error is None
    position, rows_before = stored(path)

    pg.execute(TRANSACTION)
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to publish it", replicator)
    changes = events_of_transaction(nats_url)
    assert sorted(changes) == list(range(7)), changes
    for ordinal, when in FAILING.items():
        seq, lsn = changes[ordinal]
        poison(path, when)
        for _ in range(2 if ordinal == 0 else 1):  # started again, it fails at the same change
            result = bridge("replica", "items", "events", "--sqlite", str(path), env=env)
            out = result.stdout + result.stderr
            assert result.returncode == 3, out
            table = "public.events" if ordinal == 6 else "public.items"
            assert f"{table}: cannot apply the" in out, out
            assert f"commit LSN {lsn}, CDC sequence {seq})" in out, out
            assert f"--skip-change {seq}" in out, out
            assert stored(path) == (position, rows_before)  # nothing of the batch committed

    poison(path, None)
    replica = start_replica(env, path, log)
    wait_for(lambda: caught_up_to(path, changes[6][0]), 60, "the copy to apply it", replica)
    assert replica.terminate() == 0
    result = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    assert result.returncode == 0 and result.stdout.count(": equal") == 2, result.stdout

    # The library's MemoryCopy, stopped at each of the same changes in turn.
    for ordinal in FAILING:
        memory.poisoned = ordinal
        error, memory_state = asyncio.run(follow(nats_url, memory, memory_state))
        assert isinstance(error, ApplyError) and error.seq == changes[ordinal][0], error
    memory.poisoned = None
    error, memory_state = asyncio.run(follow(nats_url, memory, memory_state))
    assert error is None
    for table, columns in (("items", ["id", "score", "big", "flag"]), ("events", ["kind", "note"])):
        got = sorted(
            (
                tuple(stored_value(r.get(c)) for c in columns)
                for r in memory.tables[f"public.{table}"]
            ),
            key=repr,
        )
        assert got == table_rows(pg, table, ", ".join(columns)), table

    # An operator gives up on one change, explicitly: recorded, and verify shows its cost.
    pg.execute("UPDATE items SET score = -2 WHERE id = 9; INSERT INTO events VALUES (98, 'x')")
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to publish it", replicator)
    poison(path, 'BEFORE UPDATE ON "public.items" WHEN OLD.id = 9')
    result = bridge("replica", "items", "events", "--sqlite", str(path), env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    seq = int(re.findall(r"--skip-change (\d+)", result.stdout + result.stderr)[-1])
    replica = start_replica(env, path, log, "items", "events", extra=["--skip-change", str(seq)])
    wait_for(lambda: caught_up_to(path, seq + 1), 60, "the copy to go on", replica)
    assert replica.terminate() == 0
    db = sqlite3.connect(path)
    assert db.execute("SELECT seq, tbl, key FROM _bridge_skipped").fetchall() == [
        (seq, "public.items", '{"id": 9}')
    ]
    db.execute("DROP TRIGGER poison")
    db.commit()
    db.close()
    result = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    assert result.returncode == 1, result.stdout
    assert "public.items at" in result.stdout and "1 different" in result.stdout, result.stdout
    assert "different key (9,)" in result.stdout and result.stdout.count(": equal") == 1


POISONED_ROWS = {0: ("public.items", 5001), 3: ("public.items", 7), 6: ("public.events", 99)}


class PoisonedMemoryCopy(MemoryCopy):
    """A MemoryCopy that cannot apply the change of TRANSACTION at ordinal `poisoned`."""

    poisoned: int | None = None

    def _key(self, table: str, row: dict[str, Any]) -> Any:
        if self.poisoned is not None:
            name, value = POISONED_ROWS[self.poisoned]
            if table == name and value in (row.get("id"), row.get("kind")):
                raise ValueError("injected")
        return super()._key(table, row)


async def follow(
    url: str, copy: MemoryCopy, state: dict[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """Follow both tables into `copy` from `state` until caught up (None) or a change cannot be
    applied (the error); the state to follow on from."""
    nc = await nats.connect(url)
    follower = TableFollower(nc, ["items", "events"], state=state)
    batches = follower.batches()
    try:
        async for batch in batches:
            try:
                copy.apply_all(batch)
            except ApplyError as exc:
                # A MemoryCopy undid the whole transaction: follow on from its first change.
                return exc, follower.state_before(exc.retry_from or 0)
            if any(isinstance(item, CaughtUp) for item in batch):
                return None, follower.state
        raise AssertionError("the follower ended")  # pragma: no cover
    finally:
        await batches.aclose()
        await nc.close()
