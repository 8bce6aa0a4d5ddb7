"""One consistent snapshot of one table, published in chunks to the INIT stream.

Consistency: a temporary logical slot created with `SNAPSHOT 'export'` gives a consistent
point (an LSN) and a snapshot name; the table is read in a REPEATABLE READ transaction that
adopts that snapshot (`SET TRANSACTION SNAPSHOT`). The rows are then exactly those of the
transactions that committed before the consistent point, which is the `lsn` of the meta
message: a consumer applies CDC events whose `commit_lsn` ≥ `lsn` on top. The slot is
temporary, so it disappears with its connection, also when the snapshotter is killed.

Memory: rows stream from the server through `COPY … TO STDOUT`; at most one chunk is held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import psycopg
from psycopg import sql
from psycopg.adapt import Loader

from services.snapshotter.columns import published_columns
from shared import postgres, subjects
from shared.codec import RowCodec, ValueMode
from shared.lsn import Lsn
from shared.postgres import ReplicationConnection, quote_ident
from shared.wire import pack

log = logging.getLogger(__name__)

# Room for headers and framing beside a chunk's payload.
_OVERHEAD = 1024

PublishChunk = Callable[[str, bytes, str], Awaitable[None]]


class SnapshotError(Exception):
    """A snapshot request that cannot be served; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SnapshotOptions:
    chunk_size: int

    @classmethod
    def parse(cls, body: bytes, default_chunk_size: int, max_chunk_size: int) -> SnapshotOptions:
        """The request body: empty, or a JSON object with only known keys."""
        if not body.strip():
            return cls(default_chunk_size)
        try:
            options = json.loads(body)
        except ValueError as exc:
            raise SnapshotError("bad_request", f"the request body is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise SnapshotError("bad_request", "the request body must be a JSON object of options")
        unknown = set(options) - {"chunk_size"}
        if unknown:
            raise SnapshotError(
                "bad_request", f"unknown options {sorted(unknown)}; known: ['chunk_size']"
            )
        size = options.get("chunk_size", default_chunk_size)
        if type(size) is not int or not 1 <= size <= max_chunk_size:
            raise SnapshotError(
                "bad_request",
                f"chunk_size must be an integer from 1 to {max_chunk_size}, got {size!r}",
            )
        return cls(size)


def new_snapshot_id() -> str:
    """`snap-<unix time>-<random>`: ordered by time, unique within a second."""
    return f"snap-{int(time.time())}-{secrets.token_hex(3)}"


class _RawText(Loader):
    """Keeps PostgreSQL's text output as bytes: the value codec does the typing, the same
    way it does for CDC events."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


def _export_snapshot(database_url: str, slot: str) -> tuple[ReplicationConnection, Lsn, str]:
    repl = ReplicationConnection(database_url, application_name="bridge-snapshotter")
    try:
        (row,) = repl.command(
            f"CREATE_REPLICATION_SLOT {quote_ident(slot)} TEMPORARY LOGICAL pgoutput"
            " (SNAPSHOT 'export')"
        )
    except BaseException:
        repl.close()
        raise
    _, consistent_point, snapshot_name, _ = row
    assert consistent_point is not None and snapshot_name is not None
    return repl, Lsn.parse(consistent_point), snapshot_name


class _ChunkWriter:
    """Packs rows into `{"chunk": n, "data": [...]}` chunks no larger than `max_payload`."""

    def __init__(
        self,
        publish: PublishChunk,
        schema: str,
        table: str,
        snapshot_id: str,
        chunk_size: int,
        max_payload: int,
        prefix: str,
        on_rows: Callable[[int], None],
    ) -> None:
        self.publish, self.schema, self.table = publish, schema, table
        self.on_rows = on_rows
        self.snapshot_id, self.chunk_size, self.prefix = snapshot_id, chunk_size, prefix
        self.limit = max_payload - _OVERHEAD
        self.rows: list[bytes] = []
        self.size = 0
        self.chunks = 0
        self.row_count = 0

    async def add(self, packed_row: bytes, describe: Callable[[], str]) -> None:
        if len(packed_row) + 64 > self.limit:
            raise SnapshotError(
                "row_too_large",
                f"row {describe()} is {len(packed_row)} bytes encoded, more than NATS "
                f"max_payload allows ({self.limit + _OVERHEAD}); raise max_payload on the server",
            )
        if self.rows and (
            len(self.rows) >= self.chunk_size or self.size + len(packed_row) + 64 > self.limit
        ):
            await self.flush()
        self.rows.append(packed_row)
        self.size += len(packed_row)
        self.row_count += 1

    async def flush(self) -> None:
        if not self.rows:
            return
        packer = msgpack.Packer(use_bin_type=True)
        payload = (
            packer.pack_map_header(2)
            + packer.pack("chunk")
            + packer.pack(self.chunks)
            + packer.pack("data")
            + packer.pack_array_header(len(self.rows))
            + b"".join(self.rows)
        )
        subject = subjects.snapshot_chunk_subject(
            self.schema, self.table, self.snapshot_id, self.chunks, self.prefix
        )
        msg_id = subjects.snapshot_msg_id(self.snapshot_id, self.schema, self.table, self.chunks)
        await self.publish(subject, payload, msg_id)
        self.on_rows(len(self.rows))
        self.chunks += 1
        self.rows, self.size = [], 0


async def take_snapshot(
    database_url: str,
    schema: str,
    table: str,
    options: SnapshotOptions,
    publish: PublishChunk,
    max_payload: int,
    mode: ValueMode,
    publication: str,
    prefix: str = "init",
    on_rows: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Publish the snapshot's chunks (each acknowledged), then its meta; return the meta."""
    snapshot_id = new_snapshot_id()
    slot = f"bridge_snap_{secrets.token_hex(6)}"
    started = time.monotonic()
    try:
        repl, lsn, snapshot_name = await asyncio.to_thread(_export_snapshot, database_url, slot)
    except Exception as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
    writer = _ChunkWriter(
        publish, schema, table, snapshot_id, options.chunk_size, max_payload, prefix, on_rows
    )
    try:
        async with await postgres.connect_async(database_url) as conn:
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await conn.set_read_only(True)
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
                )
                names, oids, key = await _describe(conn, schema, table, publication)
                codec = RowCodec(names, oids, mode)
                query = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT").format(
                    sql.SQL(", ").join(sql.Identifier(n) for n in names),
                    sql.Identifier(schema, table),
                    sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, key)))
                    if key
                    else sql.SQL(""),
                )
                cur = conn.cursor()
                for oid in set(oids):
                    cur.adapters.register_loader(oid, _RawText)
                async with cur.copy(query) as copy:
                    copy.set_types(oids)
                    async for raw in copy.rows():
                        row = codec.decode_values(raw)

                        def describe(row: dict[str, Any] = row) -> str:
                            return _describe_row(row, key)

                        await writer.add(pack(row), describe)
                await writer.flush()
    except psycopg.OperationalError as exc:
        raise SnapshotError("postgres_unavailable", f"PostgreSQL: {str(exc).strip()}") from exc
    finally:
        await asyncio.to_thread(repl.close)  # drops the temporary slot
    meta = {
        "batch_count": writer.chunks,
        "lsn": str(lsn),
        "row_count": writer.row_count,
        "snapshot_id": snapshot_id,
        "table": table,
        "schema": schema,
        "timestamp": int(time.time()),
    }
    await publish(
        subjects.snapshot_meta_subject(schema, table, prefix), pack(meta), f"{snapshot_id}:meta"
    )
    log.info(
        "snapshot %s of %s.%s: %d rows in %d chunks at %s (%.1f s)",
        snapshot_id,
        schema,
        table,
        writer.row_count,
        writer.chunks,
        lsn,
        time.monotonic() - started,
    )
    return meta


async def _describe(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, publication: str
) -> tuple[list[str], list[int], list[str]]:
    """The published columns (names, value-codec type OIDs) and the primary key."""
    columns = await published_columns(conn, schema, table, publication)
    cur = await conn.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (sql.Identifier(schema, table).as_string(conn),),
    )
    key = [name for (name,) in await cur.fetchall()]
    return columns.names, columns.type_oids, key


def _describe_row(row: dict[str, Any], key: list[str]) -> str:
    if key:
        return "with key " + ", ".join(f"{k}={row.get(k)!r}" for k in key)
    return "(table without primary key)"
