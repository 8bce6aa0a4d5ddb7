"""What can go wrong in the replicator, and the one place that decides whether to retry.

Transient failures (a server down, restarting, unreachable; a slot another replicator holds)
restart the pipeline from the slot's confirmed position after a backoff. Permanent ones
(configuration PostgreSQL or the operator must fix) end the process with a clear message and
a non-zero exit code: retrying them would only be a crash loop.
"""

from __future__ import annotations

import enum

import nats.errors
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


class StreamUnansweredError(TransientError):
    """JetStream left a request unanswered: no responders (a stream electing a leader, a
    server just back and not yet current)."""


# PostgreSQL's SQLSTATE for "replication slot … is active for PID …" (object_in_use).
OBJECT_IN_USE = "55006"


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


class Failure(enum.Enum):
    """What a failed pipeline calls for (services/replicator/restart_policy.py acts on it)."""

    PERMANENT = "permanent"  # stop: an operator must act
    SLOT_BUSY = "slot_busy"  # another replicator streams from the slot: wait for it
    UNANSWERED = "unanswered"  # JetStream did not answer: again once it does
    TRANSIENT = "transient"  # again after a backoff


def classify(exc: BaseException) -> Failure:
    """The single rule for what a failure is: by its type and PostgreSQL's SQLSTATE, never
    by its message's words."""
    if is_permanent(exc):
        return Failure.PERMANENT
    if isinstance(exc, SlotBusyError) or _sqlstate(exc) == OBJECT_IN_USE:
        return Failure.SLOT_BUSY
    if isinstance(
        exc,
        StreamUnansweredError
        | TimeoutError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError,
    ):
        return Failure.UNANSWERED
    return Failure.TRANSIENT


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, ReplicationConnectionError):
        return exc.sqlstate
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    return None


def is_permanent(exc: BaseException) -> bool:
    """Transient vs permanent (`classify` says which transient)."""
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
