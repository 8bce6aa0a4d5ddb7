"""A copy of the followed tables in dictionaries: the smallest complete application of the
wire-format rules, for tests, examples and consumers that keep a table in memory."""

from __future__ import annotations

from typing import Any

from pg_nats_bridge.changes import (
    Delete,
    Insert,
    Item,
    Reset,
    Row,
    Rows,
    SchemaChanged,
    TableSchema,
    Truncate,
    Update,
)


class MemoryCopy:
    """`tables[name]` is a list of rows; rows are found by primary key, or by the whole old
    row in a table without one."""

    def __init__(self) -> None:
        self.tables: dict[str, list[Row]] = {}
        self.schemas: dict[str, TableSchema] = {}
        self._index: dict[str, dict[tuple[Any, ...], Row]] = {}

    def _key(self, table: str, row: Row) -> tuple[Any, ...] | None:
        key = self.schemas[table].primary_key
        return tuple(row[k] for k in key) if key else None

    def _find(self, table: str, match: Row) -> Row | None:
        key = self.schemas[table].primary_key
        if key and set(match) == set(key):
            return self._index[table].get(tuple(match[k] for k in key))
        return next(
            (r for r in self.tables[table] if all(r.get(c) == v for c, v in match.items())), None
        )

    def _add(self, table: str, row: Row) -> None:
        self.tables[table].append(row)
        key = self._key(table, row)
        if key is not None:
            self._index[table][key] = row

    def _remove(self, table: str, row: Row) -> None:
        self.tables[table] = [r for r in self.tables[table] if r is not row]
        key = self._key(table, row)
        if key is not None:
            self._index[table].pop(key, None)

    def apply(self, item: Item) -> None:
        if isinstance(item, Reset):
            self.tables[item.table], self._index[item.table] = [], {}
            self.schemas[item.table] = item.schema
        elif isinstance(item, Rows):
            for row in item.rows:
                self._add(item.table, row)
        elif isinstance(item, Insert):
            self._add(item.table, dict(item.row))
        elif isinstance(item, Update):
            old = self._find(item.table, item.match) or {}
            if old:
                self._remove(item.table, old)
            self._add(item.table, {**{c: old.get(c) for c in item.keep}, **item.row})
        elif isinstance(item, Delete):
            found = self._find(item.table, item.match)
            if found is not None:
                self._remove(item.table, found)
        elif isinstance(item, Truncate):
            self.tables[item.table], self._index[item.table] = [], {}
        elif isinstance(item, SchemaChanged):
            self.schemas[item.table] = item.schema
