"""Tables of the shapes a real database has, through the whole bridge (replicator, snapshotter,
`bridge replica`, `bridge verify`): followed exactly, or refused up front naming the table
and the fix; never a crash, an endless retry or a copy that silently goes stale.

- every column dropped, with rows (rows without columns);
- one TOASTed column under REPLICA IDENTITY FULL, updated to itself (every column
  `unchanged`);
- key-less, 1,102 columns, REPLICA IDENTITY FULL (a WHERE deeper than SQLite's limit as one
  chain);
- a primary key with INCLUDE columns, one of type box (no ordering operator);
- an inheritance parent with a child (its own rows only, as CDC has them);
- a partition and an unlogged table named as tables: refused by name.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.dev.servers import ServerError, find_pg_bindir
from tests.harness.copies import bootstrapped, bridge, start_replica
from tests.harness.postgres import Database, PostgresServer
from tests.harness.services import Service, copy_rows, slot_lag, wait_for

WIDE = 1102
TABLES = "dropped,toasted,wide,included,parent"


def create_shapes(pg: Database) -> None:
    wide = ", ".join(f"c{i} int" for i in range(WIDE))
    pg.execute(
        "CREATE TABLE dropped (a int);"
        "INSERT INTO dropped SELECT g FROM generate_series(1, 3) g;"
        "ALTER TABLE dropped DROP COLUMN a;"
        "ALTER TABLE dropped REPLICA IDENTITY FULL;"
        "CREATE TABLE toasted (f1 text);"
        "ALTER TABLE toasted REPLICA IDENTITY FULL;"
        "INSERT INTO toasted SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g;"
        f"CREATE TABLE wide ({wide});"
        "ALTER TABLE wide REPLICA IDENTITY FULL;"
        f"INSERT INTO wide SELECT {', '.join(['g'] * WIDE)} FROM generate_series(1, 3) g;"
        "CREATE TABLE included (c1 int, c2 int, c3 box, c4 text,"
        " PRIMARY KEY (c1, c2) INCLUDE (c3, c4));"
        "INSERT INTO included SELECT g, g, box(point(g, g), point(0, 0)), 'x'"
        " FROM generate_series(1, 50) g;"
        "CREATE TABLE parent (id int PRIMARY KEY, note text);"
        "CREATE TABLE child (extra int) INHERITS (parent);"
        "INSERT INTO parent VALUES (1, 'own'), (2, 'own');"
        "INSERT INTO child VALUES (10, 'child', 1), (11, 'child', 2)"
    )


def change_shapes(pg: Database) -> None:
    pg.execute(
        "INSERT INTO dropped DEFAULT VALUES;"
        "DELETE FROM dropped WHERE ctid = (SELECT min(ctid) FROM dropped);"
        "UPDATE toasted SET f1 = f1;"
        "UPDATE wide SET c1101 = -1 WHERE c0 = 2;"
        "DELETE FROM wide WHERE c0 = 3;"
        "UPDATE included SET c4 = 'y', c3 = box(point(1, 1), point(2, 2)) WHERE c1 <= 10;"
        "DELETE FROM included WHERE c1 > 45;"
        "INSERT INTO parent VALUES (3, 'own');"
        "UPDATE parent SET note = 'changed' WHERE id = 1;"
        "INSERT INTO child VALUES (12, 'child', 3)"
    )


def test_odd_tables_are_followed_exactly_through_replica_and_verify(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    create_shapes(pg)
    replicator = services("replicator", pg, nats_url, table=TABLES).wait_healthy()
    services("snapshotter", pg, nats_url, table=TABLES).wait_healthy()
    path, names = tmp_path / "copy.db", TABLES.split(",")
    replica = start_replica(replicator.env, path, tmp_path / "replica.log", *names)
    wait_for(lambda: bootstrapped(path), 90, "the copy to load every table", replica)
    change_shapes(pg)
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to publish them", replicator)
    wait_for(lambda: "caught up" in replica.output(), 30, "the copy to catch up", replica)
    assert replica.terminate() == 0
    output = replica.output()
    assert "Traceback" not in output and "asking again" not in output, output[-3000:]
    result = bridge("verify", *names, "--sqlite", str(path), env=replicator.env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": equal") == len(names), result.stdout
    db = sqlite3.connect(path)
    parent = sorted(db.execute('SELECT id, note FROM "public.parent"').fetchall())
    assert parent == [(1, "changed"), (2, "own"), (3, "own")]  # the children's rows are theirs
    assert db.execute('SELECT count(*) FROM "public.dropped"').fetchone() == (3,)


def test_a_partition_or_an_unlogged_table_is_refused_by_name(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute(
        "CREATE TABLE m (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);"
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"
        "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)"
    )
    for table, said in (
        ("m_2026", "public.m_2026 is a partition of m: its changes are published as m's"),
        ("scratch", "public.scratch is UNLOGGED: PostgreSQL writes no WAL for it"),
    ):
        replicator = services("replicator", pg, nats_url, table=table)
        assert replicator.wait(60) == 2
        assert said in replicator.output(), replicator.output()[-2000:]
        assert "Traceback" not in replicator.output()


def test_a_table_that_cannot_be_loaded_is_left_out_and_the_others_go_on(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """A chunked snapshot of a key-less table is refused for good: the copy says so by name,
    goes on with the other table, and asks for the left-out one again at its next start
    (here without --snapshot-mode chunked, so it loads); then both verify equal."""
    pg.execute(
        "CREATE TABLE keyed (id int PRIMARY KEY, v text);"
        "CREATE TABLE keyless (id int, v text); ALTER TABLE keyless REPLICA IDENTITY FULL;"
        "INSERT INTO keyed VALUES (1, 'a'); INSERT INTO keyless VALUES (1, 'a')"
    )
    replicator = services("replicator", pg, nats_url, table="keyed,keyless").wait_healthy()
    services("snapshotter", pg, nats_url, table="keyed,keyless").wait_healthy()
    path, env = tmp_path / "copy.db", replicator.env
    replica = start_replica(
        env, path, tmp_path / "first.log", "keyed", "keyless", extra=["--snapshot-mode", "chunked"]
    )
    wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to load", replica)
    pg.execute("INSERT INTO keyed VALUES (2, 'b'); INSERT INTO keyless VALUES (2, 'b')")
    wait_for(lambda: "left out of the copy: public.keyless" in replica.output(), 30, "the report")
    wait_for(lambda: rows(path, "public.keyed") == [(1, "a"), (2, "b")], 30, "the other table")
    assert replica.terminate() == 0
    first = replica.output()
    assert "public.keyless is left out of the copy: snapshot of public.keyless refused" in first
    assert "no primary key" in first and "Traceback" not in first, first[-3000:]

    replica = start_replica(env, path, tmp_path / "second.log", "keyed", "keyless")
    wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to catch up", replica)
    assert replica.terminate() == 0
    assert "public.keyless: snapshot" in replica.output() and "left out before" in (
        replica.output()
    )
    assert rows(path, "public.keyless") == [(1, "a"), (2, "b")]
    result = bridge("verify", "keyed", "keyless", "--sqlite", str(path), env=env)
    assert result.returncode == 0 and result.stdout.count(": equal") == 2, result.stdout


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    return sorted(copy_rows(path, f'SELECT id, v FROM "{table}"'))


def test_a_table_the_replicator_refuses_is_left_out_and_the_others_stream(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """A key-less table in --table (not named in --replica-identity-full) is refused by name,
    left out of the publication (the application's UPDATE on it still works), shown in
    /health and counted; the other table streams, the snapshotter refuses the left-out one
    (`not_published`) and a copy of both follows the other one."""
    pg.execute("CREATE TABLE ok (id int PRIMARY KEY); CREATE TABLE keyless (a int)")
    replicator = services("replicator", pg, nats_url, table="ok,keyless").wait_healthy()
    health = httpx.get(f"http://127.0.0.1:{replicator.port}/health", timeout=5).json()
    assert "no primary key or replica identity" in health["tables_refused"]["public.keyless"]
    assert "bridge_tables_refused 1.0" in replicator.metrics()
    pg.execute("INSERT INTO keyless VALUES (1); UPDATE keyless SET a = 2")
    services("snapshotter", pg, nats_url, table="ok,keyless").wait_healthy()
    path = tmp_path / "copy.db"
    replica = start_replica(replicator.env, path, tmp_path / "replica.log", "ok", "keyless")
    wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to load", replica)
    pg.execute("INSERT INTO ok VALUES (1), (2)")
    wait_for(lambda: ids(path, "public.ok") == [1, 2], 30, "the other table's changes", replica)
    assert replica.terminate() == 0
    assert (
        "public.keyless is left out of the copy: snapshot of public.keyless refused: "
        "publication bridge_pub does not publish public.keyless"
    ) in replica.output()


def ids(path: Path, table: str) -> list[object]:
    return sorted(r[0] for r in copy_rows(path, f'SELECT id FROM "{table}"'))


def postgresql_15() -> Path:
    """PostgreSQL 15's binaries (CI installs Debian's; BRIDGE_TEST_REQUIRE_PG15=1 there)."""
    try:
        return find_pg_bindir("15")
    except ServerError as exc:
        if os.environ.get("BRIDGE_TEST_REQUIRE_PG15") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_on_postgresql_15_a_key_with_a_generated_column_is_followed_or_left_out_by_name(
    nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """PostgreSQL 15 publishes no generated column, also not one in the primary key: a
    change cannot say which row it is about unless the whole old row travels (REPLICA
    IDENTITY FULL). Such a table is followed by its whole row; without it, it is left out
    of the copy naming the fix (it used to stop the copy at the first UPDATE, blaming a
    missing primary key, and crash verify)."""
    server = PostgresServer.create(bindir=postgresql_15())
    try:
        db = Database(server, "postgres")
        db.execute(
            "CREATE TABLE g_default (a int, b int GENERATED ALWAYS AS (a * 2) STORED, v text,"
            " PRIMARY KEY (a, b));"
            "CREATE TABLE g_full (a int, b int GENERATED ALWAYS AS (a * 2) STORED, v text,"
            " PRIMARY KEY (a, b));"
            "ALTER TABLE g_full REPLICA IDENTITY FULL;"
            "INSERT INTO g_default (a, v) VALUES (1, 'x');"
            "INSERT INTO g_full (a, v) VALUES (1, 'x')"
        )
        tables = "g_default,g_full"
        replicator = services("replicator", db, nats_url, table=tables).wait_healthy()
        services("snapshotter", db, nats_url, table=tables).wait_healthy()
        path = tmp_path / "copy.db"
        replica = start_replica(replicator.env, path, tmp_path / "r.log", "g_default", "g_full")
        wait_for(lambda: "caught up:" in replica.output(), 60, "the copy to load", replica)
        db.execute(
            "UPDATE g_full SET v = 'y' WHERE a = 1; INSERT INTO g_full (a, v) VALUES (2, 'z');"
            "UPDATE g_default SET v = 'y'"
        )

        def copied() -> list[object]:
            return sorted(copy_rows(path, 'SELECT a, v FROM "public.g_full"'))

        wait_for(lambda: copied() == [(1, "y"), (2, "z")], 30, "the changes", replica)
        assert replica.terminate() == 0
        assert (
            "public.g_default is left out of the copy: public.g_default: its primary key "
            "includes b, which is not published"
        ) in replica.output(), replica.output()[-3000:]
        # Verify reports every table, the one it cannot compare included.
        result = bridge("verify", "g_default", "g_full", "--sqlite", str(path), env=replicator.env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "public.g_full at " in result.stdout and ": equal" in result.stdout, result.stdout
        assert "absent the copy does not hold the table: public.g_default: its primary key" in (
            result.stdout
        ), result.stdout
    finally:
        server.destroy()
