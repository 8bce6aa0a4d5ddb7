"""Real schemas: partitioned tables, generated columns, domains, and databases whose settings
would change PostgreSQL's text output. Snapshot + CDC must rebuild each table exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for
from tests.harness.streams import init_messages, kv_get, request


def snapshot_rows(nats_url: str, table: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta = request(nats_url, table)
    assert "error" not in meta, meta
    chunks = init_messages(nats_url, f"init.snap.{table}.{meta['snapshot_id']}.*")
    return meta, [row for _, _, data in chunks for row in msgpack.unpackb(data)["data"]]


def events(nats_url: str, count: int, replicator: Service) -> list[tuple[str, dict[str, Any]]]:
    found = wait_for(
        lambda: (m := stream_messages(nats_url)) and len(m) >= count and m,
        30,
        f"{count} CDC events",
        replicator,
    )
    return [(subject, event) for subject, _, event in found]


def test_a_partitioned_table_streams_as_itself_across_partitions_and_restarts(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute(
        "CREATE TABLE m (id int, d date, note text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d)"
    )
    pg.execute(
        "CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    )
    pg.execute(
        "CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
    )
    replicator = services("replicator", pg, nats_url, table="m").wait_healthy()
    pg.execute("INSERT INTO m VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b')")
    pg.execute("UPDATE m SET d = '2025-06-01' WHERE id = 1")  # moves to m_2025
    # Restarts must work: the second start once failed on "already member of publication".
    assert replicator.terminate() == 0
    replicator = services("replicator", pg, nats_url, table="m").wait_healthy()
    pg.execute(
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
    )
    pg.execute("INSERT INTO m VALUES (3, '2026-02-01', 'c')")
    got = events(nats_url, 5, replicator)
    assert [s for s, _ in got] == [
        "cdc.m.insert",
        "cdc.m.insert",
        "cdc.m.delete",  # a row moving partition: PostgreSQL decodes a delete and an insert,
        "cdc.m.insert",  # both of the parent, in one transaction
        "cdc.m.insert",
    ]
    assert {e["table"] for _, e in got} == {"m"}
    gone, moved = got[2][1], got[3][1]
    assert gone["old"] == {"id": 1, "d": "2024-05-01"}
    assert moved["data"] == {"id": 1, "d": "2025-06-01", "note": "a"}
    assert gone["commit_lsn"] == moved["commit_lsn"] and gone["ordinal"] < moved["ordinal"]
    assert got[4][1]["data"]["id"] == 3

    services("snapshotter", pg, nats_url, table="m").wait_healthy()
    _, rows = snapshot_rows(nats_url, "m")
    assert sorted(r["id"] for r in rows) == [1, 2, 3]


def test_an_operator_publication_without_partition_root_is_a_clear_error(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE m (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d)")
    pg.execute("CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    pg.execute("CREATE PUBLICATION bridge_pub FOR TABLE m")
    replicator = services("replicator", pg, nats_url, table="m")
    assert replicator.wait(60) == 2
    errors = [line for line in replicator.output().splitlines() if "partition root" in line]
    assert (
        errors
        and 'ALTER PUBLICATION "bridge_pub" SET (publish_via_partition_root = true)' in (errors[0])
    ), replicator.output()[-2000:]
    assert "Traceback" not in replicator.output()


def test_generated_columns_agree_between_cdc_snapshot_and_schema(
    pg: Database, nats_url: str, services: Callable[..., Service], pg_server: Any
) -> None:
    virtual = ", c int GENERATED ALWAYS AS (a * 100) VIRTUAL" if pg_server.version >= 18 else ""
    pg.execute(
        f"CREATE TABLE g (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 10) STORED"
        f"{virtual})"
    )
    pg.execute("INSERT INTO g (id, a) VALUES (1, 1)")
    replicator = services("replicator", pg, nats_url, table="g").wait_healthy()
    services("snapshotter", pg, nats_url, table="g").wait_healthy()
    pg.execute("INSERT INTO g (id, a) VALUES (2, 6)")
    ((_, event),) = events(nats_url, 1, replicator)
    _, rows = snapshot_rows(nats_url, "g")
    doc = wait_for(lambda: kv_get(nats_url, "g"), 30, "the schema document")
    # PostgreSQL 18 publishes stored generated columns (the bridge's publication asks it to);
    # earlier versions cannot, and no version publishes virtual ones.
    published = ["id", "a", "b"] if pg_server.version >= 18 else ["id", "a"]
    assert list(event["data"]) == published
    assert [list(r) for r in rows] == [published, published]
    assert [c["name"] for c in doc["columns"]] == published
    if pg_server.version >= 18:
        assert event["data"] == {"id": 2, "a": 6, "b": 60}
        assert rows[0] == {"id": 1, "a": 1, "b": 10}


def test_values_do_not_depend_on_the_databases_settings(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    for setting, value in (
        ("datestyle", "SQL, DMY"),
        ("timezone", "Asia/Kolkata"),
        ("intervalstyle", "sql_standard"),
        ("extra_float_digits", "0"),
    ):
        pg.execute(f"ALTER DATABASE {pg.name} SET {setting} = '{value}'")
    pg.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    pg.execute("CREATE DOMAIN small_positive AS positive CHECK (VALUE < 100)")
    pg.execute(
        "CREATE TABLE v (id int PRIMARY KEY, ts timestamptz, d date, i interval,"
        " f8 float8, f4 real, p positive, s small_positive)"
    )
    insert = (
        "INSERT INTO v VALUES ({id}, '2024-06-01 10:00:00.5+00', '2024-01-02',"
        " '1 day 2 hours 3 minutes 4 seconds', 0.1::float8 + 0.2::float8, 1/3::real, 7, 8)"
    )
    pg.execute(insert.format(id=1))
    replicator = services("replicator", pg, nats_url, table="v").wait_healthy()
    services("snapshotter", pg, nats_url, table="v").wait_healthy()
    pg.execute(insert.format(id=2))
    ((_, event),) = events(nats_url, 1, replicator)
    _, rows = snapshot_rows(nats_url, "v")
    expected = {
        "ts": "2024-06-01 10:00:00.5+00",
        "d": "2024-01-02",
        "i": "1 day 02:03:04",
        "f8": 0.30000000000000004,
        "f4": 0.33333334,  # the shortest text that reads back as the same real
        "p": 7,
        "s": 8,
    }
    assert event["data"] == {"id": 2, **expected}
    assert rows == [{"id": 1, **expected}, {"id": 2, **expected}]


def test_the_last_schema_message_matches_a_table_that_returned_to_an_earlier_shape(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    services("snapshotter", pg, nats_url, table="t").wait_healthy()

    def last_columns() -> list[str]:
        messages = init_messages(nats_url, "init.schema.t")
        return [c["name"] for c in msgpack.unpackb(messages[-1][2])["columns"]] if messages else []

    wait_for(lambda: last_columns() == ["id"], 30, "the first schema")
    pg.execute("ALTER TABLE t ADD COLUMN extra int")
    wait_for(lambda: last_columns() == ["id", "extra"], 30, "the added column")
    pg.execute("ALTER TABLE t DROP COLUMN extra")
    wait_for(lambda: last_columns() == ["id"], 30, "the dropped column's schema")
    assert len(init_messages(nats_url, "init.schema.t")) == 3


def test_a_renamed_table_is_followed_by_cdc_schema_and_snapshots(
    pg: Database, nats_url: str, services: Callable[..., Service], pg_server: Any
) -> None:
    pg.execute("CREATE TABLE a (id int PRIMARY KEY, note text)")
    pg.execute("INSERT INTO a VALUES (1, 'before')")
    replicator = services("replicator", pg, nats_url, table="a").wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, table="a").wait_healthy()
    wait_for(lambda: kv_get(nats_url, "a"), 30, "the schema of a")
    pg.execute("ALTER TABLE a RENAME TO b")
    pg.execute("INSERT INTO b VALUES (2, 'after')")
    doc = wait_for(lambda: kv_get(nats_url, "b"), 30, "the schema under the new name")
    assert doc["schema"] == "public.b" and [c["name"] for c in doc["columns"]] == ["id", "note"]
    assert "was renamed to public.b" in snapshotter.output()
    meta, rows = snapshot_rows(nats_url, "b")
    assert meta["table"] == "b" and [r["id"] for r in rows] == [1, 2]
    # A pipeline restart (PostgreSQL restarted) keeps streaming under the new name.
    pg_server.restart()
    wait_for(lambda: "was renamed to public.b" in replicator.output(), 60, "the rename notice")
    replicator.wait_healthy(60)
    pg.execute("INSERT INTO b VALUES (3, 'after restart')")
    got = events(nats_url, 2, replicator)
    assert [(s, e["data"]["id"]) for s, e in got] == [("cdc.b.insert", 2), ("cdc.b.insert", 3)]
