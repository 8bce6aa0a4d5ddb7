"""The snapshots running in one snapshotter, by table: what a request for a table joins, what
an operator's pause or cancel reaches, what /health lists.

A full snapshot of a table runs once at a time; requests arriving meanwhile join it. A partial
backfill joins nothing and nothing joins it (its requester counts on its `lsn` being taken
after the request), so each has a key of its own.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from services.snapshotter.key_ranges import Operator
from services.snapshotter.progress import SnapshotProgress


@dataclass(frozen=True)
class SnapshotKey:
    schema: str
    table: str
    backfill: int | None = None  # a backfill's number, telling running backfills apart

    @property
    def name(self) -> str:
        name = f"{self.schema}.{self.table}"
        return name if self.backfill is None else f"{name} (backfill)"


@dataclass
class RunningSnapshot:
    key: SnapshotKey
    result: asyncio.Future[dict[str, Any]]  # the meta, or the failure, for joined requests
    progress: SnapshotProgress
    operator: Operator = field(default_factory=Operator)


class RunningSnapshots:
    def __init__(self) -> None:
        self._running: dict[SnapshotKey, RunningSnapshot] = {}
        self._backfills = itertools.count()

    def __len__(self) -> int:
        return len(self._running)

    def full(self, schema: str, table: str) -> RunningSnapshot | None:
        """The table's full snapshot running here, if one is."""
        return self._running.get(SnapshotKey(schema, table))

    def backfills(self) -> int:
        return sum(1 for key in self._running if key.backfill is not None)

    def add(self, schema: str, table: str, backfill: bool) -> RunningSnapshot:
        """Register a snapshot before its first `await`, so that two requests never both
        start one of the same table."""
        key = SnapshotKey(schema, table, next(self._backfills) if backfill else None)
        assert key not in self._running, key
        result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        entry = self._running[key] = RunningSnapshot(key, result, SnapshotProgress(key.name))
        return entry

    def remove(self, entry: RunningSnapshot) -> None:
        del self._running[entry.key]
        entry.progress.finish()

    def progress(self) -> list[dict[str, Any]]:
        """What /health shows of each (read from the HTTP thread: a copy of the values)."""
        return [entry.progress.as_dict() for entry in list(self._running.values())]
