"""SqliteCopy on the shapes PostgreSQL allows that SQLite's syntax does not take as they come:
a table whose columns were all dropped (rows without columns), an update that sets nothing
(every column an unchanged TOAST value), a key-less table of 1,600 columns (a WHERE clause
deeper than SQLite's expression limit when written as one chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pg_nats_bridge import SqliteCopy
from pg_nats_bridge.changes import (
    Bootstrapped,
    Delete,
    Insert,
    Reset,
    Rows,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Update,
)

T = "public.t"


def schema(columns: list[str], key: list[str] | None = None, identity: str = "full") -> TableSchema:
    return TableSchema.from_document(
        {
            "schema": T,
            "columns": [{"name": c, "data_type": "text"} for c in columns],
            "primary_key": key or [],
            "replica_identity": identity,
        }
    )


def loaded(path: Path, table_schema: TableSchema, rows: list[dict[str, Any]]) -> SqliteCopy:
    copy = SqliteCopy(path)
    copy.apply_all(
        [
            Reset(T, table_schema, {"snapshot_id": "s", "lsn": "0/1"}),
            Rows(T, rows),
            Bootstrapped({"seq": 0, "snapshots": {T: "0/1"}, "stream": "CDC"}),
        ]
    )
    return copy


def test_a_table_without_columns_holds_its_rows(tmp_path: Path) -> None:
    copy = loaded(tmp_path / "c.db", schema([]), [{}, {}])
    copy.apply_all(
        [
            Insert(T, {}, 1, "0/2", "t"),
            Insert(T, {}, 2, "0/2", "t"),
            Delete(T, {}, 3, "0/3", "t"),
            Update(T, {}, {}, (), 4, "0/4", "t"),
        ]
    )
    assert list(copy.rows(T, [])) == [()] * 3
    assert copy.columns(T) == []
    # A column added later is a column like any other.
    copy.apply(SchemaChanged(T, schema(["a"])))
    copy.apply(Insert(T, {"a": "x"}, 5, "0/5", "t"))
    assert sorted(copy.rows(T, ["a"]), key=repr) == [("x",), (None,), (None,), (None,)]


def test_an_update_whose_every_column_is_unchanged_sets_nothing(tmp_path: Path) -> None:
    copy = loaded(tmp_path / "c.db", schema(["f1"]), [{"f1": "big" * 1000}])
    copy.apply(Update(T, {"f1": "big" * 1000}, {}, ("f1",), 1, "0/2", "t"))
    assert list(copy.rows(T, ["f1"])) == [("big" * 1000,)]


def test_a_key_less_table_of_1600_columns_is_updated_and_deleted_by_its_whole_row(
    tmp_path: Path,
) -> None:
    names = [f"c{i}" for i in range(1600)]
    first = {n: str(i) for i, n in enumerate(names)}
    second = {n: f"{i}b" for i, n in enumerate(names)}
    copy = loaded(tmp_path / "c.db", schema(names), [first, second])
    changed = {**first, "c1599": "changed"}
    copy.apply(Update(T, first, changed, (), 1, "0/2", "t"))
    copy.apply(Delete(T, second, 2, "0/3", "t"))
    assert [row[-1] for row in copy.rows(T, names)] == ["changed"]


def test_a_key_with_an_unpublished_column_locates_rows_by_the_whole_row() -> None:
    # PostgreSQL 15 publishes no generated column, also not one in the primary key.
    table = schema(["a"], key=["a", "b"])
    assert table.primary_key == () and table.unpublished_key == ("b",)
    assert schema(["a", "b"], key=["a", "b"]).primary_key == ("a", "b")


def test_a_table_gone_from_the_publication_is_dropped_and_read_again_later(
    tmp_path: Path,
) -> None:
    """Dropped, renamed or taken out of the publication: the copy no longer holds a table
    PostgreSQL does not publish, and says why; loaded again, it is a table like before."""
    copy = loaded(tmp_path / "c.db", schema(["id"], ["id"]), [{"id": "1"}])
    copy.apply(TableFailed(T, "dropped at 0/5", dropped=True))
    assert not copy.has_table(T) and copy.left_out() == {T: "dropped at 0/5"}
    copy.apply_all(
        [
            Reset(T, schema(["id", "n"], ["id"]), {"snapshot_id": "s2", "lsn": "0/9"}),
            Rows(T, [{"id": "2", "n": "x"}]),
            Bootstrapped({"seq": 9, "snapshots": {T: "0/9"}, "stream": "CDC"}),
        ]
    )
    assert list(copy.rows(T, ["id", "n"])) == [("2", "x")] and copy.left_out() == {}
