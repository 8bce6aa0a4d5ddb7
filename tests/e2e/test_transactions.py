"""Copies that only ever show states the database was in (docs/wire-format.md, "Transactions"):
a writer moves money between accounts in two tables in transactions (the total is constant at
every commit), `bridge replica` follows both into SQLite, and another connection reads the
file's total all along: through a kill -9 of the replica, the replicator dying half-way
through publishing a transaction larger than any batch (a failpoint) and a restart of NATS;
also a copy of one of the two tables, and a stream whose commit records were removed (as one
written before the bridge published them)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psycopg

from pg_nats_bridge import contract
from tests.harness.background import Background
from tests.harness.copies import bridge, start_replica
from tests.harness.postgres import Database
from tests.harness.services import Service, wait_for

ACCOUNTS = 200  # per table
BALANCE = 1000
TOTAL = 2 * ACCOUNTS * BALANCE  # at every commit


class Transfers(Background):
    """Moves money between accounts of `a` and `b`, in transactions: one transfer each, every
    50th a transaction of 2,400 row updates (more than a follower's batch of 2,000), and the
    300th one of 100,000; about 300 transactions a second."""

    def __init__(self, url: str, seed: int = 1) -> None:
        super().__init__()
        self.url, self.rng = url, random.Random(seed)
        self.transactions = 0

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.is_set():
                rounds = 0  # of 2 x 200 rows, one unit each way: the big transactions
                if self.transactions == 299:
                    rounds = 250
                elif self.transactions % 50 == 49:
                    rounds = 6
                with conn.transaction():
                    for _ in range(rounds):
                        conn.execute("UPDATE a SET balance = balance - 1")
                        conn.execute("UPDATE b SET balance = balance + 1")
                    if not rounds:
                        source, target = self.rng.choice("ab"), self.rng.choice("ab")
                        amount = self.rng.randint(1, 50)
                        conn.execute(
                            f"UPDATE {source} SET balance = balance - %s WHERE id = %s",
                            (amount, self.rng.randint(1, ACCOUNTS)),
                        )
                        conn.execute(
                            f"UPDATE {target} SET balance = balance + %s WHERE id = %s",
                            (amount, self.rng.randint(1, ACCOUNTS)),
                        )
                self.transactions += 1
                time.sleep(0.003)


class Reader(Background):
    """Another connection reading the copy's total over and over: every state it sees."""

    def __init__(self, path: Path, tables: tuple[str, ...] = ("public.a", "public.b")) -> None:
        super().__init__()
        self.path, self.tables = path, tables
        self.totals: list[float] = []

    def _run(self) -> None:
        query = "SELECT " + " + ".join(f'(SELECT total(balance) FROM "{t}")' for t in self.tables)
        while not self.done.is_set():
            try:
                if not self.path.exists():
                    raise sqlite3.OperationalError("no copy yet")
                db = sqlite3.connect(self.path, timeout=5)
                try:
                    (total,) = db.execute(query).fetchone()
                    self.totals.append(total)
                finally:
                    db.close()
            except sqlite3.OperationalError:
                pass  # no file or table yet: the copy has not committed its bootstrap
            time.sleep(0.005)


def make_accounts(pg: Database) -> None:
    for table in ("a", "b"):
        pg.execute(
            f"CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL);"
            f"INSERT INTO {table} SELECT g, {BALANCE} FROM generate_series(1, {ACCOUNTS}) g"
        )


def stack(
    pg: Database, nats_url: str, services: Callable[..., Service], **replicator: str
) -> Service:
    services("snapshotter", pg, nats_url, table="a,b").wait_healthy()
    return services("replicator", pg, nats_url, table="a,b", **replicator).wait_healthy()


def caught_up(replica: Service, before: int) -> bool:
    return replica.output().count("caught up") > before


def test_a_copy_shows_only_states_the_database_was_in_through_kills(
    pg: Database,
    nats_url: str,
    nats_server: Any,
    services: Callable[..., Service],
    tmp_path: Path,
) -> None:
    make_accounts(pg)
    # The replicator dies after its 60th batch written to NATS (no PubAck waited for): in the
    # middle of one of the big transactions, or of a run of small ones.
    replicator = stack(pg, nats_url, services, failpoints="publisher.after_write=exit@60")
    env = replicator.env
    path = tmp_path / "copy.db"
    with Reader(path) as reader, Transfers(pg.url) as writer:
        replica = start_replica(env, path, tmp_path / "replica.log", "a", "b")
        wait_for(lambda: writer.transactions > 150, 60, "the writer", replica)
        replica.kill()  # kill -9: whatever it applied and had not committed is gone
        replica = start_replica(env, path, tmp_path / "replica-2.log", "a", "b")
        assert replicator.wait(120) != 0, "the failpoint never fired"
        replicator = services("replicator", pg, nats_url, table="a,b").wait_healthy()
        wait_for(lambda: writer.transactions > 250, 60, "the writer", replicator)
        nats_server.restart()  # the replica and the replicator lose NATS for a moment
        wait_for(
            lambda: writer.transactions > 400 and len(reader.totals) > 100,
            120,
            "the writer",
            replica,
        )
        wait_for(lambda: caught_up(replica, 0), 120, "the replica to catch up", replica)
    seen = len(reader.totals)
    assert replica.terminate() == 0
    result = bridge("verify", "a", "b", "--sqlite", str(path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    wrong = [t for t in reader.totals if t != TOTAL]
    assert seen > 100 and not wrong, (seen, wrong[:10])
    output = replica.output()
    assert "no commit record" not in output and "lacks the others" not in output, output


def test_a_copy_of_one_table_and_a_stream_without_commit_records(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_accounts(pg)
    replicator = stack(pg, nats_url, services)
    env = replicator.env
    # One of the two tables: every transaction of it ends at its record.
    only_a = tmp_path / "a.db"
    replica = start_replica(env, only_a, tmp_path / "a.log", "a")
    wait_for(lambda: caught_up(replica, 0), 60, "the copy of a", replica)
    with Transfers(pg.url, seed=2) as writer:
        wait_for(lambda: writer.transactions > 200, 60, "the writer", replica)
        replica.kill()

    # A stream written before the bridge published commit records: removed here.
    async def remove_records() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().purge_stream("CDC", subject=contract.commit_subject())
        finally:
            await nc.close()

    asyncio.run(remove_records())
    replica = start_replica(env, only_a, tmp_path / "a-2.log", "a")
    wait_for(lambda: caught_up(replica, 0), 60, "the copy of a to follow on", replica)
    assert replica.terminate() == 0
    output = replica.output()
    assert output.count("has no commit record") == 1, output  # said once
    assert "lacks the others" not in output, output
    result = bridge("verify", "a", "--sqlite", str(only_a), env=env)
    assert result.returncode == 0 and ": equal" in result.stdout, result.stdout + result.stderr
