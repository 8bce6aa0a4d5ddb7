"""The snapshot's C loaders give exactly the values the CDC value codec gives, for every type
the codec treats specially and some it passes through as text, in both value modes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.adapt import Loader

from shared import postgres
from shared.codec import RowCodec, ValueMode
from shared.codec.copy_loaders import copy_loaders
from tests.harness.postgres import Database

COLUMNS = """
    i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, b bool, by bytea, n numeric,
    t text, ts timestamptz, iv interval, j jsonb, a int[], u uuid, d small_int
"""
ROWS = """
    (1, 2, 9223372036854775807, 4294967295, 1.5, 'NaN', true, '\\x00ff5c', 1.10,
     E'tab\\there\\nnew line \\\\ backslash é', '2026-01-02 03:04:05.678901+00', '1 day 02:00',
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


def _copy(conn: psycopg.Connection[Any], oids: list[int], loaders: dict[int, Any]) -> list[Any]:
    cur = conn.cursor()
    for oid, loader in loaders.items():
        cur.adapters.register_loader(oid, loader)
    with cur.copy("COPY v TO STDOUT") as copy:
        copy.set_types(oids)
        return list(copy.rows())


@pytest.mark.parametrize("bytea_output", ["hex", "escape"])
@pytest.mark.parametrize("mode", [ValueMode.TYPED, ValueMode.TEXT])
def test_copy_loaders_decode_like_the_cdc_codec(
    pg: Database, mode: ValueMode, bytea_output: str
) -> None:
    pg.execute("CREATE DOMAIN small_int AS int2")
    pg.execute(f"CREATE TABLE v ({COLUMNS})")
    pg.execute(f"INSERT INTO v VALUES {ROWS}")
    with postgres.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"SET bytea_output = {bytea_output}")
        names, oids = _oids(conn)
        codec = RowCodec(names, oids, mode)
        expected = [codec.decode_values(r) for r in _copy(conn, oids, {o: _RawText for o in oids})]
        got = [
            dict(zip(names, r, strict=True)) for r in _copy(conn, oids, copy_loaders(oids, mode))
        ]
    assert len(expected) == 3
    for want, have in zip(expected, got, strict=True):
        for name in names:
            w, h = want[name], have[name]
            assert type(w) is type(h), (name, w, h)
            if isinstance(w, float) and w != w:
                assert h != h, (name, h)  # NaN
            else:
                assert w == h, (name, w, h)
