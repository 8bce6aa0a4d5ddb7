"""pg_nats_bridge: consume what pg-nats-bridge publishes.

`TableFollower` turns the CDC and INIT streams into the changes that keep a copy of tables
equal to PostgreSQL (a snapshot, then every change after it, resumable); `SqliteCopy` and
`MemoryCopy` apply them. The import name is the distribution's, so it cannot collide with
other installed packages.
"""

from pg_nats_bridge.apply_error import ApplyError
from pg_nats_bridge.changes import (
    Backfilled,
    BackfillRows,
    Bootstrapped,
    CaughtUp,
    Change,
    Committed,
    Delete,
    Insert,
    Item,
    Oversized,
    Reset,
    Rows,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)
from pg_nats_bridge.follower import FollowError, TableFollower
from pg_nats_bridge.lsn import Lsn
from pg_nats_bridge.memory import MemoryCopy
from pg_nats_bridge.sqlite import SqliteCopy

__all__ = [
    "ApplyError",
    "BackfillRows",
    "Backfilled",
    "Bootstrapped",
    "CaughtUp",
    "Change",
    "Committed",
    "Delete",
    "FollowError",
    "Insert",
    "Item",
    "Lsn",
    "MemoryCopy",
    "Oversized",
    "Reset",
    "Rows",
    "SchemaChanged",
    "SqliteCopy",
    "TableFailed",
    "TableFollower",
    "TableSchema",
    "Truncate",
    "Update",
]
