"""A copy of the followed tables in dictionaries: the smallest complete application of the
wire-format rules, for tests, examples and consumers that keep a table in memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pg_nats_bridge.apply_error import ApplyError, key_of
from pg_nats_bridge.changes import (
    BackfillRows,
    Delete,
    Insert,
    Item,
    Reset,
    Row,
    Rows,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)


class MemoryCopy:
    """`tables[name]` is a list of the table's rows. Rows are kept by primary key (an update
    or delete finds its row at once), or by the whole old row in a table without one.

    Each item is applied whole or not at all: an item that cannot be applied raises
    `ApplyError` and leaves the copy holding every item before it, so following on from
    `TableFollower.state_before(error.seq)` retries it and loses nothing."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[Any, Row]] = {}
        self.schemas: dict[str, TableSchema] = {}
        self.left_out: dict[str, str] = {}  # tables left out of the copy, and why

    @property
    def tables(self) -> dict[str, list[Row]]:
        return {table: list(rows.values()) for table, rows in self._rows.items()}

    def _key(self, table: str, row: Row) -> Any:
        key = self.schemas[table].primary_key
        return tuple(row[k] for k in key) if key else id(row)

    def _find(self, table: str, match: Row) -> Row | None:
        key = self.schemas[table].primary_key
        rows = self._rows[table]
        if key and set(match) == set(key):
            return rows.get(tuple(match[k] for k in key))
        return next(
            (r for r in rows.values() if all(r.get(c) == v for c, v in match.items())), None
        )

    def _add(self, table: str, row: Row) -> None:
        self._rows[table][self._key(table, row)] = row

    def _remove(self, table: str, row: Row) -> None:
        self._rows[table].pop(self._key(table, row), None)

    def apply_all(self, items: Iterable[Item]) -> None:
        """`apply` each, in order (`TableFollower.batches` hands out such lists)."""
        add, apply = self._add, self._apply
        for item in items:
            try:
                if type(item) is Insert:  # most of a backlog: the shortest way
                    add(item.table, item.row)
                else:
                    apply(item)
            except Exception as exc:
                raise self._error(item, exc) from exc

    def apply(self, item: Item) -> None:
        try:
            self._apply(item)
        except Exception as exc:
            raise self._error(item, exc) from exc

    def _error(self, item: Item, exc: Exception) -> ApplyError:
        schema = self.schemas.get(getattr(item, "table", ""))
        return ApplyError(item, key_of(item, schema.primary_key if schema else ()), exc)

    def _apply(self, item: Item) -> None:
        """Everything that can fail (a key, a lookup) comes before the first change to the
        rows, so that a failed item changes nothing."""
        if isinstance(item, Reset):
            self._rows[item.table] = {}
            self.schemas[item.table] = item.schema
            self.left_out.pop(item.table, None)
        elif isinstance(item, TableFailed):
            self.left_out[item.table] = item.reason
        elif isinstance(item, Rows | BackfillRows):  # a backfill's replace theirs by key
            keyed = {self._key(item.table, row): row for row in item.rows}  # hashed here
            self._rows[item.table].update(keyed)
        elif isinstance(item, Insert):
            self._add(item.table, item.row)
        elif isinstance(item, Update):
            old = self._find(item.table, item.match) or {}
            if not old and item.replay and item.keep:
                return  # not in the copy, and incomplete: see Insert's `replay`
            new = {**{c: old.get(c) for c in item.keep}, **item.row}
            new_key = self._key(item.table, new)
            hash(new_key)  # an array in the key arrives as a list: unhashable
            rows = self._rows[item.table]
            if old:
                rows.pop(self._key(item.table, old), None)
            rows[new_key] = new
        elif isinstance(item, Delete):
            found = self._find(item.table, item.match)
            if found is not None:
                self._remove(item.table, found)
        elif isinstance(item, Truncate):
            self._rows[item.table] = {}
        elif isinstance(item, SchemaChanged):
            before = self.schemas.get(item.table)
            if before is None or before.primary_key != item.schema.primary_key:
                names = item.schema.primary_key
                held = self._rows.get(item.table, {}).values()  # keyed anew
                self._rows[item.table] = {
                    (tuple(row[k] for k in names) if names else id(row)): row for row in held
                }
            self.schemas[item.table] = item.schema
