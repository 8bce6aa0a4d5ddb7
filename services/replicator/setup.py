"""Start-up checks and setup on PostgreSQL: wal_level, tables, replica identity, publication,
slot. Runs before every pipeline start; idempotent."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pg_nats_bridge import contract
from services.replicator import ddl_capture, failover, standby
from services.replicator.errors import PermanentError, TransientError, is_permanent
from services.replicator.publication import (
    Parts,
    check_followed_publication,
    ensure_publication,
)
from shared import postgres, slot_waits, slots
from shared.lsn import Lsn
from shared.pg_cancel import QueryCanceller
from shared.tables import TABLE_NAME_QUERY, TABLE_OID_QUERY, TableName, TableNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotState:
    confirmed_flush: Lsn | None
    created: bool
    on_standby: bool = False
    refused: tuple[tuple[str, str], ...] = ()  # configured tables left out, and why


def check_server(conn: psycopg.Connection) -> None:
    (wal_level,) = conn.execute("SHOW wal_level").fetchone()  # type: ignore[misc]
    if wal_level != "logical":
        raise PermanentError(
            f"wal_level is '{wal_level}'; set wal_level=logical (ALTER SYSTEM SET wal_level = "
            "'logical') and restart PostgreSQL"
        )
    (encoding,) = conn.execute("SHOW server_encoding").fetchone()  # type: ignore[misc]
    if encoding != "UTF8":
        raise PermanentError(
            f"the database encoding is {encoding}; the bridge needs a UTF8 database"
        )


@dataclass(frozen=True, slots=True)
class CheckedTables:
    """What `check_tables` found: the tables to publish, the partitioned ones among them, and
    the ones refused, each with why and what to do."""

    published: list[TableName]
    partitioned: frozenset[TableName]
    refused: dict[TableName, str]


def check_tables(
    conn: psycopg.Connection,
    tables: list[TableName],
    replica_identity_full: frozenset[TableName] | None,
) -> CheckedTables:
    """Every table must exist (else the setting is wrong: stop) and be able to stream as the
    contract says. One that cannot is refused by name and left out of the publication, and
    the others go on (all refused: stop):
    - a table with no key is refused before it joins a publication: once published,
      PostgreSQL rejects UPDATE and DELETE on it in the application's own transactions; the
      operator may name it in `replica_identity_full` (None: every such table) to have
      REPLICA IDENTITY FULL set on it;
    - a partition streams as its root (publish_via_partition_root): a copy of it would
      silently go stale;
    - an unlogged table writes no WAL: nothing of it can be streamed."""
    missing: list[str] = []
    keyless: list[TableName] = []
    partitioned: set[TableName] = set()
    refused: dict[TableName, str] = {}
    for table in tables:
        row = conn.execute(
            "SELECT c.relreplident, c.relkind,"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
            " c.relpersistence,"
            " (SELECT i.inhparent::regclass::text FROM pg_inherits i"
            "   WHERE c.relispartition AND i.inhrelid = c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (table.schema, table.name),
        ).fetchone()
        if row is None:
            missing.append(str(table))
            continue
        identity, kind, has_pk, persistence, partition_of = row
        if kind not in ("r", "p"):
            refused[table] = f"{table} is not a table (relkind {kind!r})"
        elif partition_of is not None:
            refused[table] = (
                f"{table} is a partition of {partition_of}: its changes are published as "
                f"{partition_of}'s; name {partition_of} instead (every partition's rows are in "
                "its snapshot and its CDC)"
            )
        elif persistence == "u":
            refused[table] = (
                f"{table} is UNLOGGED: PostgreSQL writes no WAL for it, so no change of it can "
                f"be streamed; make it logged (ALTER TABLE {table} SET LOGGED) or leave it out"
            )
        elif identity == "n" or (identity == "d" and not has_pk):
            if replica_identity_full is not None and table not in replica_identity_full:
                refused[table] = (
                    f"{table}: no primary key or replica identity. Publishing it would make "
                    "UPDATE and DELETE fail in your application. Add a primary key, set a "
                    f"REPLICA IDENTITY USING INDEX, or start with --replica-identity-full "
                    f"{table} to set REPLICA IDENTITY FULL on it"
                )
            else:
                keyless.append(table)
        if kind == "p" and table not in refused:
            partitioned.add(table)
    if missing:
        raise PermanentError(f"configured tables do not exist: {', '.join(missing)}")
    if refused and len(refused) == len(tables):
        raise PermanentError("; ".join(refused.values()))
    for why in refused.values():
        log.error("refused, left out of the publication (the other tables stream): %s", why)
    for table in keyless:
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident()))
        log.warning("set REPLICA IDENTITY FULL on %s (it has no primary key)", table)
    for table in sorted((replica_identity_full or frozenset()) - set(keyless), key=str):
        if table not in refused:
            log.warning(
                "--replica-identity-full names %s, which is not a configured table without a "
                "key or replica identity: left as it is",
                table,
            )
    return CheckedTables([t for t in tables if t not in refused], frozenset(partitioned), refused)


def ensure_slot(
    conn: psycopg.Connection,
    slot: str,
    create: bool,
    failover_slot: bool = False,
    database_url: str | None = None,
    primary_url: str | None = None,
) -> SlotState:
    """The slot's state; created when missing and `create` (with `database_url`, the log
    says whom a slow creation waits for; on a standby, `primary_url` is asked to hurry)."""
    row = conn.execute(
        slots.SLOT_SETUP,
        (slot,),
    ).fetchone()
    if row is None:
        if not create:
            raise PermanentError(
                f"replication slot {slot!r} disappeared while the replicator ran (dropped, or "
                "a failover to a standby that did not synchronize it); changes since its last "
                "confirmed position are lost to it. Restart the replicator to create it again "
                "and re-snapshot the tables"
            )
        try:
            with (
                slot_waits.reporting_waits(
                    database_url, slot, f"the first start (slot {slot})", primary_url
                )
                if database_url
                else contextlib.nullcontext()
            ):
                failover.create_slot(conn, slot, failover_slot)
        except psycopg.errors.DuplicateObject:
            return ensure_slot(conn, slot, create=False)  # a peer created it just now
        on = failover_slot and failover.supported(conn)
        log.info("created replication slot %s%s", slot, " (failover)" if on else "")
        return SlotState(None, True)
    plugin, database, confirmed, wal_status = row
    if plugin != "pgoutput":
        raise PermanentError(f"slot {slot!r} uses plugin {plugin!r}, not pgoutput")
    if database != conn.info.dbname:
        raise PermanentError(f"slot {slot!r} belongs to database {database!r}")
    why = standby.invalidated(conn, slot)
    if why is not None:
        raise PermanentError(why)
    if wal_status == "lost":
        raise PermanentError(
            f"replication slot {slot!r} has been invalidated (wal_status 'lost'): the WAL it "
            f"needed was removed. Drop it (SELECT pg_drop_replication_slot('{slot}')), restart "
            "the replicator to create it again, and re-snapshot the tables"
        )
    return SlotState(Lsn.parse(confirmed) if confirmed else None, False)


def follow_renames(
    conn: psycopg.Connection, tables: list[TableName], known: dict[TableName, int]
) -> list[TableName]:
    """`tables` under their current names. `known` maps each configured name to the OID it had
    at the first start of this process: a table renamed since keeps streaming (its events
    already carry the new name) instead of stopping the next pipeline restart."""
    current = []
    for table in tables:
        oid = known.get(table)
        row = None
        if oid is not None:
            row = conn.execute(
                TABLE_NAME_QUERY,
                (oid,),
            ).fetchone()
        if row is not None and TableName(row[0], row[1]) != table:
            renamed = TableName(row[0], row[1])
            log.warning(
                "table %s was renamed to %s: its events now go to cdc.%s.*; set --table to the "
                "new name before the replicator is next started",
                table,
                renamed,
                contract.table_token(renamed.schema, renamed.name),
            )
            current.append(renamed)
        else:
            current.append(table)
    for original, now in zip(tables, current, strict=True):
        if original not in known:
            row = conn.execute(
                TABLE_OID_QUERY,
                (now.schema, now.name),
            ).fetchone()
            if row is not None:
                known[original] = row[0]
    return current


_said_ddl: set[tuple[str, bool]] = set()  # what `announce_ddl` said, once per process


def announce_ddl(conn: psycopg.Connection, publication: str) -> None:
    """Schema changes at the DDL where the role may install the event trigger
    (ddl_capture.py); else said once what they fall back to, and the grant."""
    try:
        why = ddl_capture.install(conn, publication)
    except psycopg.Error as exc:
        if is_permanent(exc) or isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            why = f"installing the event trigger failed: {str(exc).strip()}"
        else:
            raise
    if (publication, why is None) in _said_ddl:
        return
    _said_ddl.add((publication, why is None))
    if why is None:
        log.info(
            "schema changes of publication %s are announced at the DDL (event trigger %s)",
            publication,
            ddl_capture.names(publication)[1],
        )
    else:
        log.warning(
            "schema changes are announced with each table's next change after the DDL, not at "
            "the DDL: %s. To announce them at the DDL (and say rewrites that keep a table's "
            "shape: ALTER COLUMN ... TYPE ... USING), a superuser runs the SQL of `bridge "
            "ddl-trigger-sql` once, or the replicator runs once as a superuser "
            "(docs/services.md)",
            why,
        )


def prepare(
    database_url: str,
    tables: list[str],
    publication: str,
    slot: str,
    replica_identity_full: frozenset[TableName] | None,
    create_slot: bool,
    known_oids: dict[TableName, int] | None = None,
    failover_slot: bool = False,
    canceller: QueryCanceller | None = None,
    parts: dict[TableName, Parts] | None = None,
    primary_url: str | None = None,
) -> SlotState:
    """All start-up checks and setup, in order. Connection failures are transient. At the
    first start (`create_slot`), what keeps the slot from surviving a failover is said. On
    a hot standby (services/replicator/standby.py) the setup's writes go to `primary_url`,
    and the slot lives on the standby."""
    try:
        parsed = [TableName.parse(t) for t in tables]
    except TableNameError as exc:
        raise PermanentError(str(exc)) from None
    try:
        with (
            postgres.connect(database_url, autocommit=True, connect_timeout=10) as conn,
            canceller.cancelling(lambda: conn.cancel_safe(timeout=5))
            if canceller
            else contextlib.nullcontext(),
        ):
            check_server(conn)
            on_standby = standby.is_standby(conn)
            if on_standby:
                standby.check_standby(conn)
            refused: dict[TableName, str] = {}
            configured = parsed
            parsed = follow_renames(conn, parsed, {} if known_oids is None else known_oids)
            renamed_parts = {
                now: (parts or {})[was]
                for was, now in zip(configured, parsed, strict=True)
                if was in (parts or {})
            }
            with (
                postgres.connect(primary_url, autocommit=True, connect_timeout=10)
                if on_standby and primary_url
                else contextlib.nullcontext(conn)
            ) as writer:
                if writer is not conn:
                    standby.check_primary(writer)
                try:
                    if parsed:
                        checked = check_tables(writer, parsed, replica_identity_full)
                        refused = checked.refused
                        ensure_publication(
                            writer,
                            publication,
                            checked.published,
                            checked.partitioned,
                            {t: p for t, p in renamed_parts.items() if t not in refused},
                        )
                    else:  # the operator's publication decides, PostgreSQL checks its tables
                        check_followed_publication(writer, publication)
                    announce_ddl(writer, publication)
                except psycopg.errors.ReadOnlySqlTransaction as exc:
                    raise standby.read_only_refusal(exc) from exc
                if writer is not conn:
                    standby.wait_replayed(writer, conn)
            state = ensure_slot(
                conn,
                slot,
                create_slot,
                failover_slot and not on_standby,
                database_url,
                primary_url if on_standby else None,
            )
            state = dataclasses.replace(
                state, refused=tuple((str(t), why) for t, why in refused.items())
            )
            if on_standby:
                state = dataclasses.replace(state, on_standby=True)
                if create_slot:
                    log.info(
                        "decoding on a hot standby: slot %s lives there; it holds no WAL on "
                        "the primary, and is invalidated if the primary removes rows it needs",
                        slot,
                    )
                return state
            for problem in failover.missing_standby_slots(conn):
                log.warning("failover: %s", problem)
            if create_slot:
                if failover_slot and not state.created:
                    failover.ensure_failover(conn, database_url, slot)
                for problem in failover.readiness(conn, database_url, slot):
                    log.warning("failover: %s", problem)
            return state
    except psycopg.Error as exc:
        if is_permanent(exc):
            raise PermanentError(str(exc).strip()) from exc
        raise TransientError(f"PostgreSQL unreachable: {str(exc).strip()}") from exc
