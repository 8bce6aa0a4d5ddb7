"""The copies' side of a chunked snapshot's replay window (docs/wire-format.md, "Chunked
snapshots"): a change handed out with `replay=True` may be in the copy already, or be about a
row the copy lacks, and both copies apply it idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pg_nats_bridge import MemoryCopy, SqliteCopy
from pg_nats_bridge.changes import Committed, Delete, Insert, Reset, Row, TableSchema, Update

T = "public.t"
SCHEMA = TableSchema.from_document(
    {
        "schema": T,
        "columns": [{"name": "id", "data_type": "integer"}, {"name": "v", "data_type": "text"},
                    {"name": "big", "data_type": "text"}],
        "primary_key": ["id"],
        "replica_identity": "default",
    }
)  # fmt: skip


def ins(row: Row, replay: bool = True) -> Insert:
    return Insert(T, row, 1, "0/1", "t", replay)


def upd(match: Row, row: Row, keep: tuple[str, ...] = ()) -> Update:
    return Update(T, match, row, keep, 1, "0/1", "t", True)


class Copy:
    """Either copy, read back as sorted rows."""

    def __init__(self, kind: str, path: Path) -> None:
        self.copy: Any = SqliteCopy(path / "copy.db") if kind == "sqlite" else MemoryCopy()
        self.copy.apply_all([Reset(T, SCHEMA, {"snapshot_id": "s", "lsn": "0/1"})])

    def apply(self, *items: Any) -> None:
        """The items as one transaction."""
        self.copy.apply_all([*items, Committed("0/1", 2)])

    def rows(self) -> list[tuple[Any, ...]]:
        if isinstance(self.copy, MemoryCopy):
            found = [(r["id"], r.get("v"), r.get("big")) for r in self.copy.tables[T]]
        else:
            found = list(self.copy.rows(T, ["id", "v", "big"]))
        return sorted(found)


@pytest.fixture(params=["sqlite", "memory"])
def copy(request: pytest.FixtureRequest, tmp_path: Path) -> Copy:
    return Copy(request.param, tmp_path)


def test_an_insert_the_copy_holds_already_replaces_it(copy: Copy) -> None:
    copy.apply(
        ins({"id": 1, "v": "chunk", "big": "B"}, replay=False),
        ins({"id": 1, "v": "old", "big": "A"}),
    )
    assert copy.rows() == [(1, "old", "A")]


def test_an_update_of_a_missing_row_inserts_a_complete_one_and_skips_a_partial_one(
    copy: Copy,
) -> None:
    copy.apply(upd({"id": 1}, {"id": 1, "v": "new", "big": "B"}))
    copy.apply(upd({"id": 2}, {"id": 2, "v": "new"}, keep=("big",)))
    assert copy.rows() == [(1, "new", "B")]


def test_a_move_to_a_key_the_copy_holds_replaces_that_row(copy: Copy) -> None:
    copy.apply(
        ins({"id": 1, "v": "a", "big": "X"}, replay=False),
        ins({"id": 9, "v": "read later", "big": "X"}, replay=False),
    )
    copy.apply(upd({"id": 1}, {"id": 9, "v": "moved"}, keep=("big",)))
    assert copy.rows() == [(9, "moved", "X")]


def test_a_partial_move_of_a_row_the_copy_lacks_leaves_the_later_read(copy: Copy) -> None:
    copy.apply(ins({"id": 9, "v": "read later", "big": "X"}, replay=False))
    copy.apply(upd({"id": 1}, {"id": 9, "v": "older"}, keep=("big",)))
    assert copy.rows() == [(9, "read later", "X")]


def test_a_delete_of_a_missing_row_does_nothing(copy: Copy) -> None:
    copy.apply(ins({"id": 1, "v": "a", "big": "X"}, replay=False))
    copy.apply(Delete(T, {"id": 2}, 1, "0/1", "t", True), Delete(T, {"id": 1}, 1, "0/1", "t", True))
    assert copy.rows() == []
