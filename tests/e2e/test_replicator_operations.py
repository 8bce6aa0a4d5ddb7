"""Operating the replicator: refusals, the oversized-row policy, shutdown, telemetry, memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from shared.wire import unpack
from tests.harness.postgres import Database, PostgresServer
from tests.harness.processes import peak_rss_mb
from tests.harness.services import Service, slot_lag, stream_count, stream_messages, wait_for
from tests.harness.streams import ask


def test_a_table_without_a_key_is_refused_before_it_is_published(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE keyless (a int, b text)")
    refused = services("replicator", pg, nats_url, table="keyless")
    assert refused.wait(60) == 2
    assert "public.keyless: no primary key or replica identity" in refused.output()
    assert "--replica-identity-full public.keyless to set" in refused.output()
    assert pg.execute("SELECT count(*) FROM pg_publication_tables") == [(0,)]
    # The application's own UPDATE still works: the table was not published.
    pg.execute("INSERT INTO keyless VALUES (1, 'x')")
    pg.execute("UPDATE keyless SET b = 'y'")

    # Opt-in by name: the table named, and a name that needs nothing is said to be left alone.
    replicator = services(
        "replicator", pg, nats_url, table="keyless", replica_identity_full="keyless,other"
    ).wait_healthy()
    assert "set REPLICA IDENTITY FULL on public.keyless" in replicator.output()
    assert "names public.other, which is not a configured table" in replicator.output()
    assert pg.execute("SELECT relreplident FROM pg_class WHERE relname = 'keyless'") == [("f",)]
    pg.execute("UPDATE keyless SET b = 'z'")
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "the update")
    ((_, _, event),) = stream_messages(nats_url)
    assert event["old"] == {"a": 1, "b": "y"} and event["data"] == {"a": 1, "b": "z"}


def test_unknown_table_is_a_clear_error(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    refused = services("replicator", pg, nats_url, table="nope")
    assert refused.wait(60) == 2
    assert "configured tables do not exist: public.nope" in refused.output()


def test_wal_level_replica_is_refused_with_the_fix(
    tmp_path: Path, nats_url: str, services: Callable[..., Service]
) -> None:
    server = PostgresServer.create(overrides={"wal_level": "replica"})
    try:
        db = Database(server, "postgres")
        db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        refused = services("replicator", db, nats_url, table="t")
        assert refused.wait(60) == 2
        assert "wal_level is 'replica'; set wal_level=logical" in refused.output()
    finally:
        server.destroy()


def test_oversized_row_goes_to_the_dead_letter_subject(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    replicator = services("replicator", pg, nats_url, table="docs").wait_healthy()
    pg.execute("INSERT INTO docs VALUES (1, repeat('x', 2000000))")
    pg.execute("INSERT INTO docs VALUES (2, 'small')")
    wait_for(lambda: stream_count(nats_url) >= 2, 30, "marker and next row", replicator)
    (s1, h1, marker), (s2, _, normal) = stream_messages(nats_url)
    assert s1 == "cdc.~oversized.docs"
    assert marker["key"] == {"id": 1} and marker["size"] > 2_000_000
    assert marker["max_payload"] == 1024 * 1024 and marker["operation"] == "insert"
    assert h1["Nats-Msg-Id"] == f"{marker['commit_lsn']}:0"
    assert s2 == "cdc.docs.insert" and normal["data"] == {"id": 2, "body": "small"}
    assert "bridge_oversized_rows_total 1.0" in replicator.metrics()


def test_oversized_row_under_stop_policy_stops_and_loses_nothing(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    stopped = services("replicator", pg, nats_url, table="docs", oversized_policy="stop")
    stopped.wait_healthy()
    pg.execute("INSERT INTO docs VALUES (1, repeat('x', 2000000))")
    assert stopped.wait(60) == 2
    assert "more than NATS max_payload" in stopped.output()
    # The row was not acknowledged to PostgreSQL: a replicator with the other policy gets it.
    services("replicator", pg, nats_url, table="docs").wait_healthy()
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "the marker")
    assert stream_messages(nats_url)[0][0] == "cdc.~oversized.docs"


def test_sigterm_drains_and_exits_0(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services("replicator", pg, nats_url, table="t").wait_healthy()
    pg.execute("INSERT INTO t SELECT generate_series(1, 5000)")
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "publishing to begin", replicator)
    assert replicator.terminate() == 0
    assert "final status update: confirmed" in replicator.output()
    # Everything published before the exit was confirmed: a restart replays nothing new.
    wait_for(lambda: stream_count(nats_url) >= 5000, 30, "all rows")
    assert slot_lag(pg) < 1_000_000


def ask_shutdown(nats_url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    """The replicator's answer to a shutdown request over NATS (waiting for it to subscribe)."""
    return ask(nats_url, "bridge.control.replicator.shutdown", timeout=1, headers=headers)


def test_shutdown_over_nats_needs_the_control_token(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Anyone on the NATS account can publish to the control subject: without the token
    (or with a wrong one) the request is answered with why, logged, and changes nothing."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    token = "c0ntrol-s3cret"
    replicator = services("replicator", pg, nats_url, table="t", control_token=token)
    replicator.wait_healthy()

    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        refused = ask_shutdown(nats_url, headers)
        assert refused == {"error": "missing or wrong control token", "reason": "unauthorized"}
    assert replicator.health() == 200
    # Logged once for the three (a flood of them must not flood the log), counted each.
    assert replicator.output().count("refused a control request on bridge.control.") == 1
    assert "bridge_control_requests_refused_total 3.0" in replicator.metrics()
    answer = ask_shutdown(nats_url, {"Authorization": f"Bearer {token}"})
    assert answer == {"status": "shutting down"}
    assert replicator.wait(30) == 0
    assert token not in replicator.output()


def test_control_requests_are_refused_when_no_token_is_configured(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services("replicator", pg, nats_url, table="t").wait_healthy()

    reply = ask_shutdown(nats_url, None)
    assert reply["reason"] == "unauthorized"
    assert "control requests are disabled: set BRIDGE_CONTROL_TOKEN" in reply["error"]
    assert replicator.health() == 200


def test_a_first_start_held_up_by_an_open_transaction_says_so_and_still_stops(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Creating the slot waits for every transaction open at that moment; a session left
    idle in one holds the first start up for as long as it stays. The log names the session
    (a few seconds in), a SIGTERM meanwhile exits 0 at once (the creation is cancelled: no
    slot is left), and a start once the session has ended streams."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pg.connect(autocommit=False) as idle_in_transaction:
        idle_in_transaction.execute("SELECT pg_current_xact_id()")  # a transaction with an xid
        pid = idle_in_transaction.info.backend_pid
        replicator = services("replicator", pg, nats_url, table="t")
        wait_for(
            lambda: (
                "waits for 1 transaction(s) open when it began" in replicator.output()
                and f"pid {pid} (" in replicator.output()
            ),
            30,
            "the log to name the session",
            replicator,
        )
        assert "idle in transaction since" in replicator.output()
        assert replicator.terminate(timeout=20) == 0, replicator.output()[-2000:]
        assert "shutdown: stopped while starting" in replicator.output()
        assert pg.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
        idle_in_transaction.rollback()  # still there: the stop did not wait for it
    replicator = services("replicator", pg, nats_url, table="t").wait_healthy()
    pg.execute("INSERT INTO t VALUES (1)")
    wait_for(lambda: stream_count(nats_url) == 1, 30, "the row", replicator)


def test_metrics_and_health(pg: Database, nats_url: str, services: Callable[..., Service]) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services(
        "replicator", pg, nats_url, table="t", metrics_log_seconds=1, slot_check_seconds=1
    ).wait_healthy()
    pg.execute("INSERT INTO t VALUES (1)")
    wait_for(
        # The table's shape (its first change since the replicator started), the change and its
        # transaction's commit record.
        lambda: "bridge_cdc_events_published_total 3.0" in replicator.metrics(),
        30,
        "the published counter",
        replicator,
    )
    wait_for(lambda: "bridge_slot_active 1.0" in replicator.metrics(), 10, "the slot check")
    text = replicator.metrics()
    for name in (
        "bridge_uptime_seconds",
        "bridge_wal_messages_received_total",
        "bridge_cdc_events_published_total",
        "bridge_last_ack_lsn",
        "bridge_connected 1.0",
        "bridge_reconnects_total",
        "bridge_last_processing_time_us",
        "bridge_slot_active 1.0",
        "bridge_wal_lag_bytes",
    ):
        assert name in text, name
    wait_for(lambda: "METRICS " in replicator.output(), 10, "a METRICS line", replicator)
    line = next(x for x in replicator.output().splitlines() if x.startswith("METRICS "))
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    assert {
        "wal_messages_received",
        "cdc_events_published",
        "last_ack_lsn",
        "connected",
        "wal_lag_bytes",
        "slot_active",
    } <= set(fields)


def test_a_1m_row_transaction_streams_in_bounded_memory(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    replicator = services("replicator", pg, nats_url, table="big", cdc_max_msgs=2_000_000)
    replicator.wait_healthy()
    pg.execute("INSERT INTO big SELECT g, 'some padding text' FROM generate_series(1, 1000000) g")
    started = time.monotonic()
    wait_for(lambda: stream_count(nats_url) >= 1_000_000, 240, "1M messages", replicator)
    elapsed = time.monotonic() - started
    peak_mb = peak_rss_mb(replicator.pid)
    print(f"1M-row transaction: {1_000_000 / elapsed:,.0f} rows/s, peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB"

    async def last() -> Any:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("CDC")
            change = (await js.get_msg("CDC", info.state.last_seq - 1)).data
            record = (await js.get_msg("CDC", info.state.last_seq)).data
            return unpack(change), unpack(record)
        finally:
            await nc.close()

    change, record = asyncio.run(last())
    assert change["data"]["id"] == 1_000_000
    assert record["event_count"] == 1_000_000 and record["tables"] == {"big": 1_000_000}
    assert stream_count(nats_url) == 1_000_000


def test_idle_publication_does_not_hold_wal_back(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE noisy (id int PRIMARY KEY, pad text)")
    services("replicator", pg, nats_url, table="quiet").wait_healthy()
    start = int(pg.execute("SELECT pg_current_wal_lsn() - '0/0'")[0][0])
    lags, catch_up = [], []
    with pg.connect() as conn:
        for batch in range(20):  # 20 transactions of ~1.1 MB of WAL each
            conn.execute(
                "INSERT INTO noisy SELECT g, repeat(md5(g::text), 30)"
                " FROM generate_series(%s::int, %s::int) g",
                (batch * 1000, batch * 1000 + 999),
            )
            lags.append(slot_lag(pg))
            began = time.monotonic()
            wait_for(lambda: slot_lag(pg) < 1_000_000, 10, "the slot to follow the WAL")
            catch_up.append(time.monotonic() - began)
    written = int(pg.execute("SELECT pg_current_wal_lsn() - '0/0'")[0][0]) - start
    assert written > 20_000_000
    print(
        f"{written / 1e6:.0f} MB written to an unpublished table: slot lag right after each "
        f"commit max {max(lags):,} bytes; back under 1 MB within max {max(catch_up):.2f} s; "
        f"final {slot_lag(pg):,}"
    )


@pytest.fixture(autouse=True)
def _show_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """Figures printed by these tests show with -s."""
