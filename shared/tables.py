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
