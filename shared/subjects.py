"""Subject names and Msg-Ids of the wire contract (docs/wire-format.md, "Subjects"). Table
tokens are the consumer library's (pg_nats_bridge/names.py).
"""

from __future__ import annotations

from pg_nats_bridge.names import (
    OPERATIONS,
    SCHEMA_SEPARATOR,
    SubjectError,
    escape_name,
    parse_table_token,
    table_token,
    unescape_name,
)
from shared.lsn import Lsn

__all__ = [
    "OPERATIONS",
    "SCHEMA_SEPARATOR",
    "SubjectError",
    "escape_name",
    "parse_table_token",
    "table_token",
    "unescape_name",
]


def cdc_subject(schema: str, table: str, operation: str, prefix: str = "cdc") -> str:
    return f"{prefix}.{table_token(schema, table)}.{operation}"


def schema_subject(schema: str, table: str, prefix: str = "init") -> str:
    return f"{prefix}.schema.{table_token(schema, table)}"


def snapshot_chunk_subject(
    schema: str, table: str, snapshot_id: str, chunk: int, prefix: str = "init"
) -> str:
    return f"{prefix}.snap.{table_token(schema, table)}.{snapshot_id}.{chunk}"


def snapshot_meta_subject(schema: str, table: str, prefix: str = "init") -> str:
    return f"{prefix}.meta.{table_token(schema, table)}"


def change_msg_id(commit_lsn: Lsn, ordinal: int) -> str:
    """`Nats-Msg-Id` of one row change: `<commit LSN>:<ordinal>`.

    The commit LSN names the transaction (no two transactions commit at the same WAL position)
    and the ordinal, the change's 0-based position among the transaction's changes as decoding
    delivers them, names the change within it. Replaying the slot delivers a transaction's
    changes again in the same order, so a replayed change gets the same Msg-Id and JetStream's
    duplicate window drops it. The change's own LSN is not enough: every row of a COPY or
    multi-insert WAL record carries the same one.
    """
    return f"{commit_lsn}:{ordinal}"


def snapshot_msg_id(snapshot_id: str, schema: str, table: str, chunk: int) -> str:
    return f"{snapshot_id}:{table_token(schema, table)}:{chunk}"


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (NATS wildcards: `*` one token, `>` one or
    more at the end)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)
