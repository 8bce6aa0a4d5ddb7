"""`bridge verify TABLE… --sqlite PATH`: is the copy exactly the table, while writes go on?

PostgreSQL is read under an exported snapshot at LSN X, as the snapshotter reads it (a
temporary slot's consistent point, the same columns and value codec). The copy is then moved to
exactly X: once the bridge's slot confirmed X, every change below X is in the CDC stream, so the
copy applies changes until the first one at or after X, or until nothing is pending. Then both
sides are compared row by row (a hash of each row, by primary key; as a multiset of rows for a
table without one) and every missing, extra or different row is printed with its key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pg_nats_bridge import (
    ApplyError,
    CaughtUp,
    Delete,
    FollowError,
    Insert,
    Lsn,
    Oversized,
    Reset,
    SqliteCopy,
    TableFollower,
    Truncate,
    Update,
)
from pg_nats_bridge.contract import pack as contract_pack
from pg_nats_bridge.names import parse_table_name
from pg_nats_bridge.sqlite import stored_value
from services.tools.arguments import VerifyArguments
from services.tools.copy_lock import CopyInUse, lock_copy
from shared import postgres, slots
from shared.codec import RowCodec
from shared.codec.copy_text import split_line
from shared.consistent_read import (
    copy_query,
    describe_table,
    export_snapshot,
    snapshot_transaction,
    storage,
)
from shared.nats_connection import connect
from shared.settings import BridgeSettings

log = logging.getLogger("bridge.verify")


def shown(values: Sequence[Any]) -> str:
    """A row for a person: long values cut to their first 40 characters."""
    parts = []
    for value in values:
        text = repr(value)
        parts.append(text if len(text) <= 48 else f"{text[:40]}…({len(text)} chars)")
    return "(" + ", ".join(parts) + ")"


def row_hash(values: Sequence[Any]) -> bytes:
    return hashlib.blake2b(contract_pack(list(values)), digest_size=16).digest()


@dataclass
class SourceTable:
    """One table as PostgreSQL holds it at X: a hash per key, or a multiset of row hashes."""

    table: str
    columns: list[str]
    key: list[str]
    by_key: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    rows: Counter[bytes] = field(default_factory=Counter)
    samples: dict[bytes, tuple[Any, ...]] = field(default_factory=dict)
    error: str | None = None  # why PostgreSQL's side could not be read

    @property
    def count(self) -> int:
        return len(self.by_key) if self.key else sum(self.rows.values())


def read_source(
    conn: psycopg.Connection[Any], dsn: str, table: str, publication: str, mode: Any
) -> SourceTable:
    """The table under the transaction's snapshot, values as the bridge encodes them."""
    schema, name = parse_table_name(table)
    names, oids, key, row_filter = asyncio.run(_describe(dsn, schema, name, publication))
    codec = RowCodec(names, oids, mode)
    table = f"{schema}.{name}"  # the copy's name of it
    if not set(key) <= set(names):  # a key column not published: rows compare as a multiset
        key = []
    source = SourceTable(table, names, key)
    positions = [source.columns.index(k) for k in key]
    # The published columns and rows only, as the snapshotter reads them.
    query = copy_query(sql.Identifier(schema, name), names, [], row_filter)
    for data in postgres.copy_out(conn, query):
        # A table whose columns were all dropped has empty lines for rows.
        decoded = codec.decode_values(split_line(bytes(data)) if names else [])
        values = tuple(stored_value(decoded[c]) for c in source.columns)
        digest = row_hash(values)
        if key:
            source.by_key[tuple(values[p] for p in positions)] = digest
        else:
            source.rows[digest] += 1
            source.samples.setdefault(digest, values)
    return source


def read_or_say_why(
    conn: psycopg.Connection[Any], dsn: str, table: str, settings: VerifyArguments
) -> SourceTable:
    """The table as `read_source` reads it, or, when it cannot be read, a SourceTable saying
    why (under a savepoint: the other tables are read and compared all the same)."""
    try:
        with conn.transaction():
            return read_source(conn, dsn, table, settings.publication, settings.value_mode)
    except (psycopg.Error, ValueError) as exc:  # a codec's errors are ValueErrors
        schema, name = parse_table_name(table)
        why = f"{type(exc).__name__}: {str(exc).strip()}"
        return SourceTable(f"{schema}.{name}", [], [], error=why)


async def _describe(
    dsn: str, schema: str, name: str, publication: str
) -> tuple[list[str], list[int], list[str], str | None]:
    """Columns, type OIDs and key as the snapshotter describes the table; the catalog does
    not depend on the snapshot, so a second connection reads it."""
    async with await postgres.connect_async(dsn, autocommit=True) as conn:
        return await describe_table(conn, schema, name, publication)


@dataclass
class Difference:
    kind: str  # missing (in PostgreSQL, not in the copy), extra, different
    key: Any
    detail: str = ""


def compare(source: SourceTable, copy: SqliteCopy) -> list[Difference]:
    if source.error is not None:
        return [Difference("unreadable", None, f"PostgreSQL's rows: {source.error}")]
    if not copy.has_table(source.table):
        why = copy.left_out().get(source.table, "it was never loaded")
        return [Difference("absent", None, f"the copy does not hold the table: {why}")]
    differences: list[Difference] = []
    positions = [source.columns.index(k) for k in source.key]
    if source.key:
        seen: set[tuple[Any, ...]] = set()
        for values in copy.rows(source.table, source.columns):
            key = tuple(values[p] for p in positions)
            if key in seen:
                differences.append(Difference("extra", key, "the key is twice in the copy"))
                continue
            seen.add(key)
            expected = source.by_key.get(key)
            if expected is None:
                differences.append(Difference("extra", key, shown(values)))
            elif expected != row_hash(values):
                differences.append(Difference("different", key, "the copy has " + shown(values)))
        for key in source.by_key.keys() - seen:
            differences.append(Difference("missing", key))
        return differences
    counted: Counter[bytes] = Counter()
    samples: dict[bytes, tuple[Any, ...]] = {}
    for values in copy.rows(source.table, source.columns):
        digest = row_hash(values)
        counted[digest] += 1
        samples.setdefault(digest, tuple(values))
    for digest, n in (counted - source.rows).items():
        differences.append(Difference("extra", None, f"{n} times {shown(samples[digest])}"))
    for digest, n in (source.rows - counted).items():
        differences.append(
            Difference("missing", None, f"{n} times {shown(source.samples[digest])}")
        )
    return differences


def wait_confirmed(conn: psycopg.Connection[Any], slot: str, lsn: Lsn, timeout: float) -> None:
    """Until the bridge's slot confirmed `lsn`: every change below it is then in JetStream."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            slots.CONFIRMED_FLUSH,
            (slot,),
        ).fetchone()
        if row is None:
            raise FollowError(f"replication slot {slot} does not exist: is the replicator set up?")
        if row[0] is not None and Lsn.parse(row[0]) >= lsn:
            return
        if time.monotonic() > deadline:
            raise FollowError(
                f"slot {slot} has not confirmed {lsn} after {timeout:.0f} s (it is at {row[0]}): "
                "is the replicator running?"
            )
        time.sleep(0.2)


async def catch_up(
    settings: BridgeSettings, copy: SqliteCopy, tables: Sequence[str], until: Lsn, subject: str
) -> bool:
    """Apply to the copy every change below `until` and none after; False when the copy had
    to bootstrap again (its snapshot is then past `until`, and the comparison starts over)."""
    nc = await connect(settings, "bridge-verify", reconnect=True)
    rebootstrapped = False
    follower = TableFollower(
        nc,
        tables,
        state=copy.state(),
        cdc_stream=settings.cdc_stream,
        init_stream=settings.init_stream,
        kv_bucket=settings.kv_bucket,
        snapshot_subject=subject,
    )
    items = follower.items()
    try:
        async for item in items:
            if isinstance(item, Insert | Update | Delete | Truncate | Oversized):
                lsn = item.marker["commit_lsn"] if isinstance(item, Oversized) else item.commit_lsn
                if Lsn.parse(lsn) >= until and not rebootstrapped:
                    copy.commit(follower.state_before(item.seq))
                    return True
            elif isinstance(item, Reset):
                rebootstrapped = True
            copy.apply(item)
            if isinstance(item, CaughtUp):
                return not rebootstrapped
        return True  # pragma: no cover - the follower does not end by itself
    finally:
        await items.aclose()  # deletes its consumer while the connection is still open
        await nc.close()


def storages(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, list[Any]]:
    """Each table's storage (`consistent_read.STORAGE_QUERY`): a TRUNCATE or a rewriting
    ALTER TABLE gives a table new storage."""
    return {
        table: storage(conn, sql.Identifier(*parse_table_name(table)).as_string(conn))
        for table in tables
    }


def verify_once(
    settings: VerifyArguments, copy: SqliteCopy, tables: list[str]
) -> tuple[str | None, dict[str, list[Difference]], dict[str, SourceTable], Lsn]:
    """One comparison at a new snapshot; a reason to compare anew instead, when there is one.

    TRUNCATE and a rewriting ALTER TABLE are not MVCC-safe: a transaction whose snapshot
    predates one sees the table empty once it has committed. So the tables are locked (ACCESS
    SHARE, which both wait for) before they are read, and one that committed between the
    export and the lock (their storage changed meanwhile) makes this comparison void:
    PostgreSQL's side would show the table empty at an LSN where the copy, rightly, still has
    its rows."""
    dsn = settings.database_dsn()
    with postgres.connect(dsn, autocommit=True) as catalog:
        before = storages(catalog, tables)
        repl, lsn, snapshot = export_snapshot(
            dsn,
            f"bridge_verify_{secrets.token_hex(6)}",
            application_name="bridge-verify",
            what="verify's snapshot",
            primary_url=settings.primary_dsn(),
        )
        with (
            postgres.connect(dsn, autocommit=True) as conn,
            snapshot_transaction(
                conn, snapshot, [sql.Identifier(*parse_table_name(t)) for t in tables]
            ),
        ):
            repl.close()  # the transaction holds the snapshot now; no slot holds WAL
            after = storages(catalog, tables)
            rewritten = [t for t in tables if after[t] != before[t]]
            if rewritten:
                return f"{', '.join(rewritten)} truncated or rewritten meanwhile", {}, {}, lsn
            sources = {t: read_or_say_why(conn, dsn, t, settings) for t in tables}
    log.info(
        "PostgreSQL read at %s: %s",
        lsn,
        ", ".join(f"{t} {s.count} rows" for t, s in sources.items()),
    )
    with postgres.connect(dsn, autocommit=True) as conn:
        wait_confirmed(conn, settings.slot, lsn, settings.confirm_timeout)
    if not asyncio.run(catch_up(settings, copy, tables, lsn, settings.snapshot_prefix)):
        return "the copy bootstrapped again while catching up", {}, sources, lsn
    return None, {t: compare(s, copy) for t, s in sources.items()}, sources, lsn


def verify(own: VerifyArguments) -> int:
    settings = own
    if not own.sqlite.exists():
        print(f"bridge verify: {own.sqlite} does not exist: run `bridge replica` first")
        return 2
    try:
        lock = lock_copy(own.sqlite, "verify")
    except CopyInUse as exc:
        print(f"bridge verify: {exc}; stop it first (verify moves the copy itself)")
        return 2
    copy = SqliteCopy(own.sqlite)
    try:
        if copy.state() is None:
            print(f"bridge verify: {own.sqlite} holds no finished bootstrap: run `bridge replica`")
            return 2
        # Quoted: `sales.Orders` read again as a name would be sales.orders.
        tables = [sql.Identifier(*parse_table_name(t)).as_string(None) for t in own.copy_tables]
        for _ in range(5):
            again, differences, sources, lsn = verify_once(settings, copy, tables)
            if again is None:
                break
            log.warning("%s: comparing anew", again)
        else:
            print(f"bridge verify: could not compare: {again}, five times")
            return 2
    except FollowError as exc:
        print(f"bridge verify: {exc}")
        return 2
    except ApplyError as exc:  # the copy rolled back to its last commit
        print(f"bridge verify: the copy cannot be moved to the comparison's position: {exc}")
        return 2
    finally:
        copy.close()
        lock.close()
    total = 0
    for table in tables:
        found = differences[table]
        total += len(found)
        counts = Counter(d.kind for d in found)
        verdict = (
            "equal" if not found else ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        )
        shown_name = sources[table].table  # as the copy names it: `schema.table`
        print(f"{shown_name} at {lsn}: {sources[table].count} rows in PostgreSQL: {verdict}")
        for d in found[: own.show]:
            key = f" key {d.key!r}" if d.key is not None else ""
            print(f"  {d.kind}{key} {d.detail}".rstrip())
    sys.stdout.flush()
    return 1 if total else 0
