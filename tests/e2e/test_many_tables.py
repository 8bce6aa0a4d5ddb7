"""A database nobody here designed: 200 tables of assorted shapes and column types under an
operator's FOR ALL TABLES publication, followed without a --table list. The snapshotter finds
them all, `bridge replica --all-tables` loads and follows every one while each is written,
and `bridge verify` finds every table equal to PostgreSQL.

Shapes, by table number: key-less under REPLICA IDENTITY FULL, a composite key, a key with
INCLUDE columns, a stored generated column, a plain key; and one each of: every column
dropped, 300 columns, partitioned, an inheritance parent with its child. The columns take
33 types in turn, so each type is in many tables and shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.harness.copies import bridge, start_replica
from tests.harness.postgres import Database
from tests.harness.services import Service, slot_lag, wait_for

TABLES = 200

# A column type and the value of row g (an int) in it.
TYPES = [
    ("int", "g"),
    ("bigint", "g::bigint * 1000000007"),
    ("smallint", "(g % 100)::smallint"),
    ("text", "'t' || g || repeat('x', g % 3 * 3000)"),
    ("varchar(20)", "'v' || g"),
    ("char(4)", "'c'"),
    ("numeric(12,2)", "g / 3.0"),
    ("numeric", "CASE WHEN g % 5 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END"),
    ("float8", "CASE WHEN g % 4 = 0 THEN 'Infinity'::float8 ELSE g / 7.0 END"),
    ("real", "CASE WHEN g % 6 = 0 THEN 'NaN'::real ELSE g / 9.0 END"),
    ("bool", "g % 2 = 0"),
    ("date", "date '2026-01-01' + g"),
    ("timestamptz", "timestamptz '2026-01-01 00:00+00' + g * interval '1 hour'"),
    ("timestamp", "CASE WHEN g % 5 = 0 THEN 'infinity'::timestamp ELSE timestamp '2026-01-01'"
     " + g * interval '1 minute' END"),
    ("interval", "g * interval '1 day 2 hours 3 seconds'"),
    ("time", "time '10:00' + g * interval '1 second'"),
    ("timetz", "timetz '10:00+02'"),
    ("jsonb", "jsonb_build_object('g', g, 'a', jsonb_build_array(1, 'x'))"),
    ("json", "json_build_object('g', g)"),
    ("uuid", "md5(g::text)::uuid"),
    ("bytea", "decode(md5(g::text), 'hex')"),
    ("int[]", "ARRAY[g, g + 1, NULL]"),
    ("text[]", "ARRAY['a' || g, 'b,\"c']"),
    ("inet", "('10.0.0.' || (g % 250))::inet"),
    ("cidr", "'10.0.0.0/8'::cidr"),
    ("macaddr", "'08:00:2b:01:02:03'::macaddr"),
    ("point", "point(g, g / 2.0)"),
    ("box", "box(point(g, g), point(0, 0))"),
    ("tsvector", "to_tsvector('simple', 'w' || g || ' v')"),
    ("bit(8)", "(g % 256)::bit(8)"),
    ("varbit", "B'101'"),
    ("int4range", "int4range(g, g + 5)"),
    ("money", "(g * 1.5)::money"),
]  # fmt: skip


def table_sql(i: int) -> str:
    """CREATE TABLE t<i> and its first rows."""
    columns = [TYPES[(i * 3 + k) % len(TYPES)] for k in range(3)]
    defs = ", ".join(f"c{k} {t}" for k, (t, _) in enumerate(columns))
    values = ", ".join(v for _, v in columns)
    shape = i % 5
    if shape == 0:
        create = f"CREATE TABLE t{i} (id int, {defs}); ALTER TABLE t{i} REPLICA IDENTITY FULL"
    elif shape == 1:
        create = f"CREATE TABLE t{i} (id int, k int DEFAULT 1, {defs}, PRIMARY KEY (id, k))"
    elif shape == 2:
        create = f"CREATE TABLE t{i} (id int, {defs}, extra box, PRIMARY KEY (id) INCLUDE (extra))"
    elif shape == 3:
        create = (
            f"CREATE TABLE t{i} (id int PRIMARY KEY, {defs},"
            " twice int GENERATED ALWAYS AS (id * 2) STORED)"
        )
    else:
        create = f"CREATE TABLE t{i} (id int PRIMARY KEY, {defs})"
    return (
        f"{create}; INSERT INTO t{i} (id, c0, c1, c2)"
        f" SELECT g, {values} FROM generate_series(1, 6) g"
    )


def change_sql(i: int) -> str:
    """Inserts, an update of every column but the key, a delete."""
    columns = [TYPES[(i * 3 + k) % len(TYPES)] for k in range(3)]
    values = ", ".join(v for _, v in columns)
    sets = ", ".join(f"c{k} = v.c{k}" for k in range(3))
    return (
        f"INSERT INTO t{i} (id, c0, c1, c2) SELECT g, {values} FROM generate_series(7, 9) g;"
        f"UPDATE t{i} SET {sets} FROM (SELECT {values} FROM (SELECT 11 AS g) s) v(c0, c1, c2)"
        " WHERE id = 2;"
        f"DELETE FROM t{i} WHERE id = 3"
    )


def create_database(pg: Database) -> list[str]:
    """Every table, and the names to verify."""
    for start in range(0, TABLES, 50):
        pg.execute(";".join(table_sql(i) for i in range(start, min(start + 50, TABLES))))
    wide = ", ".join(f"w{i} int" for i in range(300))
    pg.execute(
        "CREATE TABLE dropped (a int); INSERT INTO dropped VALUES (1), (2);"
        "ALTER TABLE dropped DROP COLUMN a; ALTER TABLE dropped REPLICA IDENTITY FULL;"
        f"CREATE TABLE wide (id int PRIMARY KEY, {wide});"
        "INSERT INTO wide (id, w0, w299) SELECT g, g, g FROM generate_series(1, 5) g;"
        "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);"
        "CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');"
        "CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');"
        "INSERT INTO m SELECT g, date '2026-01-01' + g * 30, 'v' FROM generate_series(1, 10) g;"
        "CREATE TABLE parent (id int PRIMARY KEY, note text);"
        "CREATE TABLE child (extra int, PRIMARY KEY (id)) INHERITS (parent);"
        "INSERT INTO parent VALUES (1, 'own'); INSERT INTO child VALUES (10, 'child', 1);"
        "CREATE PUBLICATION ops FOR ALL TABLES WITH (publish_via_partition_root = true)"
    )
    return [f"t{i}" for i in range(TABLES)] + ["dropped", "wide", "m", "parent", "child"]


def change_everything(pg: Database) -> None:
    for start in range(0, TABLES, 50):
        pg.execute(";".join(change_sql(i) for i in range(start, min(start + 50, TABLES))))
    pg.execute(
        "INSERT INTO dropped DEFAULT VALUES;"
        "UPDATE wide SET w150 = 7, w299 = -1 WHERE id = 2; DELETE FROM wide WHERE id = 3;"
        "UPDATE m SET d = '2026-12-01' WHERE id = 1; DELETE FROM m WHERE id = 2;"
        "UPDATE parent SET note = 'changed'; INSERT INTO child VALUES (11, 'c', 2)"
    )


def test_hundreds_of_tables_of_every_shape_verify_equal(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    names = create_database(pg)
    replicator = services("replicator", pg, nats_url, publication="ops").wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, publication="ops").wait_healthy()
    wait_for(
        lambda: snapshotter.output().count("published schema of") == len(names),
        60,
        "the snapshotter to find every table and publish its schema",
        snapshotter,
    )
    path = tmp_path / "copy.db"
    replica = start_replica(replicator.env, path, tmp_path / "replica.log", extra=["--all-tables"])
    wait_for(lambda: "caught up" in replica.output(), 240, "the copy to load", replica)
    change_everything(pg)
    wait_for(lambda: slot_lag(pg) == 0, 60, "the replicator to publish", replicator)
    assert replica.terminate() == 0
    output = replica.output()
    assert f"--all-tables: {len(names)} tables" in output, output[-2000:]
    assert "Traceback" not in output and "asking again" not in output, output[-3000:]
    result = bridge("verify", *names, "--sqlite", str(path), env=replicator.env, timeout=300)
    unequal = [line for line in result.stdout.splitlines() if " rows in PostgreSQL: " in line
               and not line.endswith(": equal")]  # fmt: skip
    assert result.returncode == 0 and not unequal, result.stdout[-5000:] + result.stderr
    assert result.stdout.count(": equal") == len(names)
