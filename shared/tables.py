"""Table names as operators write them (`--table`), with PostgreSQL's identifier rules."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pg_nats_bridge.names import TableNameError, parse_table_name

__all__ = ["TableName", "TableNameError"]

# A configured table is followed by OID across renames (replicator and snapshotter alike):
# its OID from its name once, then its current name from that OID.
TABLE_OID_QUERY = (
    "SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"
)
TABLE_NAME_QUERY = (
    "SELECT n.nspname, c.relname FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s"
)


# A table's primary key columns in key order, `%s` its regclass text: its key columns only,
# not its INCLUDE columns, which follow them in indkey (and may have no ordering, as `box`).
PRIMARY_KEY_QUERY = (
    "SELECT coalesce(array_agg(a.attname::text"
    " ORDER BY array_position(i.indkey::int2[], a.attnum)), '{}')"
    " FROM pg_index i"
    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
    " WHERE i.indrelid = %s::regclass AND i.indisprimary"
    " AND array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1)"
    " < i.indnkeyatts"
)


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        """`table`, `schema.table`, with PostgreSQL's identifier rules (unquoted parts fold
        to lower case)."""
        return cls(*parse_table_name(text))

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def split_column_list(text: str) -> tuple[str, tuple[str, ...] | None]:
    """`people(id, name)` → (`people`, (`id`, `name`)); a name without a list → (name, None).
    Column names follow PostgreSQL's identifier rules (unquoted ones fold to lower case)."""
    text = text.strip()
    if not text.endswith(")"):
        return text, None
    quoted = False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "(" and not quoted:
            name, inner = text[:i].strip(), text[i + 1 : -1]
            break
    else:
        return text, None
    columns = []
    for part in _split_outside_quotes(inner):
        part = part.strip()
        if not part or part == '""':
            raise TableNameError(f"{text!r}: an empty column name")
        if len(part) >= 2 and part[0] == part[-1] == '"':
            column = part[1:-1].replace('""', '"')
        elif part and '"' not in part and not any(c.isspace() for c in part):
            column = part.lower()
        else:
            raise TableNameError(
                f"{text!r}: {part!r} is not a column name (double-quote names with spaces, "
                "commas or capitals)"
            )
        columns.append(column)
    if not columns:
        raise TableNameError(f"{text!r}: an empty column list")
    if len(set(columns)) != len(columns):
        raise TableNameError(f"{text!r}: a column is listed twice")
    return name, tuple(columns)


def _split_outside_quotes(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
