"""A table's schema document (`init.schema.<table>` on the INIT stream, and the table's value
in the KV bucket `schemas`): the published columns, the primary key, the replica identity and
the publication's row filter, what a consumer builds its copy of the table from
(docs/wire-format.md, "Schema documents"). The snapshotter writes it, the library reads it,
both through `SchemaDocument`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pg_nats_bridge.contract.encoding import pack, unpack


class SchemaColumn(BaseModel):
    """One published column, as information_schema describes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    data_type: str | None = None  # information_schema's name of the type
    is_nullable: str | None = None  # YES or NO
    column_default: str | None = None
    position: int | None = None  # the column's ordinal position in the table
    # pg_attribute's atttypid and atttypmod, as a schema change on the CDC stream says them
    # (contract.RelationColumn): a consumer compares the two (None in documents written before)
    type_oid: int | None = None
    type_modifier: int | None = None


class SchemaDocument(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_: str = Field(alias="schema")  # `schema.table`
    table: str = ""
    columns: list[SchemaColumn]
    primary_key: list[str] = Field(default_factory=list)
    replica_identity: str = "default"  # what `old` carries: default, full, index or nothing
    row_filter: str | None = None  # the publication's, as PostgreSQL deparses it
    timestamp: int | None = None  # unix time it was written

    @property
    def namespace(self) -> str:
        """The table's schema (`schema_` is `schema.table`)."""
        return self.schema_[: len(self.schema_) - len(self.table) - 1] if self.table else ""

    def identity(self) -> dict[str, Any]:
        """What a consumer rebuilds the table from: a change to any of it is announced."""
        identity: dict[str, Any] = {
            "columns": [c.model_dump() for c in self.columns],
            "primary_key": list(self.primary_key),
            "replica_identity": self.replica_identity,
        }
        if self.row_filter is not None:
            identity["row_filter"] = self.row_filter
        return identity

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        body = {**self.identity(), "schema": self.schema_, "table": self.table}
        if self.timestamp is not None:
            body["timestamp"] = self.timestamp
        return body

    def encode(self) -> bytes:
        """The document as MessagePack, like every INIT message and KV value."""
        return pack(self.as_dict())

    @classmethod
    def read(cls, document: Any) -> SchemaDocument:
        """The document `document` (a decoded value) is; ValueError otherwise (anyone on the
        NATS account can write the bucket and the subject)."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise ValueError(
                f"not a schema document (schema, columns and primary_key expected; "
                f"{exc.error_count()} problems)"
            ) from None

    @classmethod
    def decode(cls, data: bytes | None) -> SchemaDocument:
        try:
            body = unpack(data or b"")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not MessagePack ({type(exc).__name__})") from None
        return cls.read(body)
