"""The one error a copy raises for an item it cannot apply.

A copy that goes on past a change it could not apply is silently wrong for good, and one that
stores a position past it loses the change on the next start too. So a copy stops instead, and
the error says everything an operator needs to find the change again: the table, the row's
key, the change's commit LSN and CDC stream sequence, and what went wrong.
"""

from __future__ import annotations

from typing import Any

from pg_nats_bridge.changes import Delete, Insert, Item, Oversized, Row, Update


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def key_of(item: Item, primary_key: tuple[str, ...]) -> Row | None:
    """The key an error names for `item`: what an update or delete matches on, an insert's
    primary key columns (its whole row without a key), an oversized marker's key."""
    if isinstance(item, Update | Delete):
        return item.match
    if isinstance(item, Insert):
        return {k: item.row.get(k) for k in primary_key} if primary_key else dict(item.row)
    if isinstance(item, Oversized):
        key = item.marker.get("key")
        return key if isinstance(key, dict) else None
    return None


class ApplyError(RuntimeError):
    """`item` could not be applied (`__cause__` says why). What the copy holds afterwards is
    the copy's to say: `SqliteCopy` rolls back to its last commit, `MemoryCopy` holds every
    item before this one and none of it. Either way the position to store is never past the
    change: a restart hands it out again (docs/consuming.md, "When a change cannot be
    applied")."""

    def __init__(self, item: Item, key: Row | None, cause: BaseException) -> None:
        self.item = item
        self.table: str | None = getattr(item, "table", None)
        self.key = key
        self.seq: int | None = getattr(item, "seq", None)
        # The CDC sequence to follow on from (`state_before`): the change itself, or the first
        # change of its transaction when the copy undid the whole transaction (`MemoryCopy`).
        self.retry_from: int | None = self.seq
        self.commit_lsn: str | None = getattr(item, "commit_lsn", None)
        what = type(item).__name__.lower()
        where = []
        if key is not None:
            where.append(f"key {_short(key)}")
        if self.commit_lsn is not None:
            where.append(f"commit LSN {self.commit_lsn}")
        if self.seq is not None:
            where.append(f"CDC sequence {self.seq}")
        super().__init__(
            f"{self.table or 'the copy'}: cannot apply the {what}"
            f"{' (' + ', '.join(where) + ')' if where else ''}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.__cause__ = cause
