"""Every question the bridge asks PostgreSQL about replication slots (`pg_replication_slots`),
in one place: a slot's existence and position, whether it is in use, why it was invalidated,
what its creation waits for, the physical slots a failover needs. Each is a query for `%s`,
the slot's name, where it names one."""

from __future__ import annotations

from typing import Final

SLOT_SETUP: Final = (
    "SELECT plugin, database, confirmed_flush_lsn::text, wal_status"
    " FROM pg_replication_slots WHERE slot_name = %s"
)
"""What the replicator checks of its slot at start: plugin, database, position, WAL status."""

SLOT_ACTIVITY: Final = (
    "SELECT active, pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()"
    " THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,"
    " confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = %s"
)
"""Whether the slot is streaming, and the WAL bytes it holds back (the lag metric)."""

CONFIRMED_FLUSH: Final = (
    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
)
"""How far the slot's consumer confirmed: every change below it is in JetStream."""

INVALIDATION_REASON: Final = (
    "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = %s"
)
"""Why the slot was invalidated (PostgreSQL 17+)."""

CONFLICTING: Final = "SELECT conflicting FROM pg_replication_slots WHERE slot_name = %s"
"""Whether the slot was invalidated by a recovery conflict (PostgreSQL 16)."""

FAILOVER_AND_ACTIVE: Final = (
    "SELECT failover, active FROM pg_replication_slots WHERE slot_name = %s"
)
"""Whether the slot is synchronized to standbys (PostgreSQL 17+), and in use."""

PHYSICAL_SLOTS: Final = "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical'"
"""The physical slots (a standby's `primary_slot_name`)."""

HAS_STANDBY: Final = (
    "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')"
    " + (SELECT count(*) FROM pg_stat_replication r WHERE NOT EXISTS (SELECT 1"
    "    FROM pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical'))"
)
"""Physical slots plus streaming standbys without one: nonzero where a standby may exist."""

CREATION_BLOCKERS: Final = (
    "SELECT a.pid, a.usename, a.application_name, a.state, a.xact_start"
    " FROM pg_replication_slots s"
    " CROSS JOIN LATERAL unnest(pg_blocking_pids(s.active_pid)) AS b(pid)"
    " JOIN pg_stat_activity a ON a.pid = b.pid"
    " WHERE s.slot_name = %s ORDER BY a.xact_start NULLS LAST, a.pid"
)
"""The sessions a slot being created waits for (while it is created a slot is listed already,
its creator as `active_pid`)."""
