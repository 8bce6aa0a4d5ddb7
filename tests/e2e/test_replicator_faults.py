"""The guarantees under faults: kill -9, server restarts, a standby taking over."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.harness.postgres import Database
from tests.harness.services import Service, stream_count, stream_messages, wait_for

ROWS = 20_000


class Writer(threading.Thread):
    """Inserts ids 0..rows-1 in transactions of `per_tx` rows, retrying across outages."""

    def __init__(self, pg: Database, rows: int = ROWS, per_tx: int = 100) -> None:
        super().__init__(daemon=True)
        self.pg, self.rows, self.per_tx = pg, rows, per_tx
        self.done_rows = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import time

        import psycopg

        start = 0
        while start < self.rows:
            try:
                with self.pg.connect() as conn, conn.transaction():
                    conn.execute(
                        "INSERT INTO load SELECT g, g FROM generate_series(%s::int, %s::int) g",
                        (start, min(start + self.per_tx, self.rows) - 1),
                    )
                start += self.per_tx
                self.done_rows = start
            except psycopg.OperationalError:
                time.sleep(0.2)  # PostgreSQL restarting: the transaction did not commit


def assert_exactly_once(nats_url: str, rows: int = ROWS) -> list[Any]:
    wait_for(lambda: stream_count(nats_url) >= rows, 90, f"{rows} messages")
    msgs = stream_messages(nats_url)
    ids = Counter(p["data"]["id"] for _, _, p in msgs)
    missing = set(range(rows)) - set(ids)
    duplicated = {i: n for i, n in ids.items() if n > 1}
    assert not missing, f"{len(missing)} rows missing, e.g. {sorted(missing)[:5]}"
    assert not duplicated, f"{len(duplicated)} rows duplicated, e.g. {list(duplicated.items())[:5]}"
    assert len(msgs) == rows
    # Per table, stream order is commit order: ids were inserted in increasing order.
    order = [p["data"]["id"] for _, _, p in msgs]
    assert order == sorted(order)
    return msgs


def test_kill_9_during_load_loses_nothing_and_duplicates_nothing(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE load (id int PRIMARY KEY, n int)")
    first = services("replicator", pg, nats_url, table="load").wait_healthy()
    writer = Writer(pg)
    writer.start()
    wait_for(lambda: stream_count(nats_url) > 3000, 60, "the load to be under way", first)
    first.kill()
    killed_at = stream_count(nats_url)
    assert killed_at < ROWS, "the load finished before the kill: the test proves nothing"
    services("replicator", pg, nats_url, table="load").wait_healthy()
    writer.join(120)
    assert_exactly_once(nats_url)


def test_nats_server_killed_and_restarted_during_load_loses_nothing(
    pg: Database, nats_url: str, nats_server: Any, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE load (id int PRIMARY KEY, n int)")
    replicator = services(
        "replicator", pg, nats_url, table="load", ack_timeout_seconds=3
    ).wait_healthy()
    writer = Writer(pg)
    writer.start()
    wait_for(lambda: stream_count(nats_url) > 3000, 60, "the load to be under way", replicator)
    nats_server.kill()
    assert writer.done_rows < ROWS or stream_count(nats_url) < ROWS
    nats_server.start()
    writer.join(120)
    assert_exactly_once(nats_url)
    assert replicator.process is not None and replicator.process.poll() is None
    assert "restarting in" in replicator.output()


def test_postgres_restart_is_survived(
    pg: Database, pg_server: Any, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE load (id int PRIMARY KEY, n int)")
    replicator = services("replicator", pg, nats_url, table="load").wait_healthy()
    pg.execute("INSERT INTO load VALUES (0, 0)")
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "first row", replicator)
    pg_server.restart()
    pg.execute("INSERT INTO load VALUES (1, 1)")
    wait_for(lambda: stream_count(nats_url) >= 2, 60, "a row written after the restart", replicator)
    replicator.wait_healthy()
    assert [p["data"]["id"] for _, _, p in stream_messages(nats_url)] == [0, 1]
    assert "restarting in" in replicator.output()


def test_a_standby_replicator_takes_over_within_10_s(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    import time

    pg.execute("CREATE TABLE load (id int PRIMARY KEY, n int)")
    active = services("replicator", pg, nats_url, table="load").wait_healthy()
    standby = services("replicator", pg, nats_url, table="load")
    wait_for(
        lambda: "is in use by another replicator" in standby.output(),
        30,
        "standby waiting",
        standby,
    )
    assert standby.health() == 503
    pg.execute("INSERT INTO load VALUES (0, 0)")
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "row via the active replicator")
    active.kill()
    killed = time.monotonic()
    pg.execute("INSERT INTO load VALUES (1, 1)")
    wait_for(lambda: stream_count(nats_url) >= 2, 10, "row via the standby", standby)
    assert time.monotonic() - killed < 10
    assert [p["data"]["id"] for _, _, p in stream_messages(nats_url)] == [0, 1]


def test_messages_jetstream_did_not_store_are_noticed_through_the_chain(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Only the last message of a run asks for a PubAck. A message JetStream does not store
    (here: refused because a foreign message took the sequence it expected) must still fail
    the run, through the later messages' `Nats-Expected-Last-Sequence`, and the restart must
    store every change once and in order."""
    import asyncio

    import nats

    pg.execute("CREATE TABLE load (id int PRIMARY KEY, n int)")
    replicator = services("replicator", pg, nats_url, table="load").wait_healthy()
    rows = 40_000
    writer = Writer(pg, rows, per_tx=10)  # 4,000 transactions: still writing after the intrusions
    writer.start()
    wait_for(lambda: stream_count(nats_url) > 3000, 60, "the load to be under way", replicator)

    async def intrude() -> None:
        nc = await nats.connect(nats_url)
        try:
            for i in range(3):
                await nc.jetstream().publish("cdc.intruder.insert", b"\x80", headers=None)
                await asyncio.sleep(0.3 + 0.2 * i)
        finally:
            await nc.close()

    asyncio.run(intrude())
    assert writer.done_rows < rows, "the load finished first: the test proves nothing"
    writer.join(120)
    wait_for(lambda: stream_count(nats_url) >= rows + 3, 90, "every change", replicator)
    msgs = [m for m in stream_messages(nats_url) if m[0] != "cdc.intruder.insert"]
    ids = [p["data"]["id"] for _, _, p in msgs]
    assert ids == list(range(rows)), "a change lost, duplicated or out of order"
    assert "wrong last sequence" in replicator.output()
