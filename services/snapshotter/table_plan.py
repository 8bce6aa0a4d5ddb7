"""What one snapshot reads of one table, described once: the published columns and their
types, the primary key, the publication's row filter, a backfill's conditions, how values are
encoded; and the one COPY query every read (the whole table, a reader's key segment, one range
of a chunked read) is built from.

A plan travels to reader processes as JSON (services/snapshotter/reader_protocol.py), so it
holds names and text only, never a connection's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pg_nats_bridge.contract import Condition
from services.snapshotter.conditions import condition_sql
from shared.codec import RowCodec, ValueMode
from shared.consistent_read import copy_query, describe_table


@dataclass(frozen=True)
class TablePlan:
    schema: str
    table: str
    names: list[str]  # the published columns, in table order
    oids: list[int]  # their types for the value codec (domains resolved)
    key: list[str]  # the primary key; [] without one
    row_filter: str | None = None  # the publication's, as PostgreSQL deparses it
    mode: ValueMode = ValueMode.TYPED
    conditions: tuple[Condition, ...] = ()  # a partial backfill's (conditions.py)
    # A chunked read's: the table's shape digest (consistent_read.SHAPE_QUERY) every range
    # must find, so that every row has the shape of the snapshot's schema document.
    shape: str | None = None

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def what(self) -> str:
        return f"{self.schema}.{self.table}"

    def codec(self) -> RowCodec:
        return RowCodec(self.names, self.oids, self.mode)

    def key_positions(self) -> list[int]:
        return [self.names.index(k) for k in self.key]

    def keyed(self) -> bool:
        """Whether the rows can be read in key order (chunked mode, segments): a primary key
        whose columns are all published."""
        return bool(self.key) and set(self.key) <= set(self.names)

    def copy_query(
        self,
        start: Sequence[str] | None = None,
        end: Sequence[str] | None = None,
        after: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> sql.Composed:
        """The COPY of the published columns and rows in key order: of the whole table, of
        the key segment from `start` to `end`, after the key `after`, at most `limit` rows."""
        parts: list[sql.Composable] = []
        if self.conditions:
            parts.append(condition_sql(self.identifier, self.conditions))
        parts += key_bounds(self.key, start, end, after)
        condition = sql.SQL(" AND ").join(parts) if parts else None
        return copy_query(self.identifier, self.names, self.key, self.row_filter, condition, limit)

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "names": self.names,
            "oids": self.oids,
            "key": self.key,
            "row_filter": self.row_filter,
            "mode": str(self.mode),
            "conditions": [c.model_dump() for c in self.conditions],
            "shape": self.shape,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TablePlan:
        return cls(
            schema=str(body["schema"]),
            table=str(body["table"]),
            names=[str(n) for n in body["names"]],
            oids=[int(o) for o in body["oids"]],
            key=[str(k) for k in body["key"]],
            row_filter=body.get("row_filter"),
            mode=ValueMode(body["mode"]),
            conditions=tuple(Condition(**c) for c in body.get("conditions", ())),
            shape=body.get("shape"),
        )


async def describe(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    table: str,
    publication: str,
    mode: ValueMode,
    conditions: tuple[Condition, ...] = (),
) -> TablePlan:
    """The plan of the table as `conn`'s transaction sees the catalog: under an adopted
    snapshot, the columns as they were at its consistent point."""
    names, oids, key, row_filter = await describe_table(conn, schema, table, publication)
    return TablePlan(schema, table, names, oids, key, row_filter, mode, conditions)


async def redescribe(
    conn: psycopg.AsyncConnection[Any], plan: TablePlan, publication: str
) -> TablePlan:
    """`plan` as `conn`'s transaction sees the table (an exported read's, once it holds the
    table's lock: the columns as of the export, which an ALTER since may have changed)."""
    return await describe(conn, plan.schema, plan.table, publication, plan.mode, plan.conditions)


def key_bounds(
    key: list[str],
    start: Sequence[str] | None,
    end: Sequence[str] | None,
    after: Sequence[str] | None = None,
) -> list[sql.Composable]:
    """`(key) > (after)` (or `>= (start)` before anything was read) and `(key) < (end)`, as
    literals PostgreSQL reads as the key columns' types: keys this snapshot read or sampled
    from the table, never a request's."""
    columns = sql.SQL(", ").join(map(sql.Identifier, key))

    def row(values: Sequence[str]) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Literal, values))

    bounds: list[sql.Composable] = []
    if after is not None:
        bounds.append(sql.SQL("({}) > ({})").format(columns, row(after)))
    elif start is not None:
        bounds.append(sql.SQL("({}) >= ({})").format(columns, row(start)))
    if end is not None:
        bounds.append(sql.SQL("({}) < ({})").format(columns, row(end)))
    return bounds
