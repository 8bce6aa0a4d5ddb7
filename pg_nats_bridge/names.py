"""Table names on the wire (docs/wire-format.md, "Subjects"): subject tokens and the names
operators write.

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


class TableNameError(ValueError):
    """Text that is not `table` or `schema.table`."""


def parse_table_name(text: str) -> tuple[str, str]:
    """`(schema, table)` from `table` or `schema.table`, with PostgreSQL's identifier rules:
    unquoted parts fold to lower case, double-quoted parts are kept as written
    (`public."Odd.Name"`)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = was_quoted = False
    i, text = 0, text.strip()
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"' and text[i + 1 : i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = was_quoted = True
        elif ch == ".":
            parts.append("".join(current) if was_quoted else "".join(current).lower())
            current, was_quoted = [], False
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current) if was_quoted else "".join(current).lower())
    if quoted or len(parts) > 2 or not all(parts):
        raise TableNameError(
            f"table {text!r} is not a table name: use table, schema.table or "
            'double quotes for names with dots or capitals (public."Odd.Name")'
        )
    return (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[0])


def kv_key(schema: str, table: str) -> str:
    """The table's key in the `schemas` KV bucket: its subject token with `~` written `=` (KV
    keys allow neither `~` nor `*`/`>`, and `=` never appears in a token)."""
    return table_token(schema, table).replace("~", "=")


def parse_kv_key(key: str) -> tuple[str, str]:
    """The inverse of `kv_key`: `(schema, table)`."""
    return parse_table_token(key.replace("=", "~"))
