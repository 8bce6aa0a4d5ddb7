"""Table schema documents (docs/wire-format.md, "INIT stream"): read from the catalog and
published to the KV bucket and to `init.schema.<table>` (`contract.SchemaDocument`).

The KV entry is the current truth and the INIT message announces each new revision of it. The
KV write is a compare-and-set on the entry's revision, and the INIT Msg-Id carries that
revision: several snapshotters seeing one change announce it once, and a table that returns to
an earlier shape (ADD then DROP COLUMN) is announced again, so the last `init.schema.<table>`
always matches the table. Only the columns CDC carries are listed (shared/published.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from psycopg import sql

from pg_nats_bridge import contract
from pg_nats_bridge.contract.schema import SchemaColumn, SchemaDocument
from pg_nats_bridge.names import kv_key
from services.snapshotter import metrics
from shared.published import PINNED_SEARCH_PATH, published_columns, published_part
from shared.tables import PRIMARY_KEY_QUERY

log = logging.getLogger(__name__)

_COLUMNS = """
SELECT c.column_name, c.data_type, c.is_nullable, c.column_default, c.ordinal_position,
       a.atttypid::int8, a.atttypmod
FROM information_schema.columns c
JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attname = c.column_name
WHERE c.table_schema = %s AND c.table_name = %s
ORDER BY c.ordinal_position
"""

# What `old` carries in update and delete events.
_IDENTITY = "SELECT c.relreplident::text FROM pg_class c WHERE c.oid = %s::regclass"
_IDENTITIES = {"d": "default", "f": "full", "i": "index", "n": "nothing"}


async def read_schema(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> SchemaDocument:
    part = await published_part(conn, schema, table, publication)
    published = set((await published_columns(conn, schema, table, publication, part)).names)
    regclass = sql.Identifier(schema, table).as_string(conn)
    # Defaults deparsed under one search path, whatever the session's: a document read under
    # a snapshot (pinned there) and one read on another connection are the same document.
    async with conn.transaction():
        await conn.execute(PINNED_SEARCH_PATH)
        cur = await conn.execute(_COLUMNS, (regclass, schema, table))
        found_columns = await cur.fetchall()
    columns = [
        SchemaColumn(
            name=name,
            data_type=data_type,
            is_nullable=nullable,
            column_default=default,
            position=position,
            type_oid=type_oid,
            type_modifier=type_modifier,
        )
        for name, data_type, nullable, default, position, type_oid, type_modifier in found_columns
        if name in published
    ]
    cur = await conn.execute(PRIMARY_KEY_QUERY, (regclass,))
    found = await cur.fetchone()
    key = list(found[0]) if found else []
    cur = await conn.execute(_IDENTITY, (regclass,))
    row = await cur.fetchone()
    identity = _IDENTITIES.get(row[0], "default") if row else ""
    return SchemaDocument(
        schema=f"{schema}.{table}",
        table=table,
        columns=columns,
        primary_key=key,
        replica_identity=identity,
        row_filter=part.row_filter,
    )


def stored_fingerprint(value: bytes | None) -> str | None:
    """The fingerprint of a stored document, or None when there is none or it is not one
    (not MessagePack, as an earlier version's JSON, or a value anyone on the NATS account
    wrote): then it is replaced. Nothing in it is trusted: a crafted value stopped the
    publishing of every table's schema."""
    try:
        return SchemaDocument.decode(value).fingerprint if value else None
    except (TypeError, ValueError):  # bytes, NaN or the like inside: not a document of ours
        return None


async def publish_schema(
    js: JetStreamContext,
    kv: KeyValue,
    doc: SchemaDocument,
    prefix: str = "init",
    announce_current: bool = False,
) -> bool:
    """Store `doc` in KV unless it is already there, and announce the new revision on INIT.
    With `announce_current`, the stored revision is announced even when unchanged (at start: a
    snapshotter may have died between the two writes). True when KV changed."""
    key = kv_key(doc.namespace, doc.table)
    payload = doc.model_copy(update={"timestamp": int(time.time())}).encode()
    while True:
        try:
            entry: Any = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        stored = stored_fingerprint(entry.value) if entry is not None else None
        if entry is not None and stored is None and entry.value:
            metrics.foreign_values.inc()
            log.warning(
                "KV %s key %s (revision %d) is not a schema document; replacing it",
                entry.bucket,
                key,
                entry.revision,
            )
        if stored == doc.fingerprint:
            if not announce_current:
                return False
            revision, payload, changed = entry.revision, entry.value, False
            break
        try:
            if entry is None:
                revision = await kv.create(key, payload)
            else:
                revision = await kv.update(key, payload, last=entry.revision)
            changed = True
            break
        except KeyWrongLastSequenceError:
            continue  # another snapshotter wrote first: compare with what it wrote
    token = contract.table_token(doc.namespace, doc.table)
    await js.publish(
        contract.schema_subject(doc.namespace, doc.table, prefix),
        payload,
        headers={"Nats-Msg-Id": contract.schema_msg_id(token, revision)},
    )
    if changed:
        metrics.schemas.inc()
        log.info(
            "published schema of %s.%s (%d columns, %s, revision %d)",
            doc.namespace,
            doc.table,
            len(doc.columns),
            doc.fingerprint,
            revision,
        )
    return changed


def log_publication_change(old: SchemaDocument, new: SchemaDocument) -> None:
    """What the publication (or the table) now makes consumers see, and what they must do:
    a copy keeps what it loaded until it takes a new snapshot."""
    was = [c.name for c in old.columns]
    now = [c.name for c in new.columns]
    gone, added = [c for c in was if c not in now], [c for c in now if c not in was]
    if gone or added:
        log.warning(
            "%s.%s: published columns now %s (%s%s); copies hold the old columns until they "
            "take a new snapshot (bridge snapshot %s.%s)",
            new.namespace,
            new.table,
            ", ".join(now),
            f"removed {', '.join(gone)}" if gone else "",
            (", " if gone and added else "") + (f"added {', '.join(added)}" if added else ""),
            new.namespace,
            new.table,
        )
    if old.row_filter != new.row_filter:
        log.warning(
            "%s.%s: the publication's row filter is now %s (was %s); CDC follows it from now "
            "on, and copies hold the rows the old one admitted until they take a new snapshot "
            "(bridge snapshot %s.%s)",
            new.namespace,
            new.table,
            new.row_filter or "none (every row)",
            old.row_filter or "none (every row)",
            new.namespace,
            new.table,
        )
