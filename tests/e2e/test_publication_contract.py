"""The publication is the contract: its column lists and row filters bound every path out of
the database — CDC (PostgreSQL filters it), snapshots, schema documents, copies and verify —
whether the operator made the publication or the bridge made it from its settings."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nats

from pg_nats_bridge.changes import TableSchema
from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, copy_rows, stream_messages, wait_for
from tests.harness.stacks import stopped_with
from tests.harness.streams import init_messages, kv_get, request

SECRET = "NID-"  # prefix of every national_id value: it must never leave the database


def make_tables(pg: Database) -> None:
    pg.execute("CREATE TABLE people (id int PRIMARY KEY, name text, national_id text)")
    pg.execute(
        "INSERT INTO people SELECT g, 'p' || g, 'NID-' || (1000000 + g)"
        " FROM generate_series(1, 50) g"
    )
    # Filtering on a column outside the primary key needs the whole old row in UPDATE and
    # DELETE records (PostgreSQL refuses those statements otherwise).
    pg.execute("CREATE TABLE orders (id int PRIMARY KEY, region text, amount int)")
    pg.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    pg.execute(
        "INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g"
        " FROM generate_series(1, 320) g"
    )


def snapshot_rows(nats_url: str, table: str, snapshot_id: str) -> list[dict[str, Any]]:
    chunks = init_messages(nats_url, f"init.snap.{table}.{snapshot_id}.*")
    return [row for _, _, data in chunks for row in msgpack.unpackb(data)["data"]]


def all_bytes(nats_url: str) -> bytes:
    """Every message of every stream, raw: what the bridge let out of the database."""

    async def fetch() -> bytes:
        nc = await nats.connect(nats_url)
        out = []
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                name = info.config.name
                assert name is not None
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        out.append((await js.get_msg(name, seq)).data or b"")
        finally:
            await nc.close()
        return b"".join(out)

    return asyncio.run(fetch())


def check_contract(
    pg: Database, nats_url: str, replicator: Service, tmp_path: Path, people_columns: list[str]
) -> None:
    """Snapshots, schema documents, CDC, a copy and verify hold what the publication allows."""
    people = request(nats_url, "people")
    assert people["row_count"] == 50
    rows = snapshot_rows(nats_url, "people", people["snapshot_id"])
    assert {tuple(sorted(r)) for r in rows} == {tuple(sorted(people_columns))}
    orders = request(nats_url, "orders")
    assert orders["row_count"] == 160, orders  # of 320: the filter's, evaluated by PostgreSQL
    assert {r["region"] for r in snapshot_rows(nats_url, "orders", orders["snapshot_id"])} == {"eu"}

    doc = kv_get(nats_url, "people")
    assert doc is not None and [c["name"] for c in doc["columns"]] == people_columns
    orders_doc = kv_get(nats_url, "orders")
    assert orders_doc is not None and orders_doc["row_filter"] == "(region = 'eu'::text)"
    assert TableSchema.from_document(orders_doc).row_filter == "(region = 'eu'::text)"
    schema_messages = init_messages(nats_url, "init.schema.people")
    last = msgpack.unpackb(schema_messages[-1][2])
    assert [c["name"] for c in last["columns"]] == people_columns

    # A copy follows while rows move in and out of the filter.
    env = replicator.env
    path = tmp_path / "copy.db"
    log = tmp_path / "replica.log"
    replica = Service("replica", env, 0, log)
    with open(log, "ab") as out:
        replica.process = subprocess.Popen(
            [BRIDGE, "replica", "people", "orders", "--sqlite", str(path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def copy(query: str) -> list[Any]:
        return copy_rows(path, query)

    try:
        wait_for(
            lambda: copy('SELECT count(*) FROM "public.orders"') == [(160,)],
            60,
            "the copy to bootstrap",
            replica,
        )
        pg.execute("INSERT INTO people VALUES (51, 'p51', 'NID-2000051')")
        pg.execute("INSERT INTO orders VALUES (1001, 'us', 1), (1002, 'eu', 2)")
        pg.execute("UPDATE orders SET region = 'us' WHERE id = 2")  # leaves: a delete
        pg.execute("UPDATE orders SET region = 'eu' WHERE id = 3")  # enters: an insert
        pg.execute("UPDATE orders SET amount = -4 WHERE id = 4")  # stays: an update
        pg.execute("DELETE FROM orders WHERE id IN (5, 6)")  # 6 is eu
        expected = sorted(pg.execute("SELECT id, region, amount FROM orders WHERE region = 'eu'"))
        wait_for(
            lambda: sorted(copy('SELECT id, region, amount FROM "public.orders"')) == expected,
            30,
            "the copy to hold exactly the filter's rows",
            replica,
        )
        wait_for(lambda: (51,) in copy('SELECT id FROM "public.people"'), 30, "people 51")
        columns = [r[1] for r in copy('PRAGMA table_info("public.people")')]
        assert columns == people_columns
        assert replica.terminate() == 0
    finally:
        replica.stop()
    verify = subprocess.run(
        [BRIDGE, "verify", "people", "orders", "--sqlite", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count(": equal") == 2, verify.stdout

    events = [
        (subject, event)
        for subject, _, event in stream_messages(nats_url)
        if subject.startswith("cdc.orders.")
    ]
    operations = [
        (s.rsplit(".", 1)[1], (e.get("data") or e.get("old") or {}).get("id")) for s, e in events
    ]
    assert operations == [
        ("insert", 1002),
        ("delete", 2),
        ("insert", 3),
        ("update", 4),
        ("delete", 6),
    ], operations
    assert SECRET.encode() not in all_bytes(nats_url)


def test_an_operators_publication_bounds_snapshots_schemas_cdc_and_copies(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_tables(pg)
    pg.execute(
        "CREATE PUBLICATION ops_pub FOR TABLE people (id, name), orders WHERE (region = 'eu')"
        " WITH (publish_via_partition_root = true)"
    )
    settings = {"table": "people,orders", "publication": "ops_pub"}
    replicator = services("replicator", pg, nats_url, **settings).wait_healthy()
    services("snapshotter", pg, nats_url, **settings).wait_healthy()
    check_contract(pg, nats_url, replicator, tmp_path, ["id", "name"])


def test_the_bridges_own_publication_takes_column_lists_and_row_filters_from_settings(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    make_tables(pg)
    settings = {
        "table": "people(id,name),orders",
        "row_filter": '{"orders": "region = \'eu\'"}',
    }
    replicator = services("replicator", pg, nats_url, **settings).wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, **settings, schema_poll_seconds=1)
    snapshotter.wait_healthy()
    (described,) = pg.execute(
        "SELECT array_agg(attnames::text || coalesce(rowfilter, '') ORDER BY tablename)"
        " FROM pg_publication_tables WHERE pubname = 'bridge_pub'"
    )
    assert described[0] == ["{id,region,amount}(region = 'eu'::text)", "{id,name}"], described
    check_contract(pg, nats_url, replicator, tmp_path, ["id", "name"])

    # The settings change: the publication follows, and the snapshotter republishes the
    # schema and says what consumers must do.
    assert replicator.terminate() == 0
    replicator = services(
        "replicator", pg, nats_url, table="people(id),orders", row_filter="{}"
    ).wait_healthy()
    assert "publication bridge_pub now publishes of public.people: columns id" in (
        replicator.output()
    )
    wait_for(
        lambda: (
            [c["name"] for c in (kv_get(nats_url, "people") or {}).get("columns", [])] == ["id"]
        ),
        15,
        "the narrower schema document",
    )
    wait_for(lambda: "row_filter" not in (kv_get(nats_url, "orders") or {"row_filter": 1}), 15,
             "the filter gone from orders' document")  # fmt: skip
    output = snapshotter.output()
    assert "public.people: published columns now id (removed name)" in output, output[-2000:]
    assert "copies hold the old columns until they take a new snapshot" in output
    assert "row filter is now none (every row) (was (region = 'eu'::text))" in output


def test_a_row_filter_that_would_break_the_applications_updates_is_refused(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """With the default replica identity (the primary key), PostgreSQL refuses every UPDATE
    and DELETE on a table whose publication filters on another column — the application's
    statements, not the bridge's. The bridge asks PostgreSQL's check first and stops saying
    what to do, leaving no publication behind."""
    pg.execute("CREATE TABLE orders (id int PRIMARY KEY, region text)")
    pg.execute("INSERT INTO orders VALUES (1, 'eu')")
    replicator = services(
        "replicator", pg, nats_url, table="orders", row_filter='{"orders": "region = \'eu\'"}'
    )
    line = stopped_with(replicator, "would make PostgreSQL refuse every UPDATE and DELETE")
    assert "REPLICA IDENTITY FULL" in line
    assert pg.execute("SELECT count(*) FROM pg_publication")[0][0] == 0
    pg.execute("UPDATE orders SET region = 'us' WHERE id = 1")  # the application still writes


def test_column_lists_and_row_filters_in_settings_are_checked_at_start(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    for settings, needle in (
        ({"table": "t", "row_filter": '{"other": "id > 1"}'}, "names 'other', which is not in"),
        ({"table": "t(id,)"}, "an empty column name"),
        ({"table": "t(id,id)"}, "a column is listed twice"),
        ({"table": "t", "row_filter": '{"t": " "}'}, "is empty"),
    ):
        service = services("replicator", pg, nats_url, **settings)
        assert service.wait(30) == 2, service.output()
        assert needle in service.output(), service.output()
