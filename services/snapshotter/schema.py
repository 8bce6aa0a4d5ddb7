"""Table schema documents (DESIGN §2, INIT): read from the catalog, published to the KV bucket
and to `init.schema.<table>`, again whenever the catalog shows a change."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from nats.js import JetStreamContext

from services.snapshotter import metrics
from shared import subjects
from shared.wire import pack

log = logging.getLogger(__name__)

_COLUMNS = """
SELECT column_name, data_type, is_nullable, column_default, ordinal_position
FROM information_schema.columns
WHERE table_schema = %s AND table_name = %s
ORDER BY ordinal_position
"""


def kv_key(schema: str, table: str) -> str:
    """The KV key of a table: its subject token with `~` written `=` (KV keys allow neither
    `~` nor `*`/`>`, and `=` never appears in a token, so keys stay collision-free)."""
    return subjects.table_token(schema, table).replace("~", "=")


@dataclass(frozen=True)
class SchemaDocument:
    schema: str
    table: str
    columns: tuple[dict[str, Any], ...]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.columns, sort_keys=True).encode()).hexdigest()[:16]

    def encode(self) -> bytes:
        """The document as MessagePack, like every INIT message and KV value (DESIGN §2)."""
        return pack(
            {
                "columns": list(self.columns),
                "schema": f"{self.schema}.{self.table}",
                "table": self.table,
                "timestamp": int(time.time()),
            }
        )


async def read_schema(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str
) -> SchemaDocument:
    cur = await conn.execute(_COLUMNS, (schema, table))
    columns = tuple(
        {
            "column_default": default,
            "data_type": data_type,
            "is_nullable": nullable,
            "name": name,
            "position": position,
        }
        for name, data_type, nullable, default, position in await cur.fetchall()
    )
    return SchemaDocument(schema, table, columns)


async def publish_schema(
    js: JetStreamContext, kv_bucket: str, doc: SchemaDocument, prefix: str = "init"
) -> None:
    """KV first (the current truth), then the INIT subject. The Msg-Id carries the columns'
    fingerprint, so several snapshotters announcing the same schema store it once."""
    payload = doc.encode()
    kv = await js.key_value(kv_bucket)
    await kv.put(kv_key(doc.schema, doc.table), payload)
    await js.publish(
        subjects.schema_subject(doc.schema, doc.table, prefix),
        payload,
        headers={
            "Nats-Msg-Id": f"schema:{subjects.table_token(doc.schema, doc.table)}:{doc.fingerprint}"
        },
    )
    metrics.schemas.inc()
    log.info(
        "published schema of %s.%s (%d columns, %s)",
        doc.schema,
        doc.table,
        len(doc.columns),
        doc.fingerprint,
    )


class SchemaWatcher:
    """Remembers the last published fingerprint per table; publishes what changed."""

    def __init__(self, tables: list[tuple[str, str]], kv_bucket: str) -> None:
        self.tables = tables
        self.kv_bucket = kv_bucket
        self.published: dict[tuple[str, str], str] = {}

    async def check(self, conn: psycopg.AsyncConnection[Any], js: JetStreamContext) -> int:
        changed = 0
        for schema, table in self.tables:
            doc = await read_schema(conn, schema, table)
            if not doc.columns:
                log.warning("table %s.%s not found in the catalog", schema, table)
                continue
            if self.published.get((schema, table)) != doc.fingerprint:
                await publish_schema(js, self.kv_bucket, doc)
                self.published[(schema, table)] = doc.fingerprint
                changed += 1
        return changed
