"""The event trigger that announces schema changes at the DDL (services/replicator/
ddl_capture.py), on a real PostgreSQL: the message it writes in the DDL's transaction says the
new shape as pgoutput would (published columns, types, the replica identity's key), a
rewrite, only the publication's tables; it never fails a DDL; installing it twice, or from
the SQL a superuser runs by hand, gives the same trigger."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from services.replicator import ddl_capture
from tests.harness.postgres import Database


def messages(pg: Database, slot: str) -> list[dict[str, Any]]:
    """The trigger's messages decoded from `slot` since the last call."""
    rows = pg.execute(
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL,"
        " 'proto_version', '1', 'publication_names', 'bridge_pub', 'messages', 'true')",
        (slot,),
    )
    found = []
    prefix = ddl_capture.MESSAGE_PREFIX.encode() + b"\0"
    for (data,) in rows:
        data = bytes(data)
        if data[:1] == b"M" and prefix in data:
            content = data[data.index(prefix) + len(prefix) + 4 :]  # past its length
            found.append(json.loads(content))
    return found


def test_the_message_says_the_new_shape_at_the_ddl(pg: Database) -> None:
    pg.execute(
        "CREATE TABLE priced (id int PRIMARY KEY, price numeric(12,2));"
        "CREATE TABLE shop (id int PRIMARY KEY, note text, secret text);"
        "CREATE TABLE other (id int PRIMARY KEY);"
        "CREATE PUBLICATION bridge_pub FOR TABLE priced, shop (id, note)"
    )
    pg.execute("SELECT pg_create_logical_replication_slot('ddl', 'pgoutput')")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        assert ddl_capture.install(conn, "bridge_pub") is None
        assert ddl_capture.install(conn, "bridge_pub") is None  # again: replaced
    pg.execute("ALTER TABLE priced ALTER COLUMN price TYPE numeric(12,1)")
    pg.execute("ALTER TABLE other ADD COLUMN x int")  # not published: no message
    pg.execute("ALTER TABLE shop ADD COLUMN x int")  # not in the column list
    pg.execute("ALTER TABLE priced REPLICA IDENTITY FULL")
    found = messages(pg, "ddl")
    assert [m["publication"] for m in found] == ["bridge_pub"] * 3
    first = found[0]["tables"][0]
    assert (first["schema"], first["table"], first["rewritten"]) == ("public", "priced", True)
    assert [(c["name"], c["type_modifier"], c["key"]) for c in first["columns"]] == [
        ("id", -1, True),
        ("price", (12 << 16 | 1) + 4, False),
    ]
    shop = found[1]["tables"][0]
    assert shop["table"] == "shop" and not shop["rewritten"]
    assert [c["name"] for c in shop["columns"]] == ["id", "note"]
    assert found[2]["tables"][0]["replica_identity"] == "full"
    assert all(c["key"] for c in found[2]["tables"][0]["columns"])


def test_the_sql_for_a_superuser_is_what_install_runs(pg: Database) -> None:
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY); CREATE PUBLICATION bridge_pub FOR TABLE shop"
    )
    text = ddl_capture.install_sql("bridge_pub")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(text)  # type: ignore[arg-type]
        conn.execute(text)  # type: ignore[arg-type]  # twice: replaced
        by_hand = conn.execute(
            "SELECT evtname, evtevent, pg_get_functiondef(evtfoid) FROM pg_event_trigger"
            " ORDER BY evtname"
        ).fetchall()
        assert ddl_capture.install(conn, "bridge_pub") is None
        installed = conn.execute(
            "SELECT evtname, evtevent, pg_get_functiondef(evtfoid) FROM pg_event_trigger"
            " ORDER BY evtname"
        ).fetchall()
    assert len(by_hand) == 3 and by_hand == installed


def test_tables_joining_and_leaving_the_publication_are_said(pg: Database) -> None:
    """ALTER PUBLICATION adding a table, or changing its row filter, says its shape and
    filter; taking it out of the publication, or dropping it, says it is no longer published
    (also for a publication of a whole schema, which lists no table)."""
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, note text);"
        "CREATE TABLE other (id int PRIMARY KEY, n int);"
        "CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY);"
        "CREATE PUBLICATION bridge_pub FOR TABLE shop, TABLES IN SCHEMA sales;"
        "CREATE PUBLICATION elsewhere FOR TABLE shop"
    )
    pg.execute("SELECT pg_create_logical_replication_slot('ddl', 'pgoutput')")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        assert ddl_capture.install(conn, "bridge_pub") is None
    pg.execute("ALTER PUBLICATION bridge_pub ADD TABLE other WHERE (n > 5)")
    pg.execute("ALTER PUBLICATION elsewhere DROP TABLE shop")  # not this publication's
    pg.execute("ALTER PUBLICATION bridge_pub DROP TABLE shop")
    pg.execute("DROP TABLE other")
    pg.execute("DROP TABLE sales.orders")
    found = messages(pg, "ddl")

    def said(message: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (t["schema"], t["table"], t["published"], t.get("row_filter"))
            for t in message["tables"]
        ]

    assert [m["command"] for m in found] == [
        "ALTER PUBLICATION", "ALTER PUBLICATION", "DROP TABLE", "DROP TABLE",
    ]  # fmt: skip
    assert said(found[0]) == [("public", "other", True, "(n > 5)")]
    assert [c["name"] for c in found[0]["tables"][0]["columns"]] == ["id", "n"]
    assert said(found[1]) == [("public", "shop", False, None)]
    assert said(found[2]) == [("public", "other", False, None)]
    assert said(found[3]) == [("sales", "orders", False, None)]
    assert all(t["oid"] > 0 for m in found for t in m["tables"])


def test_the_replicator_says_its_own_publication_changes_as_the_trigger_would(
    pg: Database,
) -> None:
    """Where the trigger is not installed, `announce` (run by the replicator in the
    transaction of its own ALTER PUBLICATION) writes the message the trigger writes."""
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, region text, secret text);"
        "CREATE PUBLICATION bridge_pub FOR TABLE shop (id, region) WHERE (region = 'eu')"
    )
    pg.execute("SELECT pg_create_logical_replication_slot('ddl', 'pgoutput')")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        assert not ddl_capture.installed(conn, "bridge_pub")
        (oid,) = conn.execute("SELECT 'shop'::regclass::oid").fetchone()  # type: ignore[misc]
        with conn.transaction():
            ddl_capture.announce(conn, "bridge_pub", [oid], [])
        with conn.transaction():
            ddl_capture.announce(conn, "bridge_pub", [], [(oid, "public", "shop")])
        assert ddl_capture.install(conn, "bridge_pub") is None
        assert ddl_capture.installed(conn, "bridge_pub")
    # Another filter and back: each SET takes the table out and puts it back.
    for region in ("us", "eu"):
        pg.execute(
            f"ALTER PUBLICATION bridge_pub SET TABLE shop (id, region) WHERE (region = '{region}')"
        )
    pg.execute("ALTER PUBLICATION bridge_pub DROP TABLE shop")
    said, gone, *by_trigger = messages(pg, "ddl")
    assert [t["published"] for m in by_trigger for t in m["tables"]] == [
        False, True, False, True, False,
    ]  # fmt: skip
    assert said["tables"][0]["row_filter"] == "(region = 'eu'::text)"
    assert said["tables"] == by_trigger[3]["tables"]
    assert (
        gone["tables"]
        == by_trigger[4]["tables"]
        == [{"oid": oid, "schema": "public", "table": "shop", "published": False}]
    )
