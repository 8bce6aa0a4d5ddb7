"""Decoding on a hot standby (PostgreSQL 16+): the replicator and the snapshotter pointed at a
streaming standby of the embedded PostgreSQL, writes on its primary.

The pair is the harness's (tests/harness/pg_standby.py) without slot synchronization: the
standby streams through a physical slot with `hot_standby_feedback`, as
docs/operations/high-availability.md asks. With `BRIDGE_PRIMARY_URL` the bridge creates the
publication on the primary and asks it for the running-transactions record a slot's creation
on the standby waits for; without it, an operator's publication is used and the log says how
to hurry the creation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pg_nats_bridge.lsn import Lsn
from tests.harness.copies import Writer, bridge, make_tables, start_replica
from tests.harness.pg_standby import PrimaryAndStandby
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for


@pytest.fixture
def pair() -> Iterator[PrimaryAndStandby]:
    with PrimaryAndStandby(failover_slots=False) as both:
        if both.primary.version < 16:
            pytest.skip("decoding on a standby needs PostgreSQL 16+")  # the embedded one is 18
        yield both


def databases(pair: PrimaryAndStandby) -> tuple[Database, Database]:
    assert pair.standby is not None
    return Database(pair.primary, "postgres"), Database(pair.standby, "postgres")


def confirmed_through_primary(pair: PrimaryAndStandby) -> bool:
    """The standby's slot confirmed everything the primary has written so far."""
    with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
        (written,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    rows = pair.on_standby(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bridge_slot'"
    )
    return bool(rows) and rows[0][0] is not None and Lsn.parse(rows[0][0]) >= Lsn.parse(written)


def test_the_bridge_on_a_standby_streams_every_change_once_through_a_standby_restart(
    pair: PrimaryAndStandby, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    primary, standby = databases(pair)
    make_tables(primary)
    settings = {"table": "items,events", "primary_url": primary.url}
    replicator = services("replicator", standby, nats_url, **settings).wait_healthy(90)
    services("snapshotter", standby, nats_url, **settings).wait_healthy()
    assert "asking the primary for that record" in replicator.output()
    slots = pair.on_standby("SELECT slot_name, slot_type FROM pg_replication_slots")
    assert ("bridge_slot", "logical") in slots, slots
    on_primary = primary.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'"
    )
    assert on_primary == [], "the primary holds a logical slot"
    assert primary.execute("SELECT pubname FROM pg_publication") == [("bridge_pub",)]

    path = tmp_path / "copy.db"
    env = replicator.env
    with Writer(primary.url, seed=3) as writer:
        replica = start_replica(env, path, tmp_path / "replica.log")
        wait_for(lambda: "applied" in replica.output(), 90, "the replica to follow", replica)
        before = writer.transactions
        assert pair.standby is not None
        pair.standby.restart()  # mid-load: the replicator's connection to it is cut
        wait_for(lambda: writer.transactions > before + 500, 60, "writes after the restart")
    wait_for(lambda: confirmed_through_primary(pair), 90, "the slot to confirm it all", replicator)
    assert replica.terminate() == 0
    result = bridge("verify", "items", "events", "--sqlite", str(path), env=env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": equal") == 2, result.stdout

    events = stream_messages(nats_url)
    ids = [headers["Nats-Msg-Id"] for _, headers, _ in events]
    assert len(ids) == len(set(ids)), "a change was published twice"
    last: dict[str, tuple[Lsn, int]] = {}
    for subject, _, event in events:
        position = (Lsn.parse(event["commit_lsn"]), event["ordinal"])
        assert position > last.get(event["table"], (Lsn(0), -1)), f"out of order at {subject}"
        last[event["table"]] = position
    inserted = primary.execute("SELECT count(*) FROM items")[0][0]
    assert len(events) > writer.transactions / 2 and inserted > 3000
    output = replicator.output()
    assert "Traceback" not in output, output[-3000:]
    print(
        f"\n{writer.transactions} transactions, {len(events)} CDC events from the standby; "
        f"replicator restarts: {output.count('restarting')}"
    )


def test_a_standby_lacking_what_decoding_needs_is_refused_by_name(
    pair: PrimaryAndStandby, nats_url: str, services: Callable[..., Service]
) -> None:
    primary, standby = databases(pair)
    primary.execute("CREATE TABLE t (id int PRIMARY KEY)")
    assert pair.standby is not None
    pair.standby.settings["hot_standby_feedback"] = "off"  # given as -c: ALTER SYSTEM loses
    pair.standby.restart()
    refused = services("replicator", standby, nats_url, table="t", primary_url=primary.url)
    assert refused.wait(60) == 2
    assert "hot_standby_feedback is off" in refused.output(), refused.output()[-2000:]
    pair.standby.settings["hot_standby_feedback"] = "on"
    pair.standby.restart()

    # No primary URL, and no publication on the primary: the standby cannot make one.
    refused = services("replicator", standby, nats_url, table="t")
    assert refused.wait(60) == 2
    output = refused.output()
    assert "cannot make" in output and "BRIDGE_PRIMARY_URL" in output, output[-2000:]
    assert (
        pair.on_standby("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")
        == []
    )

    # The operator's publication on the primary: the bridge starts, and while the primary is
    # idle the slot's creation waits for a record the log says how to get.
    primary.execute("CREATE PUBLICATION bridge_pub FOR TABLE t")
    replicator = services("replicator", standby, nats_url, table="t")
    wait_for(
        lambda: "pg_log_standby_snapshot() on the primary" in replicator.output(),
        30,
        "the log to say what the slot's creation waits for",
        replicator,
    )
    primary.execute("SELECT pg_log_standby_snapshot()")
    replicator.wait_healthy(60)
    primary.execute("INSERT INTO t VALUES (1), (2)")
    wait_for(lambda: len(stream_messages(nats_url)) == 2, 30, "two events", replicator)
    time.sleep(0.5)
    assert [e["data"]["id"] for _, _, e in stream_messages(nats_url)] == [1, 2]


def test_a_slot_invalidated_on_the_standby_stops_the_replicator_with_its_cause(
    pair: PrimaryAndStandby, nats_url: str, services: Callable[..., Service]
) -> None:
    """The conflict PostgreSQL's own tests provoke: with the standby's feedback off, the
    primary's VACUUM FULL of pg_class removes catalog rows the slot needs."""
    primary, standby = databases(pair)
    primary.execute("CREATE TABLE t (id int PRIMARY KEY)")
    settings = {"table": "t", "primary_url": primary.url}
    services("replicator", standby, nats_url, **settings).wait_healthy(90).terminate()
    assert pair.standby is not None
    pair.standby.settings["hot_standby_feedback"] = "off"
    pair.standby.restart()
    primary.execute("CREATE TABLE conflict (x int); DROP TABLE conflict")
    primary.execute("VACUUM FULL pg_class")
    reason = "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = %s"
    wait_for(
        lambda: pair.on_standby(reason, ("bridge_slot",)) == [("rows_removed",)],
        60,
        "the standby to invalidate the slot",
    )
    pair.standby.settings["hot_standby_feedback"] = "on"
    pair.standby.restart()
    stopped = services("replicator", standby, nats_url, **settings)
    assert stopped.wait(60) == 2  # said once, not retried
    output = stopped.output()
    assert "invalidated (rows_removed" in output and "hot_standby_feedback" in output, output
    assert "pg_drop_replication_slot('bridge_slot')" in output, output[-2000:]
