"""A change a copy cannot apply stops the copy, names the change, and never lets the position
stored with the copy pass it: SqliteCopy rolls back to its last commit (the failure injected
by a trigger in the copy's own file, as an operator's schema could), MemoryCopy keeps every
item before the failing one and none of it; an operator's explicit skip is recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pg_nats_bridge import ApplyError, MemoryCopy, SqliteCopy
from pg_nats_bridge.changes import (
    Bootstrapped,
    CaughtUp,
    Committed,
    Delete,
    Insert,
    Item,
    Reset,
    Rows,
    TableSchema,
    Update,
)

T, U = "public.t", "public.u"


def schema(table: str) -> TableSchema:
    return TableSchema.from_document(
        {
            "schema": table,
            "columns": [{"name": "id", "data_type": "integer"}, {"name": "v", "data_type": "text"}],
            "primary_key": ["id"],
            "replica_identity": "default",
        }
    )


def state(seq: int) -> dict[str, Any]:
    return {"seq": seq, "snapshots": {T: "0/1", U: "0/1"}, "stream": "CDC"}


BOOTSTRAP: list[Item] = [
    Reset(T, schema(T), {"snapshot_id": "s", "lsn": "0/1"}),
    Rows(T, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]),
    Reset(U, schema(U), {"snapshot_id": "s", "lsn": "0/1"}),
    Rows(U, [{"id": 1, "v": "a"}]),
    Bootstrapped(state(10)),
]

# One transaction over both tables: a run of inserts (one executemany), an update, a delete,
# inserts into the other table.
BATCH: list[Item] = [
    Insert(T, {"id": 3, "v": "c"}, 11, "0/9", "t"),
    Insert(T, {"id": 4, "v": "d"}, 12, "0/9", "t"),
    Insert(T, {"id": 5, "v": "e"}, 13, "0/9", "t"),
    Update(T, {"id": 1}, {"id": 1, "v": "A"}, (), 14, "0/9", "t"),
    Delete(T, {"id": 2}, 15, "0/9", "t"),
    Insert(U, {"id": 2, "v": "b"}, 16, "0/9", "t"),
    Insert(U, {"id": 3, "v": "c"}, 17, "0/9", "t"),
]
AFTER = {
    T: [(1, "A"), (3, "c"), (4, "d"), (5, "e")],
    U: [(1, "a"), (2, "b"), (3, "c")],
}
BEFORE = {T: [(1, "a"), (2, "b")], U: [(1, "a")]}

# A trigger per change of BATCH that makes exactly that change fail.
TRIGGERS = {
    11: f'BEFORE INSERT ON "{T}" WHEN NEW.id = 3',
    12: f'BEFORE INSERT ON "{T}" WHEN NEW.id = 4',
    13: f'BEFORE INSERT ON "{T}" WHEN NEW.id = 5',
    14: f'BEFORE UPDATE ON "{T}" WHEN OLD.id = 1',
    15: f'BEFORE DELETE ON "{T}" WHEN OLD.id = 2',
    16: f'BEFORE INSERT ON "{U}" WHEN NEW.id = 2',
    17: f'BEFORE INSERT ON "{U}" WHEN NEW.id = 3',
}


def poison(path: Path, seq: int | None) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS poison")
    if seq is not None:
        db.execute(
            f"CREATE TRIGGER poison {TRIGGERS[seq]} BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
    db.commit()
    db.close()


def sqlite_rows(copy: SqliteCopy) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(copy.rows(t, ["id", "v"])) for t in (T, U)}


@pytest.mark.parametrize("failing", sorted(TRIGGERS))
def test_sqlite_copy_rolls_back_to_its_last_commit_and_retries_the_change(
    tmp_path: Path, failing: int
) -> None:
    path = tmp_path / "copy.db"
    copy = SqliteCopy(path)
    copy.apply_all(BOOTSTRAP)
    copy.close()
    poison(path, failing)
    for _ in range(2):  # a restart with the cause still there fails at the same change again
        copy = SqliteCopy(path)
        with pytest.raises(ApplyError) as raised:
            copy.apply_all([*BATCH, CaughtUp(state(17))])
        error = raised.value
        assert error.seq == failing and error.commit_lsn == "0/9"
        assert error.table == BATCH[failing - 11].table  # type: ignore[union-attr]
        assert f"CDC sequence {failing}" in str(error) and "injected" in str(error)
        assert "key {'id': " in str(error)
        with pytest.raises(ApplyError):  # nothing can be stored past it
            copy.commit(state(17))
        with pytest.raises(ApplyError):
            copy.apply_all(BATCH[-1:])
        copy.close()
        copy = SqliteCopy(path)
        assert copy.state() == state(10) and sqlite_rows(copy) == BEFORE
        copy.close()
    poison(path, None)  # the cause removed, the same changes again: all of them
    copy = SqliteCopy(path)
    copy.apply_all([*BATCH, CaughtUp(state(17))])
    copy.close()
    copy = SqliteCopy(path)
    assert copy.state() == state(17) and sqlite_rows(copy) == AFTER
    assert copy.skipped() == []


def test_a_failure_after_a_commit_inside_the_batch_keeps_what_that_commit_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "copy.db"
    copy = SqliteCopy(path)
    copy.apply_all(BOOTSTRAP)
    copy.close()
    poison(path, 16)
    copy = SqliteCopy(path)
    with pytest.raises(ApplyError):
        copy.apply_all([*BATCH[:3], CaughtUp(state(13)), *BATCH[3:]])
    copy.close()
    copy = SqliteCopy(path)
    assert copy.state() == state(13)
    assert sqlite_rows(copy)[T] == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]


def test_an_operator_skips_one_change_explicitly_and_it_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "copy.db"
    copy = SqliteCopy(path)
    copy.apply_all(BOOTSTRAP)
    copy.close()
    poison(path, 14)
    copy = SqliteCopy(path, skip=[14, 99])  # 99: a change that never fails is applied anyway
    copy.apply_all([*BATCH, CaughtUp(state(17))])
    copy.close()
    copy = SqliteCopy(path)
    assert copy.state() == state(17)
    assert sqlite_rows(copy) == {**AFTER, T: [(1, "a"), (3, "c"), (4, "d"), (5, "e")]}
    [(seq, table, lsn, key, error, _)] = copy.skipped()
    assert (seq, table, lsn, key) == (14, T, "0/9", '{"id": 1}') and "injected" in error


class PoisonedMemoryCopy(MemoryCopy):
    """A MemoryCopy that cannot key one row of T, standing for any store's failure."""

    poisoned = -1

    def _key(self, table: str, row: dict[str, Any]) -> Any:
        if table == T and row.get("id") == self.poisoned:
            raise ValueError("injected")
        return super()._key(table, row)


@pytest.mark.parametrize("failing", [11, 12, 13, 14, 15])
def test_memory_copy_shows_the_transaction_whole_or_not_at_all(failing: int) -> None:
    """A change that fails undoes the rest of its transaction: the copy holds every
    transaction before it and none of it, and following on from `retry_from` (the
    transaction's first change) applies it whole."""
    copy = PoisonedMemoryCopy()
    copy.apply_all(BOOTSTRAP)
    item = BATCH[failing - 11]
    copy.poisoned = item.row["id"] if isinstance(item, Insert | Update) else 2
    copy.apply_all(BATCH)
    assert {t: sorted((r["id"], r["v"]) for r in rows) for t, rows in copy.tables.items()} == (
        BEFORE
    )  # held until the transaction ends
    with pytest.raises(ApplyError) as raised:
        copy.apply(Committed("0/9", 18))
    assert raised.value.seq == failing and raised.value.retry_from == 11
    assert {t: sorted((r["id"], r["v"]) for r in rows) for t, rows in copy.tables.items()} == (
        BEFORE
    )
    copy.poisoned = -1  # removed: following on from the transaction retries it
    copy.apply_all([*BATCH, Committed("0/9", 18)])
    assert {t: sorted((r["id"], r["v"]) for r in rows) for t, rows in copy.tables.items()} == AFTER


def test_memory_copy_leaves_a_row_it_cannot_key_alone() -> None:
    copy = MemoryCopy()
    copy.apply_all(BOOTSTRAP)
    copy.apply(Update(T, {"id": 1}, {"id": [1], "v": "x"}, (), 20, "0/9", "t"))
    with pytest.raises(ApplyError) as raised:  # an array key arrives as a list: unhashable
        copy.apply(Committed("0/9", 21))
    assert "TypeError" in str(raised.value) and raised.value.key == {"id": 1}
    assert sorted((r["id"], r["v"]) for r in copy.tables[T]) == BEFORE[T]


def test_memory_copy_applies_every_transaction_of_a_batch() -> None:
    """Several transactions in one batch: each is held until its own `Committed`."""
    copy = MemoryCopy()
    copy.apply_all(BOOTSTRAP)
    first, second = BATCH[:3], BATCH[3:]
    copy.apply_all([*first, Committed("0/9", 14), *second])
    assert sorted((r["id"], r["v"]) for r in copy.tables[T]) == [
        (1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")
    ]  # fmt: skip
    copy.apply(Committed("0/A", 18))
    assert {t: sorted((r["id"], r["v"]) for r in rows) for t, rows in copy.tables.items()} == AFTER
