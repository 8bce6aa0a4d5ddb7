"""Table names as operators write them (`--table`), with PostgreSQL's identifier rules."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

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


class TableNameError(ValueError):
    """Text that is not `table` or `schema.table`."""


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        """`table`, `schema.table`, with PostgreSQL's identifier rules: unquoted parts fold to
        lower case, double-quoted parts are kept as written (`public."Odd.Name"`)."""
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
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls("public", parts[0])

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)
