"""A copy of the followed tables in dictionaries: the smallest complete application of the
wire-format rules, for tests, examples and consumers that keep a table in memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pg_nats_bridge.apply_error import ApplyError, key_of
from pg_nats_bridge.changes import (
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

_MISSING = object()  # in the undo log: the key had no row
_CHANGES = (Insert, Update, Delete, Truncate, Oversized)


class MemoryCopy:
    """`tables[name]` is a list of the table's rows. Rows are kept by primary key (an update
    or delete finds its row at once), or by the whole old row in a table without one.

    A transaction's changes are held until its `Committed` (or `CaughtUp`) and then applied
    together: `tables` only ever shows whole transactions. A change that cannot be applied
    undoes the rest of its transaction and raises `ApplyError`: the copy holds every
    transaction before it and none of it, so following on from
    `TableFollower.state_before(error.retry_from)` hands the whole transaction out again.
    A table read again after a schema change keeps its rows until the new ones are all there
    (`Bootstrapped`), then has them."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[Any, Row]] = {}
        self.schemas: dict[str, TableSchema] = {}
        self.left_out: dict[str, str] = {}  # tables left out of the copy, and why
        self._open: list[Item] = []  # the open transaction's changes
        # Tables being read again (a schema change), until their `Bootstrapped`: rows, schema
        self._staged: dict[str, tuple[dict[Any, Row], TableSchema]] = {}
        self._undo: list[tuple[str, Any, Any]] | None = None  # while one is applied

    @property
    def tables(self) -> dict[str, list[Row]]:
        return {table: list(rows.values()) for table, rows in self._rows.items()}

    def _key(self, table: str, row: Row) -> Any:
        return _key_in(self.schemas[table], row)

    def _find(self, table: str, match: Row) -> Row | None:
        key = self.schemas[table].primary_key
        rows = self._rows[table]
        if key and set(match) == set(key):
            return rows.get(tuple(match[k] for k in key))
        return next(
            (r for r in rows.values() if all(r.get(c) == v for c, v in match.items())), None
        )

    def _set(self, table: str, key: Any, row: Row) -> None:
        rows = self._rows[table]
        if self._undo is not None:
            self._undo.append((table, key, rows.get(key, _MISSING)))
        rows[key] = row

    def _pop(self, table: str, key: Any) -> None:
        rows = self._rows[table]
        if key in rows:
            if self._undo is not None:
                self._undo.append((table, key, rows[key]))
            del rows[key]

    def apply_all(self, items: Iterable[Item]) -> None:
        """`apply` each, in order (`TableFollower.batches` hands out such lists)."""
        held, apply = self._open.append, self.apply
        for item in items:
            if type(item) in _CHANGES:  # most of a backlog: the shortest way
                held(item)
            else:
                apply(item)

    def apply(self, item: Item) -> None:
        if isinstance(item, _CHANGES):
            self._open.append(item)
        elif isinstance(item, Committed | CaughtUp):
            self._apply_open()
        else:
            try:
                self._apply(item)
            except Exception as exc:
                raise self._error(item, exc) from exc

    def _apply_open(self) -> None:
        """The held transaction, whole or not at all."""
        if not self._open:
            return
        held = self._open.copy()
        self._open.clear()  # the same list: `apply_all` appends to it
        undo: list[tuple[str, Any, Any]] = []
        self._undo = undo
        try:
            for item in held:
                try:
                    self._apply(item)
                except Exception as exc:
                    for table, key, old in reversed(undo):
                        if key is None:  # a truncate: the rows it replaced
                            self._rows[table] = old
                        elif old is _MISSING:
                            self._rows[table].pop(key, None)
                        else:
                            self._rows[table][key] = old
                    error = self._error(item, exc)
                    error.retry_from = getattr(held[0], "seq", None)
                    raise error from exc
        finally:
            self._undo = None

    def _error(self, item: Item, exc: Exception) -> ApplyError:
        schema = self.schemas.get(getattr(item, "table", ""))
        return ApplyError(item, key_of(item, schema.primary_key if schema else ()), exc)

    def _apply(self, item: Item) -> None:
        """Everything that can fail (a key, a lookup) comes before the first change to the
        rows, so that a failed item changes nothing."""
        if isinstance(item, Reset):
            if item.table in self._rows:  # read again (a schema change): swapped in whole
                self._staged[item.table] = ({}, item.schema)
            else:
                self._rows[item.table] = {}
                self.schemas[item.table] = item.schema
            self.left_out.pop(item.table, None)
        elif isinstance(item, Bootstrapped):
            for table, (rows, schema) in self._staged.items():
                self._rows[table], self.schemas[table] = rows, schema
            self._staged.clear()
        elif isinstance(item, TableFailed):
            self.left_out[item.table] = item.reason
            if item.dropped:  # PostgreSQL no longer has it, or no longer publishes it
                self._rows.pop(item.table, None)
                self.schemas.pop(item.table, None)
                self._staged.pop(item.table, None)
        elif isinstance(item, Rows | BackfillRows):  # a backfill's replace theirs by key
            staged = self._staged.get(item.table)
            if staged is not None:
                rows, schema = staged
                rows.update({_key_in(schema, row): row for row in item.rows})
                return
            keyed = {self._key(item.table, row): row for row in item.rows}  # hashed here
            self._rows[item.table].update(keyed)
        elif isinstance(item, Insert):
            self._set(item.table, self._key(item.table, item.row), item.row)
        elif isinstance(item, Update):
            old = self._find(item.table, item.match) or {}
            if not old and item.replay and item.keep:
                return  # not in the copy, and incomplete: see Insert's `replay`
            new = {**{c: old.get(c) for c in item.keep}, **item.row}
            new_key = self._key(item.table, new)
            hash(new_key)  # an array in the key arrives as a list: unhashable
            if old:
                self._pop(item.table, self._key(item.table, old))
            self._set(item.table, new_key, new)
        elif isinstance(item, Delete):
            found = self._find(item.table, item.match)
            if found is not None:
                self._pop(item.table, self._key(item.table, found))
        elif isinstance(item, Truncate):
            if self._undo is not None:
                self._undo.append((item.table, None, self._rows[item.table]))
            self._rows[item.table] = {}
        elif isinstance(item, SchemaChanged):
            before = self.schemas.get(item.table)
            if before is not None and set(before.columns) - set(item.schema.columns):
                kept = item.schema.columns  # columns dropped: gone from every row
                for row in self._rows.get(item.table, {}).values():
                    for name in [c for c in row if c not in kept]:
                        del row[name]
            if before is None or before.primary_key != item.schema.primary_key:
                held = self._rows.get(item.table, {}).values()  # keyed anew
                self._rows[item.table] = {_key_in(item.schema, row): row for row in held}
            self.schemas[item.table] = item.schema


def _key_in(schema: TableSchema, row: Row) -> Any:
    """Where a row is kept: by its primary key, or by itself in a table without one."""
    key = schema.primary_key
    return tuple(row[k] for k in key) if key else id(row)
