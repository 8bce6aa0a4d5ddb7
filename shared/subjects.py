"""Subject names and Msg-Ids of the wire contract (docs/wire-format.md, "Subjects").

A NATS subject token may not hold `.`, `*`, `>` or whitespace, and a table name may hold any of
them. `table_token` maps a (schema, table) pair to a token that is the plain table name in the
common case (a `public` table named with letters, digits, `_` and `-`) and otherwise escapes
every other byte of the UTF-8 name as `~XX` (upper-case hex) — `~` itself included, so the
mapping can be reversed and two different tables never share a token. A schema other than
`public` is written before the table, separated by `~~`, which no escaped name contains.
"""

from __future__ import annotations

import re
from typing import Final

from shared.lsn import Lsn

OPERATIONS: Final = ("insert", "update", "delete", "truncate")
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
SCHEMA_SEPARATOR: Final = "~~"


class SubjectError(ValueError):
    """A subject token that no table name maps to."""


def escape_name(name: str) -> str:
    if not name:
        raise SubjectError("an empty name has no subject token")
    raw = name.encode()
    if all(b in _SAFE for b in raw):
        return name
    return "".join(chr(b) if b in _SAFE else f"~{b:02X}" for b in raw)


def unescape_name(token: str) -> str:
    if not token or SCHEMA_SEPARATOR in token:
        raise SubjectError(f"{token!r} is not an escaped name")
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(token):
        out += token[pos : match.start()].encode()
        out.append(int(match.group(1), 16))
        pos = match.end()
    rest = token[pos:]
    if "~" in rest or any(ord(c) > 127 or c.encode()[0] not in _SAFE for c in rest):
        raise SubjectError(f"{token!r} is not an escaped name")
    out += rest.encode()
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise SubjectError(f"{token!r} does not unescape to UTF-8") from None


def table_token(schema: str, table: str) -> str:
    """The subject token naming `schema.table` (`users` for `public.users`)."""
    if schema == "public":
        return escape_name(table)
    return f"{escape_name(schema)}{SCHEMA_SEPARATOR}{escape_name(table)}"


def parse_table_token(token: str) -> tuple[str, str]:
    """The inverse of `table_token`: `(schema, table)`."""
    schema, sep, table = token.partition(SCHEMA_SEPARATOR)
    if not sep:
        return "public", unescape_name(token)
    return unescape_name(schema), unescape_name(table)


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
