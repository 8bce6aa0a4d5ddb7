"""The schema watcher reads a table's schema again only when the catalog says it changed (two
catalog queries per poll whatever the number of tables), and then for every kind of change
its document depends on: a column added, dropped, renamed or retyped, a default, the primary
key, the replica identity, the publication's column list; a purged KV entry comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import nats
import psycopg

from services.snapshotter import schema_watch as schema_module
from services.snapshotter.schema_watch import SchemaWatcher
from shared import provisioning
from tests.harness.postgres import Database

TABLES = 40


async def polls(
    pg: Database, nats_url: str, steps: list[tuple[str, str | None]]
) -> list[tuple[list[str], Any]]:
    """Poll once, then after each step's SQL: the tables read again, and the KV document of
    the step's table after it."""
    reads: list[str] = []
    real = schema_module.read_schema

    async def counted(conn: Any, schema: str, table: str, publication: str) -> Any:
        reads.append(table)
        return await real(conn, schema, table, publication)

    schema_module.read_schema = counted  # type: ignore[assignment]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await provisioning.ensure_kv(js, "schemas", history=10)
        await js.add_stream(name="INIT", subjects=["init.>"])
        kv = await js.key_value("schemas")
        watcher = SchemaWatcher([("public", f"t{i}") for i in range(TABLES)], "schemas", "pub")
        async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
            await watcher.check(conn, js)
            assert sorted(reads) == sorted(f"t{i}" for i in range(TABLES))
            out = []
            for statement, table in steps:
                reads.clear()
                if statement == "purge":
                    await js.purge_stream("KV_schemas", subject="$KV.schemas.t1")
                elif statement:
                    await conn.execute(statement)
                await watcher.check(conn, js)
                entry = await kv.get(table) if table else None
                out.append((sorted(reads), msgpack.unpackb(entry.value) if entry else None))
            return out
    finally:
        schema_module.read_schema = real
        await nc.close()


def test_a_table_is_read_again_only_when_its_catalog_changed(pg: Database, nats_url: str) -> None:
    pg.execute(
        ";".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, a text)" for i in range(TABLES))
        + "; CREATE PUBLICATION pub FOR TABLE "
        + ", ".join(f"t{i}" for i in range(TABLES))
    )
    names: Callable[[Any], list[str]] = lambda doc: [c["name"] for c in doc["columns"]]  # noqa: E731
    steps: list[tuple[str, str | None]] = [
        ("", None),  # nothing changed: nothing read
        ("ALTER TABLE t3 ADD COLUMN b int DEFAULT 7", "t3"),
        ("ALTER TABLE t3 RENAME COLUMN b TO c", "t3"),
        ("ALTER TABLE t3 ALTER COLUMN c TYPE bigint", "t3"),
        ("ALTER TABLE t3 ALTER COLUMN c SET DEFAULT 8", "t3"),
        ("ALTER TABLE t3 DROP COLUMN c", "t3"),
        ("ALTER TABLE t5 DROP CONSTRAINT t5_pkey, ADD PRIMARY KEY (id, a)", "t5"),
        ("ALTER TABLE t6 REPLICA IDENTITY FULL", "t6"),
        ("ALTER PUBLICATION pub SET TABLE t0, t1 (id)", "t1"),  # every table read again
        ("purge", "t1"),  # a purged entry: published again within a poll (few tables)
    ]
    done = asyncio.run(polls(pg, nats_url, steps))
    assert done[0][0] == []
    assert done[1][0] == ["t3"] and names(done[1][1]) == ["id", "a", "b"]
    assert done[1][1]["columns"][2]["column_default"] == "7"
    assert done[2][0] == ["t3"] and names(done[2][1]) == ["id", "a", "c"]
    assert done[3][0] == ["t3"] and done[3][1]["columns"][2]["data_type"] == "bigint"
    assert done[4][0] == ["t3"] and done[4][1]["columns"][2]["column_default"] == "8"
    assert done[5][0] == ["t3"] and names(done[5][1]) == ["id", "a"]
    assert done[6][0] == ["t5"] and done[6][1]["primary_key"] == ["id", "a"]
    assert done[7][0] == ["t6"] and done[7][1]["replica_identity"] == "full"
    assert len(done[8][0]) == TABLES and names(done[8][1]) == ["id"]
    assert done[9][0] == [] and names(done[9][1]) == ["id"]
