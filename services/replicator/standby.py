"""Decoding on a hot standby (PostgreSQL 16+): what the standby needs, and where the writes of
the setup go.

A logical slot on a standby takes no replication connection, slot or WAL retention on the
primary. But the standby cannot write: the publication and a REPLICA IDENTITY FULL are made on
the primary (`BRIDGE_PRIMARY_URL`) and reach the standby by replay, or exist already. And the
slot only lasts while the primary keeps the rows and WAL it needs: with `hot_standby_feedback`
off, the primary's vacuum removes catalog rows the slot still needs and PostgreSQL invalidates
the slot (a conflict); without a physical slot of its own on the primary
(`primary_slot_name`), the feedback and the WAL are held only while the standby is connected.
Those are refused at start, by name, rather than found later as an invalidated slot.
"""

from __future__ import annotations

import time

import psycopg

from services.replicator.errors import INVALIDATION_CAUSES, PermanentError, TransientError
from shared import slots
from shared.lsn import Lsn

# How long the standby may take to replay what the setup changed on the primary.
REPLAY_TIMEOUT_SECONDS = 60.0


def is_standby(conn: psycopg.Connection) -> bool:
    (recovering,) = conn.execute("SELECT pg_is_in_recovery()").fetchone() or (False,)
    return bool(recovering)


def check_standby(conn: psycopg.Connection) -> None:
    """What a standby needs before a slot can live on it, each gap named with its fix."""
    version = conn.info.server_version
    if version < 160000:
        raise PermanentError(
            f"the database URL is a hot standby of PostgreSQL {version // 10000}: decoding on a "
            "standby needs PostgreSQL 16 or later. Point the bridge at the primary"
        )
    problems = []
    (feedback,) = conn.execute("SHOW hot_standby_feedback").fetchone() or ("off",)
    if feedback != "on":
        problems.append(
            "hot_standby_feedback is off: the primary's vacuum would remove catalog rows the "
            "slot needs and PostgreSQL would invalidate the slot. Set hot_standby_feedback = on "
            "on the standby (ALTER SYSTEM SET hot_standby_feedback = on; SELECT "
            "pg_reload_conf())"
        )
    (slot,) = conn.execute("SHOW primary_slot_name").fetchone() or ("",)
    if not slot:
        problems.append(
            "primary_slot_name is empty: without a physical slot on the primary, the WAL and "
            "the catalog rows the standby's logical slot needs are kept only while the standby "
            "is connected. Create one on the primary (SELECT "
            "pg_create_physical_replication_slot('standby_slot')) and set primary_slot_name = "
            "'standby_slot' on the standby"
        )
    if problems:
        raise PermanentError(
            "the database URL is a hot standby, and decoding there needs: " + "; ".join(problems)
        )


def check_primary(primary: psycopg.Connection) -> None:
    if is_standby(primary):
        raise PermanentError(
            "BRIDGE_PRIMARY_URL leads to a server in recovery: it must be the standby's primary"
        )
    (wal_level,) = primary.execute("SHOW wal_level").fetchone() or ("",)
    if wal_level != "logical":
        raise PermanentError(
            f"the primary's wal_level is '{wal_level}': decoding on a standby needs "
            "wal_level = logical on the primary (ALTER SYSTEM SET wal_level = 'logical', then "
            "restart the primary)"
        )


def read_only_refusal(exc: psycopg.Error) -> PermanentError:
    """The setup needed to write (create or change the publication, set a replica identity)
    on a standby, and no primary was given."""
    return PermanentError(
        f"the setup needs a change the standby cannot make ({str(exc).strip()}): create the "
        "publication (and any REPLICA IDENTITY FULL) on the primary yourself, as "
        "docs/operations/high-availability.md shows, or set BRIDGE_PRIMARY_URL so the bridge "
        "makes them there"
    )


def wait_replayed(primary: psycopg.Connection, standby: psycopg.Connection) -> None:
    """Until the standby has replayed what the primary wrote so far (the setup's changes)."""
    (written,) = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone() or ("",)
    target = Lsn.parse(written)
    deadline = time.monotonic() + REPLAY_TIMEOUT_SECONDS
    while True:
        (replayed,) = standby.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone() or (None,)
        if replayed is not None and Lsn.parse(replayed) >= target:
            return
        if time.monotonic() > deadline:
            raise TransientError(
                f"the standby has not replayed the primary's WAL up to {target} (it is at "
                f"{replayed}) after {REPLAY_TIMEOUT_SECONDS:.0f} s; is it streaming?"
            )
        time.sleep(0.1)


def invalidated(conn: psycopg.Connection, slot: str) -> str | None:
    """Why `slot` was invalidated on this server and what to do, or None when it was not."""
    version = conn.info.server_version
    if version >= 170000:
        row = conn.execute(slots.INVALIDATION_REASON, (slot,)).fetchone()
        reason = row[0] if row else None
    elif version >= 160000:
        row = conn.execute(slots.CONFLICTING, (slot,)).fetchone()
        reason = "rows_removed or wal_level_insufficient" if row and row[0] else None
    else:
        return None
    if not reason:
        return None
    cause = INVALIDATION_CAUSES.get(reason, reason)
    return (
        f"replication slot {slot!r} was invalidated ({reason}: {cause}); PostgreSQL cannot "
        "decode from it again. Fix the cause, drop the slot (SELECT "
        f"pg_drop_replication_slot('{slot}') on this server), start the replicator to create "
        "it again and re-snapshot the tables: changes in between are lost to the slot"
    )
