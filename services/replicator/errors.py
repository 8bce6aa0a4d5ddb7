"""What can go wrong in the replicator, and the one place that decides whether to retry.

Transient failures (a server down, restarting, unreachable; a slot another replicator holds)
restart the pipeline from the slot's confirmed position after a backoff. Permanent ones
(configuration PostgreSQL or the operator must fix) end the process with a clear message and
a non-zero exit code: retrying them would only be a crash loop.
"""

from __future__ import annotations

import psycopg

from services.replicator.wire_reader import DecodeError
from shared import pg_errors
from shared.codec import CodecError
from shared.nats_connection import NatsRefused
from shared.postgres import ReplicationConnectionError


class PermanentError(RuntimeError):
    """Needs an operator: the message says what to change."""


class TransientError(RuntimeError):
    """Expected to clear up by itself: retried with backoff."""


class SlotBusyError(TransientError):
    """Another process streams from the slot (a standby replicator waits here)."""


class OversizedRowError(PermanentError):
    """A row larger than NATS max_payload under `--oversized-policy stop`."""


# pg_replication_slots.invalidation_reason (17+) → why, and what to do about it.
INVALIDATION_CAUSES = {
    "rows_removed": (
        "the primary removed catalog rows the slot still needed (hot_standby_feedback was off, "
        "or the standby was disconnected from its physical slot)"
    ),
    "wal_level_insufficient": "the primary's wal_level was lowered below logical",
    "wal_removed": "the WAL the slot needed was removed (max_slot_wal_keep_size)",
    "idle_timeout": "the slot was unused for longer than idle_replication_slot_timeout",
}


def is_permanent(exc: BaseException) -> bool:
    """The single rule for transient vs permanent."""
    if isinstance(exc, PermanentError | DecodeError | CodecError | NatsRefused):
        return True
    if isinstance(exc, TransientError):
        return False
    if isinstance(exc, psycopg.Error | ReplicationConnectionError):
        return pg_errors.is_permanent(exc)
    return False


def explain(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    if (
        "can no longer get changes" in text
        or "can no longer access" in text
        or "has been invalidated" in text
    ):
        cause = next(
            (why for reason, why in INVALIDATION_CAUSES.items() if f'"{reason}"' in text),
            "its WAL was removed, e.g. max_slot_wal_keep_size",
        )
        return (
            f"{text}. The slot was invalidated ({cause}). Fix the cause, drop the slot (SELECT "
            "pg_drop_replication_slot('<slot>')), start the replicator to create it again, and "
            "re-snapshot the tables: changes in between are lost to the slot"
        )
    return text or type(exc).__name__
