"""Reading the real pgoutput bytes a PostgreSQL server produces for a slot.

`pg_logical_slot_get_binary_changes` runs the same output plugin as a walsender and returns
each message's bytes with its LSN, which keeps the tests short and deterministic; the framing
test reads a real walsender stream instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from services.replicator.pgoutput import Message, PgOutputDecoder
from shared.lsn import Lsn


@dataclass(frozen=True)
class Captured:
    lsn: Lsn
    xid: int
    data: bytes


def create_slot(conn: psycopg.Connection[Any], slot: str, two_phase: bool = False) -> None:
    conn.execute(
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, %s)", (slot, two_phase)
    )


def max_proto(conn: psycopg.Connection[Any]) -> int:
    """Protocol 4 arrived with PostgreSQL 16, 3 with 15."""
    return 4 if conn.info.server_version >= 160000 else 3


def get_changes(
    conn: psycopg.Connection[Any], slot: str, publication: str, **options: str
) -> list[Captured]:
    opts: dict[str, str] = {"proto_version": "1", "publication_names": publication, **options}
    args: list[str] = []
    for key, value in opts.items():
        args += [key, value]
    placeholders = ", ".join(["%s"] * len(args))
    rows = conn.execute(
        f"SELECT lsn::text, xid::text::bigint, data "
        f"FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, {placeholders})",
        [slot, *args],
    ).fetchall()
    return [Captured(Lsn.parse(lsn), xid, bytes(data)) for lsn, xid, data in rows]


def decode_all(captured: list[Captured]) -> list[Message]:
    decoder = PgOutputDecoder()
    return [decoder.decode(c.data) for c in captured]
