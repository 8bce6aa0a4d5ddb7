"""What the CDC stream carries (docs/wire-format.md, "CDC event payload"): a row change, the
marker of a row too large for NATS, a logical decoding message, a table's new shape, a
transaction's commit record. The replicator's hot path
writes a change by hand (services/replicator/events.py); a property test holds its bytes to
`ChangeEvent`'s encoding, field for field and in this order."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pg_nats_bridge.contract.encoding import pack, unpack

Operation = Literal["insert", "update", "delete", "truncate"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def encode(self) -> bytes:
        """The MessagePack the bridge publishes: the fields in their documented order, an
        optional one only when it is set."""
        return pack(self.model_dump(by_alias=True, exclude_none=False, exclude=self._unset()))

    def _unset(self) -> set[str]:
        return set()

    @classmethod
    def decode(cls, data: bytes) -> Any:
        """The event `data` holds; ValueError (pydantic's ValidationError is one) otherwise."""
        try:
            body = unpack(data)
        except (ValueError, TypeError) as exc:  # msgpack's own errors are ValueErrors
            raise ValueError(f"not MessagePack ({type(exc).__name__})") from None
        return cls.model_validate(body)


class _Located(_Event):
    """Where a change is: its table, operation, WAL position and transaction (the fields a
    change and the marker that replaces it share, first, in this order)."""

    schema_: str = Field(alias="schema")
    table: str
    operation: Operation
    lsn: str
    commit_lsn: str
    xid: int
    ordinal: int
    commit_time: str


class ChangeEvent(_Located):
    """One row change on `cdc.<table>.<operation>`; a TRUNCATE adds `cascade` and
    `restart_identity`."""

    data: dict[str, Any] | None
    old: dict[str, Any] | None
    unchanged: list[str]
    cascade: bool | None = None
    restart_identity: bool | None = None

    def _unset(self) -> set[str]:
        return {"cascade", "restart_identity"} if self.operation != "truncate" else set()


class OversizedMarker(_Located):
    """In place of a row too large for NATS, on `cdc.~oversized.<table>`, with the Msg-Id the
    row would have had: `key` holds its replica identity columns (None when even they are
    too large)."""

    key: dict[str, Any] | None
    size: int
    max_payload: int


class LogicalMessage(_Event):
    """A `pg_logical_emit_message` on `cdc.~message.<prefix>`; a transactional one carries
    its transaction's fields (and the Msg-Id `<commit_lsn>:<ordinal>`), another has none."""

    prefix: str
    content: bytes
    transactional: bool
    lsn: str
    commit_lsn: str | None = None
    xid: int | None = None
    ordinal: int | None = None
    commit_time: str | None = None

    def _unset(self) -> set[str]:
        return set() if self.transactional else {"commit_lsn", "xid", "ordinal", "commit_time"}


class CommitRecord(_Event):
    """The end of a transaction that published anything, on `cdc.~commit` after its last
    change (docs/wire-format.md, "Transactions"): how many changes it published, and how many
    of each table (by subject token), so that a consumer of any set of tables knows, once this
    arrives, that it holds every change of the transaction for its tables. Changes are row
    changes and the markers that replace oversized ones (per table) and transactional logical
    messages (`messages`); `event_count` is all of them. Its Msg-Id is `<commit_lsn>:commit`."""

    commit_lsn: str
    xid: int
    commit_time: str
    event_count: int = Field(ge=1)
    tables: dict[str, int]  # subject token → changes of that table
    messages: int = Field(default=0, ge=0)  # transactional logical decoding messages


class RelationColumn(BaseModel):
    """A published column as PostgreSQL's logical decoding describes it to the replicator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type_oid: int  # pg_attribute.atttypid
    type_modifier: int  # pg_attribute.atttypmod (-1: none), e.g. numeric's precision and scale
    key: bool  # part of the replica identity's key


class SchemaChange(_Event):
    """A table's shape, on `cdc.<table>.schema`, at its place among the changes: every change
    of the table after it in the stream was written under this shape (docs/wire-format.md,
    "Schema changes"). The replicator publishes one where PostgreSQL's logical decoding
    describes the table anew (a Relation message): before the first change after any
    ALTER TABLE, and at the first change of each table after the replicator starts. So it
    may repeat a shape: a consumer compares it with the one it holds. `version` is the WAL
    position where the shape is first seen (the event's `lsn`). Not a change: the commit
    record does not count it. Its Msg-Id is `<commit_lsn>:schema:<relation_oid>:<n>`, or
    `<commit_lsn>:ddl:<lsn>:<relation_oid>` for one the DDL announced (`source` `ddl`), with
    `:was` after either on a renamed table's old name."""

    schema_: str = Field(alias="schema")
    table: str
    operation: Literal["schema"] = "schema"
    lsn: str
    commit_lsn: str
    xid: int
    commit_time: str
    version: str
    relation_oid: int
    columns: list[RelationColumn]
    replica_identity: Literal["default", "nothing", "full", "index"]
    # `ddl`: written by the DDL itself (an event trigger the bridge installs where it may), at
    # the DDL; `relation`: where logical decoding described the table anew.
    source: Literal["relation", "ddl"] = "relation"
    # The DDL rewrote the table (a type change, a volatile DEFAULT): stored values may have
    # changed even where the shape did not (ALTER COLUMN … TYPE text USING upper(…)).
    rewritten: bool = False
    command: str | None = None  # the DDL's command tag (`ddl` only)
    # False: the table left the publication (dropped, or taken out of it); nothing of it
    # follows, and `columns` is empty. (`ddl` only: without the event trigger nothing says so.)
    published: bool = True
    # The publication's row filter of the table, as PostgreSQL deparses it, or None for none
    # (`ddl` only: logical decoding's Relation message does not say it).
    row_filter: str | None = None
