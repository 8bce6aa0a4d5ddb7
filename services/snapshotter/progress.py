"""How far a running snapshot is: rows published, the table's estimated size, the rate and the
time left, for the snapshotter's health and metrics, the admin's status and `bridge snapshot`.

The estimate is PostgreSQL's own (`pg_class.reltuples` of the table, or of its partitions), as
of the last VACUUM or ANALYZE: free to read, usually within a few percent, but unknown for a
table never analyzed and an upper bound when the publication filters rows. Counting the rows
would read the whole table once more.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from services.snapshotter import metrics

# Leaf relations (a plain table, or a partitioned table's partitions) and their estimates;
# -1 is "never vacuumed or analyzed" (PostgreSQL 14+).
ESTIMATE_QUERY = (
    "SELECT count(*), count(*) FILTER (WHERE c.reltuples < 0), sum(greatest(c.reltuples, 0))"
    " FROM pg_class c WHERE c.relkind = 'r' AND (c.oid = %(table)s::regclass"
    " OR c.oid IN (SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf))"
)


async def estimate_rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> int | None:
    """The planner's row estimate of the table, or None when some part was never analyzed."""
    name = sql.Identifier(schema, table).as_string(conn)
    cur = await conn.execute(ESTIMATE_QUERY, {"table": name})
    row = await cur.fetchone()
    if row is None or not row[0] or row[1]:
        return None
    return int(row[2] or 0)


@dataclass
class SnapshotProgress:
    table: str  # schema.table
    estimated_rows: int | None = None
    rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, rows: int) -> None:
        self.rows += rows
        self._publish()

    def estimated(self, rows: int | None) -> None:
        self.estimated_rows = rows
        self._publish()

    def rate(self) -> float:
        """Rows per second since the snapshot began (its export included)."""
        return self.rows / max(time.monotonic() - self.started, 1e-3)

    def seconds_left(self) -> float | None:
        """At the rate so far, until the estimate is reached; None without an estimate or a
        rate, 0 once past the estimate (it was low)."""
        rate = self.rate()
        if self.estimated_rows is None or not self.rows or rate <= 0:
            return None
        return max(self.estimated_rows - self.rows, 0) / rate

    def as_dict(self) -> dict[str, Any]:
        left = self.seconds_left()
        return {
            "table": self.table,
            "rows_done": self.rows,
            "rows_estimated": self.estimated_rows,
            "rows_per_second": round(self.rate()),
            "seconds_left": None if left is None else round(left, 1),
            "seconds_running": round(time.monotonic() - self.started, 1),
        }

    def _publish(self) -> None:
        metrics.progress_rows.labels(self.table).set(self.rows)
        metrics.progress_rate.labels(self.table).set(self.rate())
        if self.estimated_rows is not None:
            metrics.progress_estimated.labels(self.table).set(self.estimated_rows)
        left = self.seconds_left()
        if left is not None:
            metrics.progress_seconds_left.labels(self.table).set(left)

    def finish(self) -> None:
        """The snapshot ended: its series go (a table's series exist while it is snapshotted)."""
        for gauge in (
            metrics.progress_rows,
            metrics.progress_rate,
            metrics.progress_estimated,
            metrics.progress_seconds_left,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(self.table)
