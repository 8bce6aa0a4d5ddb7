"""The snapshot's COPY reading (`postgres.copy_out` + `copy_text.split_line`) gives exactly the
fields psycopg's own COPY parser gives, for values full of escapes, NULLs and every type the
value codec treats specially, whatever `bytea_output` is."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.adapt import Loader

from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.codec.copy_text import split_line
from tests.harness.postgres import Database

COLUMNS = """
    i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, b bool, by bytea, n numeric,
    t text, ts timestamptz, iv interval, j jsonb, a int[], u uuid, d small_int
"""
ROWS = """
    (1, 2, 9223372036854775807, 4294967295, 1.5, 'NaN', true, '\\x00ff5c', 1.10,
     E'tab\\there\\nnew line \\\\ backslash \\\\N é \\r\\b\\f\\v \\001',
     '2026-01-02 03:04:05.678901+00', '1 day 02:00',
     '{"a": [1, 2]}', '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 7),
    (-1, -2, -3, 0, '-Infinity', 'Infinity', false, E'\\\\x', -0.5, '', '-infinity', '-1 mon',
     'null', '{}', '00000000-0000-0000-0000-000000000000', -7),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL)
"""


class _RawText(Loader):
    def load(self, data: Any) -> bytes:
        return bytes(data)


def _oids(conn: psycopg.Connection[Any]) -> tuple[list[str], list[int]]:
    rows = conn.execute(
        "SELECT attname, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END::int"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE attrelid = 'v'::regclass AND attnum > 0 ORDER BY attnum"
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def _psycopg_fields(conn: psycopg.Connection[Any], oids: list[int]) -> list[Any]:
    cur = conn.cursor()
    for oid in oids:
        cur.adapters.register_loader(oid, _RawText)
    with cur.copy("COPY v TO STDOUT") as copy:
        copy.set_types(oids)
        return list(copy.rows())


@pytest.mark.parametrize("bytea_output", ["hex", "escape"])
@pytest.mark.parametrize("mode", [ValueMode.TYPED, ValueMode.TEXT])
def test_copy_lines_split_and_decode_like_psycopg_parses_them(
    pg: Database, mode: ValueMode, bytea_output: str
) -> None:
    pg.execute("CREATE DOMAIN small_int AS int2")
    pg.execute(f"CREATE TABLE v ({COLUMNS})")
    pg.execute(f"INSERT INTO v VALUES {ROWS}")
    with postgres.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"SET bytea_output = {bytea_output}")
        names, oids = _oids(conn)
        codec = RowCodec(names, oids, mode)
        reference = _psycopg_fields(conn, oids)
        ours = [
            split_line(bytes(line)) for line in postgres.copy_out(conn, sql.SQL("COPY v TO STDOUT"))
        ]
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is usable again
    assert len(reference) == 3
    assert [list(r) for r in reference] == ours
    # The same bytes go through the same converters as CDC values: every value decodes.
    for row in ours:
        assert set(codec.decode_values(row)) == set(names)


def test_a_copy_error_is_psycopgs_error(pg: Database) -> None:
    with postgres.connect(pg.url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(postgres.copy_out(conn, sql.SQL("COPY nowhere TO STDOUT")))
        assert conn.execute("SELECT 2").fetchone() == (2,)
