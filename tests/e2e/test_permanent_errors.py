"""Mistakes an operator must fix stop the services with exit code 2 and one line saying what to
do, never a retry loop; and no part of a database password ever shows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from psycopg.conninfo import make_conninfo

from tests.harness.postgres import Database, PostgresServer
from tests.harness.processes import free_port
from tests.harness.services import Service, wait_for
from tests.harness.stacks import stopped_with
from tests.harness.streams import request

# A password with a literal '%' (and other URL-special characters), as managed databases
# generate them.
PASSWORD = "s3cr%et/Pa:ss@word"


def test_a_role_that_cannot_create_the_publication_is_told_who_can(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    pg.execute("CREATE ROLE bridge_user LOGIN REPLICATION PASSWORD 'bridge-pw'")
    pg.execute("GRANT SELECT ON t TO bridge_user")
    url = make_conninfo(pg.url, user="bridge_user", password="bridge-pw")
    # No CREATE on the database: the GRANT that fixes it is named.
    replicator = services("replicator", pg, nats_url, table="t", database_url=url)
    line = stopped_with(replicator, "stopping:", "GRANT CREATE ON DATABASE")
    assert f'"{pg.name}" TO "bridge_user"' in line
    assert 'CREATE PUBLICATION "bridge_pub" FOR TABLE "public"."t"' in line
    # With CREATE but not owning the table: an administrator can create the publication.
    pg.execute(f'GRANT CREATE ON DATABASE "{pg.name}" TO bridge_user')
    replicator = services("replicator", pg, nats_url, table="t", database_url=url)
    stopped_with(replicator, "must be owner of table t", "have an administrator run")
    # Once an administrator did, the bridge uses that publication as it is.
    pg.execute("CREATE PUBLICATION bridge_pub FOR TABLE t WITH (publish_via_partition_root = true)")
    services("replicator", pg, nats_url, table="t", database_url=url).wait_healthy()


def test_an_invalid_slot_name_stops(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services("replicator", pg, nats_url, table="t", slot="Bad-Slot")
    stopped_with(replicator, "stopping:", "Bad-Slot")


@pytest.mark.parametrize("command", ["replicator", "snapshotter", "admin"])
def test_a_malformed_url_or_sslmode_stops_every_service_without_showing_the_password(
    pg: Database, nats_url: str, services: Callable[..., Service], command: str
) -> None:
    raw_percent = f"postgresql://postgres:{PASSWORD}x@127.0.0.1:5432/db"  # '%et' is no escape
    service = services(command, pg, nats_url, table="t", database_url=raw_percent)
    assert service.wait(30) == 2
    assert "write a literal % in a password as %25" in service.output()
    assert "s3cr" not in service.output() and "Pa:ss" not in service.output()

    bogus = f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:5432/db?sslmode=bogus"
    service = services(command, pg, nats_url, table="t", database_url=bogus)
    assert service.wait(30) == 2
    assert "sslmode='bogus' is not one of" in service.output()
    assert "s3cr" not in service.output()


@pytest.fixture(scope="module")
def scram_server() -> Iterator[PostgresServer]:
    """A server that checks passwords (scram-sha-256), as every production one does."""
    with PostgresServer.create(password=PASSWORD) as server:
        yield server


def test_a_wrong_password_stops_replicator_and_snapshotter_and_no_output_shows_it(
    scram_server: PostgresServer, nats_url: str, services: Callable[..., Service]
) -> None:
    name = scram_server.create_database()
    try:
        db = Database(scram_server, name)
        db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        wrong = PASSWORD.replace("s3cr", "wr0ng")
        url = db.url.replace(quote(PASSWORD, safe=""), quote(wrong, safe=""))
        assert url != db.url
        outputs = []
        for command in ("replicator", "snapshotter"):
            service = services(command, db, nats_url, table="t", database_url=url)
            stopped_with(service, "stopping:", "password authentication failed")
            outputs.append(service.output())
        admin = services("admin", db, nats_url, table="t", database_url=url)
        health = wait_for(
            lambda: _get(f"http://127.0.0.1:{admin.port}/health"), 30, "the admin", admin
        )
        assert "password authentication failed" in health
        outputs += [health, _get(f"http://127.0.0.1:{admin.port}/status") or ""]
        admin.terminate()
        outputs.append(admin.output())
        # The right password works: the replicator streams.
        services("replicator", db, nats_url, table="t").wait_healthy()
        for text in outputs:
            for secret in (wrong, quote(wrong, safe=""), "wr0ng", PASSWORD, "Pa:ss"):
                assert secret not in text, (secret, text[-2000:])
    finally:
        scram_server.drop_database(name)


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None


def test_an_outage_is_one_line_and_the_slot_gauge_follows_it(
    pg: Database,
    nats_url: str,
    services: Callable[..., Service],
    pg_server: PostgresServer,
    nats_server: Any,
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services("replicator", pg, nats_url, table="t", slot_check_seconds=1)
    snapshotter = services("snapshotter", pg, nats_url, table="t").wait_healthy()
    replicator.wait_healthy()
    wait_for(lambda: "bridge_slot_active 1.0" in replicator.metrics(), 30, "an active slot")
    pg_server.stop()
    try:
        wait_for(lambda: "bridge_slot_active 0.0" in replicator.metrics(), 30, "slot_active 0")
    finally:
        pg_server.start()
    nats_server.stop()
    time.sleep(3)
    nats_server.start()
    replicator.wait_healthy(90)
    snapshotter.wait_healthy(90)
    for service in (replicator, snapshotter):
        assert "Traceback" not in service.output(), service.output()[-4000:]


def test_a_snapshot_error_reply_and_the_retry_log_hold_no_password(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    gone = f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/db"
    snapshotter = services("snapshotter", pg, nats_url, table="t", database_url=gone)
    wait_for(lambda: snapshotter.health() == 503, 30, "the snapshotter", snapshotter)
    reply = request(nats_url, "t")
    assert reply["reason"] == "postgres_unavailable", reply
    wait_for(lambda: "retrying" in snapshotter.output(), 30, "a retry line", snapshotter)
    for text in (json.dumps(reply), snapshotter.output(), snapshotter.metrics()):
        for secret in (PASSWORD, quote(PASSWORD, safe=""), "s3cr", "Pa:ss"):
            assert secret not in text, (secret, text[-2000:])
