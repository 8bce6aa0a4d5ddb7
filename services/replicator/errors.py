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
    if "can no longer get changes" in text or "has been invalidated" in text:
        return (
            f"{text}. The slot was invalidated (its WAL was removed, e.g. max_slot_wal_keep_size). "
            "Drop it (SELECT pg_drop_replication_slot('<slot>')), start the replicator to create "
            "it again, and re-snapshot the tables: changes in between are lost to the slot"
        )
    return text or type(exc).__name__
