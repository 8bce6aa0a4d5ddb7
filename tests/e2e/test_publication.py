"""The publication follows --table when the bridge created it, and is left alone otherwise."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.conftest import Service
from tests.harness.postgres import Database


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
