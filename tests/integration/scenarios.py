"""SQL that makes PostgreSQL produce each pgoutput message type, and the bytes it produced.

Each scenario uses its own publication and slot, so all of them can run in one database (the
fuzz corpus does that) or each in a test's own database.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.capture import Captured, create_slot, get_changes, max_proto

Conn = psycopg.Connection[Any]


def dml(conn: Conn) -> list[Captured]:
    """Begin, Relation, Insert, Update (no old tuple), Delete ('K'), Commit."""
    conn.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, ok bool, raw bytea,"
        " ratio float8, doc jsonb, note text)"
    )
    conn.execute("CREATE PUBLICATION pub_dml FOR TABLE items")
    create_slot(conn, "s_dml")
    with conn.transaction():
        conn.execute(
            "INSERT INTO items VALUES (1, 'widget', 9.99, true, '\\x00ff', 0.5,"
            " '{\"a\": [1, 2]}', NULL)"
        )
        conn.execute("UPDATE items SET name = 'gadget' WHERE id = 1")
        conn.execute("DELETE FROM items WHERE id = 1")
    return get_changes(conn, "s_dml", "pub_dml")


def copy(conn: Conn, rows: int = 1000) -> list[Captured]:
    """COPY writes multi-insert WAL records: many Inserts that share one LSN."""
    conn.execute("CREATE TABLE copied (id int PRIMARY KEY, label text)")
    conn.execute("CREATE PUBLICATION pub_copy FOR TABLE copied")
    create_slot(conn, "s_copy")
    with conn.cursor().copy("COPY copied (id, label) FROM STDIN") as cp:
        for i in range(rows):
            cp.write_row((i, f"row {i}"))
    return get_changes(conn, "s_copy", "pub_copy")


def unchanged_toast(conn: Conn) -> list[Captured]:
    """An UPDATE that leaves an out-of-line value alone sends it as 'u'."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    conn.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    conn.execute("CREATE PUBLICATION pub_toast FOR TABLE docs")
    conn.execute("INSERT INTO docs VALUES (1, 'first', repeat('x', 20000))")
    create_slot(conn, "s_toast")
    conn.execute("UPDATE docs SET title = 'second' WHERE id = 1")
    return get_changes(conn, "s_toast", "pub_toast")


def replica_identity_full(conn: Conn) -> list[Captured]:
    """REPLICA IDENTITY FULL: Update and Delete carry the whole old row ('O')."""
    conn.execute("CREATE TABLE full_rows (id int, v text)")
    conn.execute("ALTER TABLE full_rows REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION pub_full FOR TABLE full_rows")
    conn.execute("INSERT INTO full_rows VALUES (1, 'a')")
    create_slot(conn, "s_full")
    conn.execute("UPDATE full_rows SET v = 'b'")
    conn.execute("DELETE FROM full_rows")
    return get_changes(conn, "s_full", "pub_full")


def key_change(conn: Conn) -> list[Captured]:
    """An UPDATE of the primary key sends the old key ('K')."""
    conn.execute("CREATE TABLE keyed (id int PRIMARY KEY, v text)")
    conn.execute("CREATE PUBLICATION pub_key FOR TABLE keyed")
    conn.execute("INSERT INTO keyed VALUES (1, 'a')")
    create_slot(conn, "s_key")
    conn.execute("UPDATE keyed SET id = 101 WHERE id = 1")
    return get_changes(conn, "s_key", "pub_key")


def truncate(conn: Conn) -> list[Captured]:
    """TRUNCATE of several tables: one message listing them, with its options."""
    conn.execute("CREATE TABLE parents (id serial PRIMARY KEY)")
    conn.execute("CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents)")
    conn.execute("CREATE TABLE loners (id int PRIMARY KEY)")
    conn.execute("CREATE PUBLICATION pub_trunc FOR TABLE parents, children, loners")
    create_slot(conn, "s_trunc")
    conn.execute("TRUNCATE parents, children RESTART IDENTITY CASCADE")
    conn.execute("TRUNCATE loners")
    return get_changes(conn, "s_trunc", "pub_trunc")


def messages(conn: Conn) -> list[Captured]:
    """pg_logical_emit_message, transactional and not."""
    conn.execute("CREATE PUBLICATION pub_msg FOR ALL TABLES")
    create_slot(conn, "s_msg")
    with conn.transaction():
        conn.execute("SELECT pg_logical_emit_message(true, 'bridge', 'in a transaction')")
    conn.execute("SELECT pg_logical_emit_message(false, 'bridge', '\\x0001ff'::bytea)")
    # A message outside a transaction is not flushed by itself (PostgreSQL < 17 has no flush
    # argument); a later catalog write's commit flushes the WAL up to it.
    conn.execute("CREATE TABLE flush_marker ()")
    return get_changes(conn, "s_msg", "pub_msg", messages="true")


def user_type(conn: Conn) -> list[Captured]:
    """A column of a user-defined type makes pgoutput describe the type first (Type)."""
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.execute("CREATE TABLE moods (id int PRIMARY KEY, m mood)")
    conn.execute("CREATE PUBLICATION pub_type FOR TABLE moods")
    create_slot(conn, "s_type")
    conn.execute("INSERT INTO moods VALUES (1, 'happy')")
    return get_changes(conn, "s_type", "pub_type")


def origin(conn: Conn, url: str) -> list[Captured]:
    """A transaction replayed from a replication origin starts with an Origin message."""
    conn.execute("CREATE TABLE replayed (id int PRIMARY KEY)")
    conn.execute("CREATE PUBLICATION pub_origin FOR TABLE replayed")
    create_slot(conn, "s_origin")
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_replication_origin_create('upstream')")
        other.execute("SELECT pg_replication_origin_session_setup('upstream')")
        with other.transaction():
            other.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            other.execute("INSERT INTO replayed VALUES (1)")
        other.execute("SELECT pg_replication_origin_session_reset()")
    return get_changes(conn, "s_origin", "pub_origin")


def binary(conn: Conn) -> list[Captured]:
    """`binary 'true'`: column values in binary send format ('b')."""
    conn.execute("CREATE TABLE bin (id int PRIMARY KEY, big int8, f float8, t text)")
    conn.execute("CREATE PUBLICATION pub_bin FOR TABLE bin")
    create_slot(conn, "s_bin")
    conn.execute("INSERT INTO bin VALUES (7, 9000000000, 2.5, 'txt')")
    return get_changes(conn, "s_bin", "pub_bin", binary="true")


def streamed(conn: Conn, rows: int = 2000) -> list[Captured]:
    """Transactions larger than logical_decoding_work_mem, streamed while in progress: one
    committed, one aborted whole, one whose subtransaction is rolled back."""
    conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, pad text)")
    conn.execute("CREATE PUBLICATION pub_stream FOR TABLE bulk")
    create_slot(conn, "s_stream")
    fill = "INSERT INTO bulk SELECT g, repeat('p', 100) FROM generate_series(%s::int, %s::int) g"
    with conn.transaction():
        conn.execute(fill, (1, rows))
    with conn.transaction():
        conn.execute(fill, (rows + 1, 2 * rows))
        raise psycopg.Rollback
    with conn.transaction():
        conn.execute(fill, (2 * rows + 1, 3 * rows))
        with conn.transaction() as savepoint:
            conn.execute(fill, (3 * rows + 1, 4 * rows))
            raise psycopg.Rollback(savepoint)
    conn.execute("SET logical_decoding_work_mem = '64kB'")
    proto = max_proto(conn)
    mode = "parallel" if proto >= 4 else "on"
    return get_changes(conn, "s_stream", "pub_stream", proto_version=str(proto), streaming=mode)


def two_phase(conn: Conn, rows: int = 2000) -> list[Captured]:
    """PREPARE TRANSACTION decoded at prepare time: committed, rolled back, and streamed."""
    conn.execute("CREATE TABLE prepared (id int PRIMARY KEY, pad text)")
    conn.execute("CREATE PUBLICATION pub_2pc FOR TABLE prepared")
    create_slot(conn, "s_2pc", two_phase=True)
    for gid, sql_end, first in (
        ("g_commit", "COMMIT PREPARED", 1),
        ("g_rollback", "ROLLBACK PREPARED", 2),
    ):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO prepared VALUES (%s, 'small')", (first,))
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
        conn.execute(f"{sql_end} '{gid}'")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO prepared SELECT g, repeat('p', 100) FROM generate_series(10, %s::int) g",
        (rows,),
    )
    conn.execute("PREPARE TRANSACTION 'g_streamed'")
    conn.execute("COMMIT PREPARED 'g_streamed'")
    conn.execute("SET logical_decoding_work_mem = '64kB'")
    return get_changes(
        conn, "s_2pc", "pub_2pc", proto_version="3", two_phase="true", streaming="on"
    )


def everything(conn: Conn, url: str) -> list[Captured]:
    """Every scenario, for the fuzz corpus (in scenario order, each stream decodable alone)."""
    out: list[Captured] = []
    for scenario in (
        dml,
        copy,
        unchanged_toast,
        replica_identity_full,
        key_change,
        truncate,
        messages,
        user_type,
        binary,
        streamed,
        two_phase,
    ):
        out += scenario(conn)
    out += origin(conn, url)
    return out
