"""A copy of the followed tables in a SQLite file, with the follower's state in the same file,
so that data and position commit together and a restart neither loses nor repeats a change.

Each table is a SQLite table named `schema.table`, its columns untyped so that every value is
stored as the bridge sent it, except what SQLite cannot hold: a boolean is stored as 0/1 and a
float NaN as the text `NaN` (SQLite turns NaN into NULL). `stored_value` is that mapping;
`bridge verify` compares PostgreSQL's rows through it.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pg_nats_bridge.apply_error import ApplyError, key_of
from pg_nats_bridge.changes import (
    Backfilled,
    BackfillRows,
    Bootstrapped,
    CaughtUp,
    Committed,
    Delete,
    Insert,
    Item,
    Oversized,
    Reset,
    Row,
    Rows,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)

log = logging.getLogger("pg_nats_bridge")


def stored_value(value: Any) -> Any:
    """The value as the copy holds it (see the module's docstring)."""
    if value is True or value is False:
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


# Column types (information_schema's names) whose values the bridge sends as floats.
FLOAT_TYPES = frozenset({"real", "double precision"})


def ident(name: str) -> str:
    """A SQLite identifier: double-quoted, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


# SQLite has no table without columns; PostgreSQL has (every column dropped), with rows.
NO_COLUMNS = "_bridge_no_columns"


def conjunction(terms: list[str]) -> str:
    """`a AND b AND …` as a balanced tree: SQLite parses a flat chain into a tree as deep as
    it is long, and refuses one deeper than 1,000 (a key-less table of 1,102 columns)."""
    if len(terms) <= 64:
        return " AND ".join(terms) or "1"
    half = len(terms) // 2
    return f"({conjunction(terms[:half])}) AND ({conjunction(terms[half:])})"


class SqliteCopy:
    """Apply follower items to a SQLite file; `commit()` makes them durable with the state,
    and visible to other readers of the file, only where every transaction applied has ended
    and the copy is one consistent state (`Committed`, `CaughtUp`, `Bootstrapped`; see
    pg_nats_bridge/transactions.py): a reader never sees part of a transaction, nor tables at
    different moments. Elsewhere `commit()` commits nothing and says so (False).

    An item that cannot be applied rolls the file back to its last commit, so the data and the
    position stored with it stay together, and raises `ApplyError`; the copy then refuses every
    further call (open it again: the next follower hands the change out again). `skip` names
    CDC sequences an operator chose to give up on: such a change that fails is recorded in
    `_bridge_skipped` instead, and the copy goes on."""

    def __init__(self, path: str | Path, *, skip: Iterable[int] = ()) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _bridge_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _bridge_oversized"
            " (tbl TEXT NOT NULL, seq INTEGER NOT NULL, marker TEXT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _bridge_skipped (seq INTEGER NOT NULL, tbl TEXT,"
            " commit_lsn TEXT, key TEXT, error TEXT NOT NULL, skipped_at TEXT NOT NULL)"
        )
        self.db.commit()
        self.skip = frozenset(skip)
        self.failed: ApplyError | None = None
        self._run_started = 0  # db.total_changes before the current run of inserts
        self._columns: dict[str, list[str]] = {}
        self._inserts: dict[tuple[str, tuple[str, ...]], str] = {}  # (table, columns) → SQL
        self._floats: dict[str, frozenset[str]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}  # primary keys, from the schemas
        self.applied = 0  # CDC changes applied since opened
        self._applied_at_commit = 0
        # Every transaction applied has ended; the tables are at one moment (a copy opened is
        # as it was committed: both).
        self.at_boundary = True
        self.consistent = True

    # -- state -------------------------------------------------------------------------------

    def _get(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM _bridge_state WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def _put(self, name: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO _bridge_state VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, json.dumps(value)),
        )

    def state(self) -> dict[str, Any] | None:
        """The follower state stored with the data, or None for a copy never bootstrapped."""
        state: dict[str, Any] | None = self._get("follower")
        return state

    def schema(self, table: str) -> TableSchema | None:
        doc = self._get(f"schema:{table}")
        return TableSchema.from_document(doc) if doc else None

    def commit(self, state: dict[str, Any] | None) -> bool:
        """Store `state` with what was applied and commit, where that may be seen (see the
        class); whether it did."""
        self._refuse_after_failure()
        if not (self.at_boundary and self.consistent):
            return False
        if state is not None:
            self._put("follower", state)
        self.db.commit()
        self._applied_at_commit = self.applied
        return True

    def _refuse_after_failure(self) -> None:
        """After a rollback the follower's position is past what the file holds: storing it,
        or applying what follows, would skip the failed change and everything rolled back."""
        if self.failed is not None:
            raise ApplyError(self.failed.item, self.failed.key, self.failed) from self.failed

    def close(self) -> None:
        self.db.close()

    # -- applying ----------------------------------------------------------------------------

    def apply_all(self, items: Iterable[Item]) -> None:
        """`apply` each, in order, with each run of inserts into one table with the same
        columns in one `executemany` (`TableFollower.batches` hands out such lists)."""
        self._refuse_after_failure()
        items = items if isinstance(items, list) else list(items)
        if self.skip and any(getattr(item, "seq", None) in self.skip for item in items):
            self._apply_skipping(items)
            return
        current: Item | list[Insert] | None = None  # what is being applied, for the error
        table: str | None = None
        columns: tuple[str, ...] = ()
        run: list[Insert] = []
        try:
            for item in items:
                if type(item) is Insert and not item.replay:
                    if item.table == table and tuple(item.row) == columns:
                        run.append(item)
                    else:
                        if run and table is not None:
                            current = run
                            self._insert_run(table, columns, run)
                        table, columns, run = item.table, tuple(item.row), [item]
                    continue
                if run and table is not None:
                    current = run
                    self.at_boundary = False
                    self._insert_run(table, columns, run)
                    table, run = None, []
                current = item
                self._apply(item)
            if run and table is not None:
                current = run
                self.at_boundary = False
                self._insert_run(table, columns, run)
        except Exception as exc:
            self._fail(current, exc)

    def apply(self, item: Item) -> None:
        self._refuse_after_failure()
        try:
            self._apply(item)
        except Exception as exc:
            self._fail(item, exc)

    def _fail(self, current: Item | list[Insert] | None, exc: Exception) -> None:
        """Roll back to the last commit and raise `ApplyError` for the item that failed (in a
        run of inserts: the row the `executemany` stopped at, counted by SQLite)."""
        if isinstance(current, list):
            done = self.db.total_changes - self._run_started
            current = current[min(max(done, 0), len(current) - 1)]
        if current is None:
            raise exc
        key = self._error_key(current)
        self.db.rollback()
        self._forget_shapes()
        self.applied = self._applied_at_commit
        self.at_boundary = True  # as committed
        self.consistent = True
        self.failed = ApplyError(current, key, exc)
        log.error(
            "%s; the copy is rolled back to its last commit and stops: a restart retries the "
            "change",
            self.failed,
        )
        raise self.failed from exc

    def _error_key(self, item: Item) -> Row | None:
        try:
            schema = self.schema(getattr(item, "table", ""))
        except Exception:  # the key is for the message only: a file too broken to say
            schema = None
        return key_of(item, schema.primary_key if schema is not None else ())

    def _forget_shapes(self) -> None:
        """Cached columns and statements may describe tables the rollback undid."""
        self._columns.clear()
        self._inserts.clear()
        self._floats.clear()
        self._keys.clear()

    def _apply_skipping(self, items: list[Item]) -> None:
        """Item by item; a change whose sequence is in `skip` under a savepoint, so that if it
        fails it alone is undone, recorded and passed over."""
        for item in items:
            if getattr(item, "seq", None) not in self.skip:
                self.apply(item)
                continue
            if not self.db.in_transaction:  # else RELEASE would commit
                self.db.execute("BEGIN")
            self.db.execute("SAVEPOINT skip")
            try:
                self._apply(item)
            except Exception as exc:
                self.db.execute("ROLLBACK TO skip")
                self._forget_shapes()
                self._record_skip(item, exc)
            self.db.execute("RELEASE skip")

    def _record_skip(self, item: Item, exc: Exception) -> None:
        error = ApplyError(item, self._error_key(item), exc)
        log.warning("%s; skipped as asked, recorded in _bridge_skipped", error)
        self.db.execute(
            "INSERT INTO _bridge_skipped VALUES (?, ?, ?, ?, ?, ?)",
            (
                error.seq,
                error.table,
                error.commit_lsn,
                json.dumps(error.key, default=repr),
                f"{type(exc).__name__}: {exc}",
                datetime.now(UTC).isoformat(),
            ),
        )

    def left_out(self) -> dict[str, str]:
        """Tables left out of the copy (a load that failed for good), and why."""
        rows = self.db.execute(
            "SELECT name, value FROM _bridge_state WHERE name LIKE 'failed:%'"
        ).fetchall()
        return {name.removeprefix("failed:"): json.loads(value) for name, value in rows}

    def skipped(self) -> list[tuple[Any, ...]]:
        """The changes given up on: (seq, table, commit_lsn, key JSON, error, when)."""
        return self.db.execute("SELECT * FROM _bridge_skipped ORDER BY seq").fetchall()

    def _insert_run(self, table: str, columns: tuple[str, ...], run: list[Insert]) -> None:
        """Inserts whose columns are `columns`, in that order: their values are bound as they
        are (a boolean binds as 0/1 by itself), only a float column's NaN needs `stored_value`."""
        sql = self._insert_sql(table, columns)
        params = [tuple(item.row.values()) for item in run]
        float_names = self._float_columns(table)
        floats = [i for i, name in enumerate(columns) if name in float_names]
        if floats:
            for n, values in enumerate(params):
                for i in floats:
                    value = values[i]
                    if value != value:  # NaN is unequal to itself
                        params[n] = tuple(map(stored_value, values))
                        break
        self._run_started = self.db.total_changes
        self.db.executemany(sql, params)
        self.applied += len(run)

    def _float_columns(self, table: str) -> frozenset[str]:
        """Columns whose values may be a float (and so NaN), from the table's schema."""
        found = self._floats.get(table)
        if found is None:
            schema = self.schema(table)
            columns = schema.document.columns if schema is not None else []
            found = self._floats[table] = frozenset(
                c.name for c in columns if (c.data_type or "real") in FLOAT_TYPES
            )
        return found

    def _apply(self, item: Item) -> None:
        if isinstance(item, Committed):
            self.at_boundary, self.consistent = True, item.consistent
            return
        if isinstance(item, Bootstrapped | CaughtUp | Backfilled):
            self.at_boundary, self.consistent = True, item.consistent
        elif not isinstance(item, SchemaChanged | TableFailed):
            self.at_boundary = False
            if isinstance(item, Reset):
                self.consistent = False  # a bootstrap: one state again at `Bootstrapped`
        if isinstance(item, Rows):
            self._insert_many(item.table, item.rows)
        elif isinstance(item, BackfillRows):
            for row in item.rows:
                self._delete(item.table, self._key(item.table, row))
            self._insert_many(item.table, item.rows)
        elif isinstance(item, Insert):
            if item.replay:  # the copy may hold it already (docs/wire-format.md)
                self._delete(item.table, self._key(item.table, item.row))
            self._insert_run(item.table, tuple(item.row), [item])
        elif isinstance(item, Update):
            self._update(item)
            self.applied += 1
        elif isinstance(item, Delete):
            self._delete(item.table, item.match)
            self.applied += 1
        elif isinstance(item, Truncate):
            self.db.execute(f"DELETE FROM {ident(item.table)}")
            self.applied += 1
        elif isinstance(item, Reset):
            self._reset(item)
        elif isinstance(item, SchemaChanged):
            self._put(f"schema:{item.table}", item.schema.document.as_dict())
            self._forget(item.table)
            self._drop_columns(item.table, item.schema.columns)
            self._ensure_columns(item.table, item.schema.columns)
        elif isinstance(item, Oversized):
            self.db.execute(
                "INSERT INTO _bridge_oversized VALUES (?, ?, ?)",
                (item.table, item.seq, json.dumps(item.marker, default=repr)),
            )
        elif isinstance(item, TableFailed):
            self._put(f"failed:{item.table}", item.reason)
            if item.dropped:  # PostgreSQL no longer has it, or no longer publishes it
                self._drop_table(item.table)
        elif isinstance(item, Backfilled):
            self._put(f"backfill:{item.table}", item.snapshot)
            self.commit(item.state)
        elif isinstance(item, Bootstrapped | CaughtUp):
            self.commit(item.state)

    def _reset(self, item: Reset) -> None:
        table = ident(item.table)
        self.db.execute(f"DROP TABLE IF EXISTS {table}")
        columns = list(item.schema.columns)
        self.db.execute(f"CREATE TABLE {table} ({', '.join(map(ident, columns or [NO_COLUMNS]))})")
        key = item.schema.primary_key
        if key:
            self.db.execute(
                f"CREATE INDEX {ident('key:' + item.table)} ON {table}"
                f" ({', '.join(map(ident, key))})"
            )
        self._forget(item.table)
        self._columns[item.table] = columns
        # Until Bootstrapped, the file holds no position: a copy interrupted mid-load starts over.
        self.db.execute("DELETE FROM _bridge_state WHERE name = 'follower'")
        self._put(f"schema:{item.table}", item.schema.document.as_dict())
        self._put(f"snapshot:{item.table}", item.snapshot)
        self.db.execute("DELETE FROM _bridge_state WHERE name = ?", (f"failed:{item.table}",))

    def _drop_table(self, table: str) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS {ident(table)}")
        for name in ("schema", "snapshot", "backfill"):
            self.db.execute("DELETE FROM _bridge_state WHERE name = ?", (f"{name}:{table}",))
        self._forget(table)

    def _forget(self, table: str) -> None:
        """What is cached of the table's shape: its columns, insert statements, float
        columns and key, read again when next needed."""
        self._columns.pop(table, None)
        self._inserts = {k: sql for k, sql in self._inserts.items() if k[0] != table}
        self._floats.pop(table, None)
        self._keys.pop(table, None)

    def has_table(self, table: str) -> bool:
        found = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return found is not None

    def columns(self, table: str) -> list[str]:
        if table not in self._columns:
            info = self.db.execute(f"PRAGMA table_info({ident(table)})").fetchall()
            self._columns[table] = [row[1] for row in info if row[1] != NO_COLUMNS]
        return self._columns[table]

    def _ensure_columns(self, table: str, names: Any) -> None:
        known = self.columns(table)
        for name in names:
            if name not in known:  # a column added since the copy's last schema
                self.db.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(name)}")
                known.append(name)

    def _drop_columns(self, table: str, names: Any) -> None:
        """Columns the table no longer has (dropped in PostgreSQL): gone from the copy too.
        (Never a key column: a new key reads the table again.)"""
        keep = set(names)
        gone = [c for c in self.columns(table) if c not in keep]
        if not gone:
            return
        every = [row[1] for row in self.db.execute(f"PRAGMA table_info({ident(table)})")]
        if len(gone) == len(self.columns(table)) and NO_COLUMNS not in every:
            # SQLite keeps at least one column
            self.db.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(NO_COLUMNS)}")
        for name in gone:
            self.db.execute(f"ALTER TABLE {ident(table)} DROP COLUMN {ident(name)}")
        self._forget(table)

    def _insert_sql(self, table: str, names: tuple[str, ...]) -> str:
        sql = self._inserts.get((table, names))
        if sql is None:
            self._ensure_columns(table, names)
            sql = self._inserts[(table, names)] = (
                f"INSERT INTO {ident(table)} ({', '.join(map(ident, names))})"
                f" VALUES ({', '.join('?' * len(names))})"
                if names
                else f"INSERT INTO {ident(table)} DEFAULT VALUES"
            )
        return sql

    def _insert_many(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        names = tuple(rows[0])
        sql = self._insert_sql(table, names)
        self.db.executemany(sql, ([stored_value(row.get(n)) for n in names] for row in rows))

    def _where(self, match: Row) -> tuple[str, list[Any]]:
        return (
            conjunction([f"{ident(c)} IS ?" for c in match]),
            [stored_value(v) for v in match.values()],
        )

    def _key(self, table: str, row: Row) -> Row:
        """The primary key columns of `row` (a chunked snapshot's table has one)."""
        key = self._keys.get(table)
        if key is None:
            schema = self.schema(table)
            key = self._keys[table] = schema.primary_key if schema is not None else ()
        return {k: row.get(k) for k in key} if key else dict(row)

    def _update(self, item: Update) -> None:
        names = [c for c in item.row if c not in item.keep]
        self._ensure_columns(item.table, names)
        if item.replay:
            self._replay_update(item, names)
            return
        if self._set(item.table, item.match, item.row, names) == 0:
            # The copy diverged (it was changed by hand, or a change was lost upstream): say
            # so, keep the new row when it is complete, and let `bridge verify` show the rest.
            log.error(
                "%s: CDC sequence %d updates the row %s, which the copy does not have",
                item.table,
                item.seq,
                item.match,
            )
            if not item.keep:
                self._insert_many(item.table, [item.row])

    def _replay_update(self, item: Update, names: list[str]) -> None:
        """An update in a chunked snapshot's replay window (see Insert's `replay`): the copy
        may hold it already, even at the key it moves the row to, or lack the row."""
        moved_to = self._key(item.table, item.row)
        if self._has(item.table, item.match):
            if moved_to != item.match:
                self._delete(item.table, moved_to)  # a later read of the row, at its new key
            self._set(item.table, item.match, item.row, names)
        elif not item.keep:  # complete: it is the row (or an older state a later change fixes)
            self._delete(item.table, moved_to)
            self._insert_many(item.table, [item.row])
        elif moved_to != item.match and not self._has(item.table, moved_to):
            log.warning(
                "%s: CDC sequence %d moves the row %s to %s while a chunked snapshot was read, "
                "without its unchanged TOAST columns %s, and the copy has the row at neither "
                "key: if it still lacks it once caught up, re-snapshot the table (REPLICA "
                "IDENTITY FULL avoids this)",
                item.table,
                item.seq,
                item.match,
                moved_to,
                ", ".join(item.keep),
            )

    def _set(self, table_name: str, match: Row, row: Row, names: list[str]) -> int:
        """Set `names` of the row matching `match` to `row`'s values; rows changed (0 or 1).
        With no names (an update whose every column is an unchanged TOAST value, or of a
        table without columns) there is nothing to set: whether the row is there."""
        if not names:
            return int(self._has(table_name, match))
        where, args = self._where(match)
        table = ident(table_name)
        cur = self.db.execute(
            f"UPDATE {table} SET {', '.join(f'{ident(c)} = ?' for c in names)}"
            f" WHERE rowid = (SELECT rowid FROM {table} WHERE {where} LIMIT 1)",
            [stored_value(row[c]) for c in names] + args,
        )
        return int(cur.rowcount)

    def _has(self, table: str, match: Row) -> bool:
        where, args = self._where(match)
        return (
            self.db.execute(f"SELECT 1 FROM {ident(table)} WHERE {where} LIMIT 1", args).fetchone()
            is not None
        )

    def _delete(self, table: str, match: Row) -> None:
        where, args = self._where(match)
        self.db.execute(
            f"DELETE FROM {ident(table)}"
            f" WHERE rowid = (SELECT rowid FROM {ident(table)} WHERE {where} LIMIT 1)",
            args,
        )

    # -- reading -----------------------------------------------------------------------------

    def rows(self, table: str, columns: list[str]) -> Any:
        """An iterator of the copy's rows of `table`, `columns` in that order (a column the
        copy lacks reads as the text `<missing column>`)."""
        have = set(self.columns(table))
        select = ", ".join(ident(c) if c in have else "'<missing column>'" for c in columns)
        if not columns:  # a table without columns: its rows, each empty
            return (() for _ in self.db.execute(f"SELECT 1 FROM {ident(table)}"))
        return self.db.execute(f"SELECT {select} FROM {ident(table)}")
