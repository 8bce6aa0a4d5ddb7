"""A partial backfill's conditions (`{"where": [...]}` in a request) as SQL.

The request comes from anyone on the NATS account, so nothing of it is written into a query:
the column is a `sql.Identifier` of a published column (a condition on a column the
publication leaves out would let a requester learn its values row by row, by counting), the
operator one of a fixed list, and the values travel as one bound parameter. COPY takes no
parameters, so that parameter sets a setting of the reading session (`bridge.backfill`, a JSON
array) and each condition compares its column with the value read back from it as the
column's own type: `json_populate_record(NULL::<table>, …)` applies the column type's input
function, exactly as an INSERT of that text would. Each such read is an uncorrelated
subquery, evaluated once per query (an InitPlan), so an index on the column still serves it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from pg_nats_bridge.contract import Condition
from services.snapshotter.errors import SnapshotError

SETTING = "bridge.backfill"

_OPERATORS = {
    "=": sql.SQL("="),
    "!=": sql.SQL("<>"),
    "<": sql.SQL("<"),
    "<=": sql.SQL("<="),
    ">": sql.SQL(">"),
    ">=": sql.SQL(">="),
}


def checked(conditions: tuple[Condition, ...], published: list[str], what: str) -> None:
    """Refuse a condition on a column that is not published."""
    for condition in conditions:
        if condition.column not in published:
            raise SnapshotError(
                "bad_request",
                f"where: {what} has no published column {condition.column!r} (published: "
                f"{', '.join(published)})",
            )


def _value(table: sql.Identifier, column: str, index: int) -> sql.Composable:
    """Value `index` of the session's `bridge.backfill`, read as `column`'s type."""
    return sql.SQL(
        "(SELECT (pg_catalog.json_populate_record(NULL::{}, "
        "pg_catalog.current_setting({})::pg_catalog.json -> {})).{})"
    ).format(table, sql.Literal(SETTING), sql.Literal(index), sql.Identifier(column))


def condition_sql(table: sql.Identifier, conditions: tuple[Condition, ...]) -> sql.Composable:
    """The conditions ANDed, reading their values from the session's `bridge.backfill`."""
    parts: list[sql.Composable] = []
    for i, condition in enumerate(conditions):
        column = sql.Identifier(condition.column)
        if condition.op == "is null":
            parts.append(sql.SQL("{} IS NULL").format(column))
        elif condition.op == "is not null":
            parts.append(sql.SQL("{} IS NOT NULL").format(column))
        else:
            value = _value(table, condition.column, i)
            parts.append(sql.SQL("{} {} {}").format(column, _OPERATORS[condition.op], value))
    return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))


def _values(conditions: tuple[Condition, ...]) -> str:
    return json.dumps([{c.column: c.value} for c in conditions])


@contextlib.contextmanager
def bound(conn: psycopg.Connection[Any], conditions: tuple[Condition, ...]) -> Iterator[None]:
    """The session's `bridge.backfill` set to the conditions' values (a bound parameter) on
    an autocommit connection, before its reading transactions."""
    if conditions:
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (SETTING, _values(conditions)))
    yield


async def validate(
    conn: psycopg.AsyncConnection[Any],
    table: sql.Identifier,
    conditions: tuple[Condition, ...],
    what: str,
) -> None:
    """Before anything is exported or published, read each value as its column's type and
    compare it with itself: a value the type does not take (`"yesterday-ish"` for a
    timestamp), or an operator it has not (`<` on json), is the request's fault, said in
    PostgreSQL's words. No row is read."""
    for i, condition in enumerate(conditions):
        if condition.value is None:
            continue
        value = _value(table, condition.column, 0)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_catalog.set_config(%s, %s, true)",
                    (SETTING, _values((condition,))),
                )
                await conn.execute(
                    sql.SQL("SELECT {} {} {}").format(value, _OPERATORS[condition.op], value)
                )
        except (
            psycopg.errors.DataError,  # a value the type does not take
            psycopg.errors.UndefinedFunction,  # an operator the type has not
            psycopg.errors.DatatypeMismatch,
            psycopg.errors.FeatureNotSupported,
        ) as exc:
            raise SnapshotError(
                "bad_request",
                f"where[{i}] ({condition.describe()}) on {what}: {_first_line(exc)}",
            ) from None


def _first_line(exc: Exception) -> str:
    """PostgreSQL's message without the query it quotes (ours, not the requester's)."""
    return str(exc).strip().splitlines()[0]
