"""The publication follows --table when the bridge created it, and is left alone otherwise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.harness.copies import bridge, start_replica
from tests.harness.postgres import Database
from tests.harness.services import Service, copy_rows, slot_lag, stream_messages, wait_for


def members(pg: Database) -> list[str]:
    rows = pg.execute(
        "SELECT c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
        " JOIN pg_class c ON c.oid = r.prrelid WHERE p.pubname = 'bridge_pub' ORDER BY 1"
    )
    return [name for (name,) in rows]


def test_the_bridges_publication_follows_the_table_setting(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    for name in ("a", "b", "c"):
        pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    replicator = services("replicator", pg, nats_url, table="a,b").wait_healthy()
    assert members(pg) == ["a", "b"]
    assert replicator.terminate() == 0
    replicator = services("replicator", pg, nats_url, table="a").wait_healthy()
    assert members(pg) == ["a"]
    assert "removed public.b from publication bridge_pub" in replicator.output()
    assert replicator.terminate() == 0
    replicator = services("replicator", pg, nats_url, table="a,c").wait_healthy()
    assert members(pg) == ["a", "c"]
    added = [line for line in replicator.output().splitlines() if "added public.c" in line]
    assert added and "need a snapshot of it" in added[0]


def test_an_operators_publication_is_used_and_never_altered(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    for name in ("a", "b", "c"):
        pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    pg.execute("CREATE PUBLICATION bridge_pub FOR TABLE a, b")
    replicator = services("replicator", pg, nats_url, table="a").wait_healthy()
    assert members(pg) == ["a", "b"]
    assert "also publishes public.b" in replicator.output()
    assert replicator.terminate() == 0
    replicator = services("replicator", pg, nats_url, table="a,c")
    assert replicator.wait(60) == 2
    assert 'ALTER PUBLICATION "bridge_pub" ADD TABLE "public"."c"' in replicator.output()
    assert members(pg) == ["a", "b"]


def test_without_tables_the_bridge_follows_an_operators_publication_and_its_new_tables(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """No --table: an operator's FOR ALL TABLES publication says what streams; the
    snapshotter finds its tables (a partitioned one as itself, a table created later), and
    `bridge replica --all-tables` copies every one of them, equal to PostgreSQL."""
    pg.execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text);"
        "CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY, total int);"
        "CREATE TABLE m (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);"
        "CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"
        "INSERT INTO a VALUES (1, 'x'); INSERT INTO sales.orders VALUES (1, 10);"
        "INSERT INTO m VALUES (1, '2026-02-01');"
        "CREATE PUBLICATION ops FOR ALL TABLES WITH (publish_via_partition_root = true)"
    )
    replicator = services("replicator", pg, nats_url, publication="ops").wait_healthy()
    assert "following publication ops (every table): 3 tables now" in replicator.output()
    snapshotter = services("snapshotter", pg, nats_url, publication="ops").wait_healthy()
    wait_for(
        lambda: "following public.m: publication ops publishes it" in snapshotter.output(),
        30,
        "the snapshotter to find the publication's tables",
        snapshotter,
    )
    path = tmp_path / "copy.db"
    replica = start_replica(replicator.env, path, tmp_path / "replica.log", extra=["--all-tables"])
    wait_for(lambda: "caught up" in replica.output(), 60, "the copy to load", replica)
    assert "--all-tables: 3 tables" in replica.output()
    pg.execute("CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (7)")
    pg.execute("UPDATE a SET v = 'y'; INSERT INTO m VALUES (2, '2026-03-01')")
    wait_for(
        lambda: "following public.later" in snapshotter.output(), 30, "the new table", snapshotter
    )
    wait_for(lambda: slot_lag(pg) == 0, 30, "the replicator to publish it", replicator)
    assert any(subject == "cdc.later.insert" for subject, _, _ in stream_messages(nats_url))

    def applied() -> bool:
        a = copy_rows(path, 'SELECT v FROM "public.a"')
        return a == [("y",)] and copy_rows(path, 'SELECT count(*) FROM "public.m"') == [(2,)]

    wait_for(applied, 30, "the copy to apply the changes", replica)
    assert replica.terminate() == 0
    result = bridge("verify", "a", "sales.orders", "m", "--sqlite", str(path), env=replicator.env)
    assert result.returncode == 0 and result.stdout.count(": equal") == 3, result.stdout


def test_without_tables_and_without_a_publication_to_follow_the_replicator_says_what_to_do(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    replicator = services("replicator", pg, nats_url)
    assert replicator.wait(60) == 2
    assert "no tables configured and no publication 'bridge_pub' to follow" in (
        replicator.output()
    ), replicator.output()[-2000:]
