"""What lands on the CDC stream for each kind of change, checked field by field."""

from __future__ import annotations

from collections.abc import Callable

from shared.lsn import Lsn
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_count, stream_messages, wait_for


def test_every_operation_with_its_payload(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, ok bool, raw bytea,"
        " doc jsonb, body text)"
    )
    pg.execute("ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL")
    pg.execute("CREATE TABLE audit (who text, what text)")
    pg.execute("ALTER TABLE audit REPLICA IDENTITY FULL")
    pg.execute('CREATE TABLE "Odd.Name" (id int PRIMARY KEY)')
    services("replicator", pg, nats_url, table='items,audit,public."Odd.Name"').wait_healthy()
    with pg.connect() as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO items VALUES (1, 'widget', 9.99, true, '\\x00ff', '{\"a\": 1}',"
                " repeat('b', 10000))"
            )
            conn.execute("INSERT INTO items VALUES (2, 'spare', NULL, false, NULL, NULL, NULL)")
        conn.execute("UPDATE items SET name = 'gadget' WHERE id = 1")  # body unchanged (TOAST)
        conn.execute("UPDATE items SET id = 10 WHERE id = 2")  # key change
        conn.execute("DELETE FROM items WHERE id = 10")
        conn.execute("INSERT INTO audit VALUES ('me', 'x')")
        conn.execute("UPDATE audit SET what = 'y'")
        conn.execute("DELETE FROM audit")
        conn.execute('INSERT INTO "Odd.Name" VALUES (5)')
        conn.execute("SELECT pg_logical_emit_message(true, 'app', 'hello')")
        conn.execute("TRUNCATE items, audit")
    wait_for(lambda: stream_count(nats_url) >= 12, 30, "12 messages")
    msgs = stream_messages(nats_url)
    message = msgs.pop(9)
    assert message[0] == "cdc.~message.app" and message[2]["content"] == b"hello"
    subjects = [s for s, _, _ in msgs]
    assert subjects == [
        "cdc.items.insert",
        "cdc.items.insert",
        "cdc.items.update",
        "cdc.items.update",
        "cdc.items.delete",
        "cdc.audit.insert",
        "cdc.audit.update",
        "cdc.audit.delete",
        "cdc.Odd~2EName.insert",
        "cdc.items.truncate",
        "cdc.audit.truncate",
    ], subjects
    by_op = {(p["table"], p["operation"], p["ordinal"], p["xid"]): p for _, _, p in msgs}
    first, second = msgs[0][2], msgs[1][2]
    assert first == {
        "schema": "public",
        "table": "items",
        "operation": "insert",
        "lsn": first["lsn"],
        "commit_lsn": first["commit_lsn"],
        "xid": first["xid"],
        "ordinal": 0,
        "commit_time": first["commit_time"],
        "data": {
            "id": 1,
            "name": "widget",
            "price": "9.99",
            "ok": True,
            "raw": b"\x00\xff",
            "doc": '{"a": 1}',
            "body": "b" * 10000,
        },
        "old": None,
        "unchanged": [],
    }
    assert second["commit_lsn"] == first["commit_lsn"] and second["ordinal"] == 1
    assert Lsn.parse(first["lsn"]) <= Lsn.parse(first["commit_lsn"])
    assert first["commit_time"].endswith("Z") and "T" in first["commit_time"]
    assert second["data"] == {
        "id": 2,
        "name": "spare",
        "price": None,
        "ok": False,
        "raw": None,
        "doc": None,
        "body": None,
    }
    toast = msgs[2][2]
    assert toast["data"] == {
        "id": 1,
        "name": "gadget",
        "price": "9.99",
        "ok": True,
        "raw": b"\x00\xff",
        "doc": '{"a": 1}',
    }
    assert toast["unchanged"] == ["body"] and "body" not in toast["data"] and toast["old"] is None
    key_change = msgs[3][2]
    assert key_change["old"] == {"id": 2} and key_change["data"]["id"] == 10
    assert msgs[4][2]["old"] == {"id": 10} and msgs[4][2]["data"] is None
    assert msgs[6][2]["old"] == {"who": "me", "what": "x"}
    assert msgs[6][2]["data"] == {"who": "me", "what": "y"}
    assert msgs[7][2]["old"] == {"who": "me", "what": "y"}
    assert msgs[8][2]["table"] == "Odd.Name"
    truncates = [p for s, _, p in msgs if s.endswith(".truncate")]
    assert {p["table"] for p in truncates} == {"items", "audit"}
    assert truncates[0]["commit_lsn"] == truncates[1]["commit_lsn"]
    assert [p["ordinal"] for p in truncates] == [0, 1]
    # Every message's Msg-Id is <commit_lsn>:<ordinal>, all distinct.
    ids = [h["Nats-Msg-Id"] for _, h, _ in msgs]
    assert ids == [f"{p['commit_lsn']}:{p['ordinal']}" for _, _, p in msgs]
    assert len(set(ids)) == len(ids)
    assert len(by_op) == len(msgs)


def test_logical_decoding_messages_have_their_own_subject(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    services("replicator", pg, nats_url, table="t").wait_healthy()
    with pg.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("SELECT pg_logical_emit_message(true, 'app.audit', 'hello')")
    wait_for(lambda: stream_count(nats_url) >= 2, 30, "2 messages")
    (s1, _, p1), (s2, h2, p2) = stream_messages(nats_url)
    assert s1 == "cdc.t.insert"
    assert s2 == "cdc.~message.app~2Eaudit"
    assert p2["content"] == b"hello" and p2["transactional"] and p2["ordinal"] == 1
    assert h2["Nats-Msg-Id"] == f"{p1['commit_lsn']}:1"


def test_copy_of_10000_rows_gives_10000_messages_with_distinct_msg_ids(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE copied (id int PRIMARY KEY, label text)")
    services("replicator", pg, nats_url, table="copied").wait_healthy()
    with pg.connect() as conn, conn.cursor().copy("COPY copied FROM STDIN") as copy:
        for i in range(10_000):
            copy.write_row((i, f"row {i}"))
    wait_for(lambda: stream_count(nats_url) >= 10_000, 60, "10,000 messages")
    msgs = stream_messages(nats_url)
    assert len(msgs) == 10_000
    assert len({h["Nats-Msg-Id"] for _, h, _ in msgs}) == 10_000
    assert len({p["lsn"] for _, _, p in msgs}) < 10_000  # rows of one WAL record share an LSN
    assert [p["data"]["id"] for _, _, p in msgs] == list(range(10_000))


def test_schema_change_mid_stream_shows_in_the_next_events(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE evolving (id int PRIMARY KEY, a text, b int)")
    services("replicator", pg, nats_url, table="evolving").wait_healthy()
    pg.execute("INSERT INTO evolving VALUES (1, 'x', 1)")
    pg.execute("ALTER TABLE evolving ADD COLUMN c boolean DEFAULT true")
    pg.execute("INSERT INTO evolving VALUES (2, 'y', 2, false)")
    pg.execute("ALTER TABLE evolving DROP COLUMN a")
    pg.execute("ALTER TABLE evolving ALTER COLUMN b TYPE text")
    pg.execute("INSERT INTO evolving VALUES (3, '3', true)")
    wait_for(lambda: stream_count(nats_url) >= 3, 30, "3 messages")
    rows = [p["data"] for _, _, p in stream_messages(nats_url)]
    assert rows == [
        {"id": 1, "a": "x", "b": 1},
        {"id": 2, "a": "y", "b": 2, "c": False},
        {"id": 3, "b": "3", "c": True},
    ]


def test_text_value_mode(pg: Database, nats_url: str, services: Callable[..., Service]) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, ok bool, raw bytea)")
    services("replicator", pg, nats_url, table="t", value_mode="text").wait_healthy()
    pg.execute("INSERT INTO t VALUES (1, true, '\\x01')")
    wait_for(lambda: stream_count(nats_url) >= 1, 30, "1 message")
    assert stream_messages(nats_url)[0][2]["data"] == {"id": "1", "ok": "t", "raw": "\\x01"}
