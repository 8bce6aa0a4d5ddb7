"""Failover slots: the replication slot surviving a PostgreSQL failover (17 and later).

A slot lives on one server. PostgreSQL 17 lets a physical standby keep a copy of a logical
slot in sync (`FAILOVER true` on the slot, `sync_replication_slots = on` on the standby), so
that after a promotion the bridge finds its slot on the new primary at a position no later
than what it confirmed, and continues: a replay of what it had already published, dropped by
the Msg-Id duplicate window. Three more settings make that safe, and none of them is the
bridge's to set, so each missing one is said at start, in one line:

- on the primary, `synchronized_standby_slots` names the standby's physical slot: the primary
  then sends the bridge no change the standby has not received, so nothing the bridge
  published can be missing from a promoted standby;
- on the standby, `hot_standby_feedback = on` and a `primary_slot_name` (the physical slot),
  and `primary_conninfo` with a `dbname`, which slot synchronization needs.

The standby's settings can only be read on the standby: they are checked on the other hosts
of a multi-host database URL (`host=primary,standby … target_session_attrs=read-write`, which
is also how the replicator finds the new primary by itself).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared import postgres, slots
from shared.postgres import ReplicationConnection, quote_ident

log = logging.getLogger(__name__)

FAILOVER_SLOTS_SINCE = 170000


def supported(conn: psycopg.Connection) -> bool:
    return conn.info.server_version >= FAILOVER_SLOTS_SINCE


def create_slot(conn: psycopg.Connection, slot: str, failover: bool) -> None:
    if failover and supported(conn):
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, false, true)",
            (slot,),
        )
    else:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def make_failover(database_url: str, slot: str) -> None:
    """Turn failover on for an existing slot (a replication command; the slot must be idle)."""
    with ReplicationConnection(database_url, application_name="bridge-setup") as repl:
        repl.command(f"ALTER_REPLICATION_SLOT {quote_ident(slot)} (FAILOVER true)")
    log.info("slot %s now has failover enabled", slot)


def ensure_failover(conn: psycopg.Connection, database_url: str, slot: str) -> None:
    """A slot created before (or without) failover gets it, where the server supports it."""
    if not supported(conn):
        return
    row = conn.execute(slots.FAILOVER_AND_ACTIVE, (slot,)).fetchone()
    if row is None or row[0]:
        return
    if row[1]:
        log.warning("slot %s has no failover and is in use: not changed now", slot)
        return
    try:
        make_failover(database_url, slot)
    except Exception as exc:
        log.warning("could not enable failover on slot %s: %s", slot, str(exc).strip())


def readiness(conn: psycopg.Connection, database_url: str, slot: str) -> list[str]:
    """One line per setting that keeps the slot from surviving a failover (empty: ready)."""
    version = conn.info.server_version // 10000
    if not supported(conn):
        return [
            f"PostgreSQL {version} cannot synchronize slots to a standby (failover slots need "
            f"17+): after a failover, slot {slot} is gone, the replicator stops, and consumers "
            "must re-snapshot"
        ]
    if not _has_standby(conn, database_url):
        log.info(
            "failover: no standby replicates from this server (no physical slot or walsender, "
            "one host in the database URL); for a slot that survives a failover see the "
            "docs/operations/high-availability.md"
        )
        return []
    problems = []
    row = conn.execute(slots.FAILOVER_AND_ACTIVE, (slot,)).fetchone()
    if row is not None and not row[0]:
        problems.append(f"slot {slot} has failover off (--no-failover-slot, or it is in use)")
    (standby_slots,) = conn.execute("SHOW synchronized_standby_slots").fetchone() or ("",)
    if not standby_slots:
        problems.append(
            "synchronized_standby_slots is empty on the primary: set it to the standby's "
            "physical slot, or the bridge may publish changes a promoted standby never received"
        )
    physical = conn.execute(slots.PHYSICAL_SLOTS).fetchall()
    if not physical:
        problems.append(
            "no physical replication slot on the primary: the standby needs one "
            "(its primary_slot_name) to synchronize slots"
        )
    problems += _standby_problems(conn, database_url)
    return problems


def missing_standby_slots(conn: psycopg.Connection) -> list[str]:
    """Slots `synchronized_standby_slots` names that this server does not have. PostgreSQL
    then holds logical decoding back, waiting for them: the bridge stalls with no error. It
    happens after a failover, as the promoted standby inherits the setting (a base backup
    copies postgresql.auto.conf) but not the physical slot. Checked at every start."""
    if not supported(conn):
        return []
    (value,) = conn.execute("SHOW synchronized_standby_slots").fetchone() or ("",)
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    if not names or names == ["*"]:
        return []
    have = {row[0] for row in conn.execute(slots.PHYSICAL_SLOTS).fetchall()}
    return [
        f"synchronized_standby_slots names {name!r}, which this server does not have: "
        "PostgreSQL holds the bridge's changes back until it exists (after a failover, point "
        "the setting at the new standby's slot, or clear it)"
        for name in names
        if name not in have
    ]


def _has_standby(conn: psycopg.Connection, database_url: str) -> bool:
    """Whether anything says this server has (or is meant to have) a standby."""
    hosts = str(conninfo_to_dict(database_url).get("host") or "")
    if "," in hosts:
        return True
    row = conn.execute(slots.HAS_STANDBY).fetchone()
    return bool(row and row[0])


def _standby_problems(conn: psycopg.Connection, database_url: str) -> list[str]:
    params = conninfo_to_dict(database_url)
    hosts = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    here = (conn.info.host, str(conn.info.port))
    others = [(h, p) for h, p in zip(hosts, ports, strict=False) if h and (h, p) != here]
    if not others:
        return [
            "the standby's settings (sync_replication_slots, hot_standby_feedback, "
            "primary_slot_name) are not checked: list the standby in the database URL's hosts "
            "(host=primary,standby target_session_attrs=read-write)"
        ]
    problems = []
    for host, port in others:
        url = make_conninfo(database_url, host=host, port=port, target_session_attrs="any")
        try:
            with postgres.connect(url, autocommit=True, connect_timeout=3) as standby:
                problems += _check_standby(standby, f"{host}:{port}")
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"standby {host}:{port} not checked: {first}")
    return problems


def _check_standby(standby: psycopg.Connection, where: str) -> list[str]:
    (recovering,) = standby.execute("SELECT pg_is_in_recovery()").fetchone() or (False,)
    if not recovering:
        return [f"{where} is not a standby (not in recovery)"]
    settings: dict[str, str] = dict(
        standby.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('sync_replication_slots',"
            " 'hot_standby_feedback', 'primary_slot_name', 'primary_conninfo')"
        ).fetchall()
    )
    problems = []
    for name in ("sync_replication_slots", "hot_standby_feedback"):
        if settings.get(name) != "on":
            problems.append(f"standby {where}: {name} is off; set {name} = on")
    if not settings.get("primary_slot_name"):
        problems.append(
            f"standby {where}: primary_slot_name is empty; give it the physical slot named in "
            "the primary's synchronized_standby_slots"
        )
    conninfo = settings.get("primary_conninfo") or ""
    try:
        has_dbname = bool(conninfo and conninfo_to_dict(conninfo).get("dbname"))
    except psycopg.Error:
        has_dbname = False
    if not has_dbname:
        problems.append(
            f"standby {where}: primary_conninfo has no dbname; slot synchronization needs one"
        )
    return problems
