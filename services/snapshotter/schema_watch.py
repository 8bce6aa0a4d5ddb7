"""Watching the catalog for the tables' schemas (schema_documents.py publishes each new one):
which tables a publication publishes (followed as it changes, without `--table`), their
renames and drops, and a cheap poll (two catalog queries) that finds what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from pg_nats_bridge.contract.schema import SchemaDocument
from services.snapshotter.schema_documents import (
    log_publication_change,
    publish_schema,
    read_schema,
)
from shared import pg_errors, postgres
from shared.published import published_tables_query

log = logging.getLogger(__name__)


class MissingTableError(RuntimeError):
    """A configured table does not exist: the operator must fix --table."""


# Everything a table's schema document is read from, digested, for every followed table in
# one query per poll: its attributes (names, types, defaults, generated, dropped), its indexes
# (primary key, INCLUDE, replica identity index), its replica identity and kind, and its part
# of the publication. Only a table whose digest changed is read again.
_VERSIONS = """
SELECT c.oid::text, n.nspname, c.relname, md5(concat_ws('|', c.relreplident, c.relkind,
  (SELECT string_agg(concat_ws(',', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                               a.attnotnull, a.attisdropped, a.attgenerated,
                               pg_get_expr(d.adbin, d.adrelid)), ';' ORDER BY a.attnum)
     FROM pg_attribute a
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = c.oid AND a.attnum > 0),
  (SELECT string_agg(concat_ws(',', i.indexrelid, i.indisprimary, i.indkey::text,
                               i.indnkeyatts, i.indisreplident), ';' ORDER BY i.indexrelid)
     FROM pg_index i WHERE i.indrelid = c.oid),
  (SELECT string_agg(r.oid::text, ',' ORDER BY r.oid) FROM pg_publication_rel r
    JOIN pg_publication p ON p.oid = r.prpubid
    WHERE p.pubname = %(publication)s AND r.prrelid = c.oid)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%(oids)s::oid[])
"""

# The publication itself (options, members, column lists and row filters, schemas): when it
# changes, every table is read again.
_PUBLICATION_VERSION = """
SELECT md5(concat_ws('|',
  (SELECT row(p.*)::text FROM pg_publication p WHERE p.pubname = %(publication)s),
  (SELECT string_agg(row(r.*)::text, ';' ORDER BY r.oid) FROM pg_publication_rel r
    JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = %(publication)s){}))
"""
_PUBLISHED_SCHEMAS = """,
  (SELECT string_agg(row(s.*)::text, ';' ORDER BY s.oid) FROM pg_publication_namespace s
    JOIN pg_publication p ON p.oid = s.pnpubid WHERE p.pubname = %(publication)s)"""  # 15+

_OIDS = """
SELECT w.i, c.oid::text FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY w(s, t, i)
JOIN pg_namespace n ON n.nspname = w.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t AND c.relkind IN ('r', 'p')
"""

# Tables whose KV entry is compared with their document per poll, in turn: an entry purged or
# overwritten by someone else comes back within tables / this polls, at a cost per poll that
# does not grow with the tables.
KV_CHECKS_PER_POLL = 32


class SchemaWatcher:
    """Publishes each configured table's schema when it changes, following the table by OID:
    a renamed table keeps its schema document and snapshots under its new name, as its CDC
    events do (their Relation message carries the new name), and the log says so once.

    A poll is two catalog queries whatever the number of tables (`_VERSIONS`,
    `_PUBLICATION_VERSION`); a table is read again only when they show it changed."""

    def __init__(
        self,
        tables: list[tuple[str, str]],
        kv_bucket: str,
        publication: str,
        follow_publication: bool = False,
    ) -> None:
        self.tables = tables  # shared with the snapshotter, which serves them by name
        # No --table: the publication's tables, found anew at every poll (`_discover`).
        self.follow_publication = follow_publication
        self.polled = asyncio.Event()  # set once the first poll went through
        self.kv_bucket = kv_bucket
        self.publication = publication
        self.published: dict[tuple[str, str], str] = {}
        self.oids: dict[int, int] = {}  # index in `tables` -> pg_class OID
        self.versions: dict[int, str] = {}  # index in `tables` -> digest of its catalog rows
        self.publication_version: str | None = None
        self.dropped: set[int] = set()
        self.failures = 0  # publishes that failed on the NATS side
        self.documents: dict[tuple[str, str], SchemaDocument] = {}
        self.kv: KeyValue | None = None
        self._kv_turn = 0  # where the next poll's KV comparisons begin

    async def run(
        self,
        database_url: str,
        js: JetStreamContext,
        poll_seconds: float,
        db_ok: Callable[[bool], None],
        stop_for: Callable[[str], None],
        shown: Callable[[str], str],
    ) -> None:
        """Publish schema documents as the catalog changes, until cancelled. Only
        PostgreSQL's failures make the snapshotter report PostgreSQL down (`db_ok`); what NATS
        refuses or holds (a crafted KV value, a missing bucket) is the watcher's to log and
        retry per table. A permanent failure (a configured table missing, a refused login)
        ends the service (`stop_for`)."""
        while True:
            try:
                async with await postgres.connect_async(
                    database_url, autocommit=True, connect_timeout=5
                ) as conn:
                    db_ok(True)
                    while True:
                        await self.check(conn, js)
                        await asyncio.sleep(poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                db_ok(not isinstance(exc, psycopg.Error))
                if isinstance(exc, MissingTableError) or (
                    isinstance(exc, psycopg.Error) and pg_errors.is_permanent(exc)
                ):
                    stop_for(str(exc).strip())
                    return
                log.warning("schema watch: %s; retrying", shown(str(exc).strip()))
                await asyncio.sleep(2)

    async def check(self, conn: psycopg.AsyncConnection[Any], js: JetStreamContext) -> int:
        """Compare the catalog's digests with the last poll's, read and publish the tables
        that changed, and compare a few tables' KV entries with their documents: a purged or
        overwritten entry comes back within a few polls, changed or not. A failure on the NATS
        side is one table's, logged, and the others go on; PostgreSQL's errors are the
        caller's."""
        if self.follow_publication:
            await self._discover(conn)
        await self._resolve(conn)
        schemas = _PUBLISHED_SCHEMAS if conn.info.server_version >= 150000 else ""
        query = _PUBLICATION_VERSION.replace("{}", schemas)  # our own text, no name in it
        cur = await conn.execute(query, {"publication": self.publication})
        row = await cur.fetchone()
        publication = row[0] if row else None
        every = publication != self.publication_version
        self.publication_version = publication
        cur = await conn.execute(
            _VERSIONS, {"publication": self.publication, "oids": list(self.oids.values())}
        )
        found = {int(oid): (nsp, rel, version) for oid, nsp, rel, version in await cur.fetchall()}
        count = len(self.tables)
        due = {(self._kv_turn + i) % count for i in range(min(KV_CHECKS_PER_POLL, count))}
        self._kv_turn = (self._kv_turn + KV_CHECKS_PER_POLL) % max(count, 1)
        changed = 0
        for index in range(count):
            current = found.get(self.oids[index])
            if current is None:
                self._dropped(index)
                continue
            self._renamed(index, current[0], current[1])
            schema, table = self.tables[index]
            stale = every or self.versions.get(index) != current[2]
            if not stale and index not in due and (schema, table) in self.published:
                continue
            doc = self.documents.get((schema, table))
            if stale or doc is None:
                doc = await read_schema(conn, schema, table, self.publication)
                self.versions[index] = current[2]
            if await self._publish(js, doc):
                changed += 1
        self.polled.set()
        return changed

    async def _discover(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Follow the tables the publication publishes now that are not followed yet."""
        # Read every poll: a table created or added later is followed from then on.
        query = published_tables_query(conn.info.server_version)
        cur = await conn.execute(query, {"publication": self.publication})
        known = set(self.oids.values())
        for oid, schema, table in await cur.fetchall():
            if int(oid) not in known:
                self.tables.append((schema, table))
                self.oids[len(self.tables) - 1] = int(oid)
                log.info(
                    "following %s.%s: publication %s publishes it", schema, table, self.publication
                )

    async def publish_now(
        self, conn: psycopg.AsyncConnection[Any], js: JetStreamContext, schema: str, table: str
    ) -> None:
        """The table's document as the catalog has it now, into KV before a snapshot's meta
        is published, rather than at the next poll. (Copies load a snapshot with the meta's
        own document, read with its rows: KV may already describe a later ALTER TABLE.)"""
        doc = await read_schema(conn, schema, table, self.publication)
        await self._publish(js, doc)

    async def _publish(self, js: JetStreamContext, doc: SchemaDocument) -> bool:
        """`doc` into KV (when it is not what KV holds) and announced; whether KV changed."""
        key = (doc.namespace, doc.table)
        known = self.published.get(key)
        previous = self.documents.get(key)
        if previous is not None and previous.fingerprint != doc.fingerprint:
            log_publication_change(previous, doc)
        self.documents[key] = doc
        try:
            # The bucket's handle is looked up once (a stream info request), not per table
            # and poll; a failure drops it, so a recreated bucket is found again.
            if self.kv is None:
                self.kv = await js.key_value(self.kv_bucket)
            changed = await publish_schema(js, self.kv, doc, announce_current=known is None)
        except Exception as exc:
            self.kv = None
            self.failures += 1
            self.published.pop(key, None)  # compared again at the next poll
            log.warning(
                "schema of %s.%s not published: %s: %s; retrying at the next poll",
                doc.namespace,
                doc.table,
                type(exc).__name__,
                str(exc)[:200],
            )
            return False
        self.published[key] = doc.fingerprint
        return changed

    async def _resolve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The OIDs of tables not followed yet, in one query; a configured table that does
        not exist is the operator's to fix."""
        todo = [i for i in range(len(self.tables)) if i not in self.oids]
        if not todo:
            return
        schemas = [self.tables[i][0] for i in todo]
        names = [self.tables[i][1] for i in todo]
        cur = await conn.execute(_OIDS, (schemas, names))
        for ordinal, oid in await cur.fetchall():
            self.oids[todo[ordinal - 1]] = int(oid)
        for index in todo:
            if index not in self.oids:
                schema, table = self.tables[index]
                raise MissingTableError(
                    f"configured table {schema}.{table} does not exist; fix --table "
                    "(BRIDGE_TABLE) and restart"
                )

    def _dropped(self, index: int) -> None:
        if index not in self.dropped:
            self.dropped.add(index)
            schema, table = self.tables[index]
            log.error("table %s.%s was dropped: no schema or snapshot for it", schema, table)

    def _renamed(self, index: int, schema: str, table: str) -> None:
        old_schema, old_table = self.tables[index]
        if (schema, table) != (old_schema, old_table):
            log.warning(
                "table %s.%s was renamed to %s.%s: its schema document and snapshots now use "
                "the new name, as its CDC events do; set --table to the new name before the "
                "next restart",
                old_schema,
                old_table,
                schema,
                table,
            )
            self.tables[index] = (schema, table)
