"""A backfill's conditions: the command line's `COLUMN OP VALUE`, the request's model, and the
SQL they become (names as identifiers, values never in the text)."""

from __future__ import annotations

import asyncio

import pytest
from psycopg import sql
from pydantic import ValidationError

from pg_nats_bridge import FollowError, TableFollower
from pg_nats_bridge.contract import Condition, SnapshotRequest
from services.snapshotter.conditions import condition_sql
from services.tools.arguments import parse_condition


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("updated_at >= 2026-01-01", ("updated_at", ">=", "2026-01-01")),
        ("id<5", ("id", "<", "5")),
        ('"My ""col""" = a b', ('My "col"', "=", "a b")),
        ("note IS  NULL", ("note", "is null", None)),
        ("note is not null", ("note", "is not null", None)),
        ("a <> b", ("a", "!=", "b")),
    ],
)
def test_command_line_conditions(text: str, expected: tuple[str, str, str | None]) -> None:
    got = parse_condition(text)
    assert (got["column"], got["op"], got["value"]) == expected


@pytest.mark.parametrize("text", ["bad", "a >=", "x is null 3", "= 4", "a ~ b"])
def test_command_line_conditions_that_are_not_one(text: str) -> None:
    with pytest.raises(ValueError):
        parse_condition(text)


@pytest.mark.parametrize(
    "where",
    [
        [],
        [{"column": "a", "op": "like", "value": "x"}],
        [{"column": "a", "op": "=", "value": None}],
        [{"column": "a", "op": "is null", "value": 1}],
        [{"column": "a", "op": "=", "value": 2**70}],
        [{"column": "a", "op": "=", "value": "x" * 300}],
        [{"column": "", "op": "=", "value": 1}],
        [{"column": "a", "op": "=", "value": [1]}],
        [{"column": "a", "op": "=", "value": 1, "extra": 2}],
        [{"column": "a", "op": ">", "value": i} for i in range(9)],
    ],
)
def test_requests_with_conditions_that_are_not_one(where: list[object]) -> None:
    with pytest.raises(ValidationError):
        SnapshotRequest.model_validate({"where": where})


def test_names_are_identifiers_and_values_stay_out_of_the_sql() -> None:
    hostile = 'x"; DROP TABLE t; --'
    conditions = (
        Condition(column=hostile, op="=", value="'); DROP TABLE t; --"),
        Condition(column="b", op="is not null"),
    )
    text = condition_sql(sql.Identifier("s", "t"), conditions).as_string(None)
    assert '"x""; DROP TABLE t; --" = ' in text  # one quoted identifier
    assert "DROP TABLE t; --'" not in text and "'); DROP" not in text  # the value is not there
    assert "current_setting('bridge.backfill')" in text and '"b" IS NOT NULL' in text


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ("items", [{"column": "id", "op": "~", "value": 1}]),
        ("items", []),
        ("items", [{"column": "id"}]),
        ("elsewhere", [{"column": "id", "op": "=", "value": 1}]),
    ],
)
def test_a_backfill_the_follower_cannot_ask_for_is_refused_at_the_call(
    table: str, where: list[dict[str, object]]
) -> None:
    class NoServer:  # the call refuses before anything would reach NATS
        def jetstream(self) -> None:
            return None

    async def ask() -> None:
        follower = TableFollower(NoServer(), ["items"])  # type: ignore[arg-type]
        follower.backfill(table, where)

    with pytest.raises(FollowError):
        asyncio.run(ask())
