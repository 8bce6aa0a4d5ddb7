"""The snapshot request and its replies, the interim messages, the progress record and the
backfill conditions (docs/wire-format.md, "INIT stream" and "Control plane")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pg_nats_bridge.contract.encoding import UNPACK_OPTIONS, pack, unpack
from pg_nats_bridge.contract.schema import SchemaDocument
from pg_nats_bridge.lsn import Lsn

MAX_CHUNK_SIZE = 10_000
MAX_REQUEST_BYTES = 4096
"""A request's body is `{"chunk_size": 10000, "mode": "chunked"}` and a few conditions at most;
anything this long is not a request."""
MAX_CONDITIONS = 8
MAX_CONDITION_VALUE = 256  # characters of a condition's value

REFUSALS = frozenset(
    {
        "unknown_table",
        "bad_request",
        "busy",
        "postgres_unavailable",
        "init_stream_missing",
        "row_too_large",
        "no_primary_key",
        "paused",
        "cancelled",
        "table_rewritten",
        "publish_failed",
        "shutting_down",
        "internal",
        "not_published",
    }
)
"""The `reason` of a reply that is not a snapshot."""

HEARTBEAT_HEADER = "Bridge-Heartbeat"
"""On a snapshot request: the seconds (1 to 60) between the interim messages the requester
wants while its snapshot runs. Without it a request gets its one answer only (`nats request`)."""
STATUS_HEADER = "Bridge-Status"
"""On an interim message to a requester that asked for them: `running` (its snapshotter is
alive and on it); the body is `{"status": "running"}`. The answer itself has no such header."""
MAX_HEARTBEAT_SECONDS = 60


def heartbeat_seconds(headers: dict[str, str] | None) -> float | None:
    """The interval a request's `Bridge-Heartbeat` header asks for, or None (absent, or not a
    number from 1 to 60: anyone may send a request)."""
    value = (headers or {}).get(HEARTBEAT_HEADER)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not 1 <= seconds <= MAX_HEARTBEAT_SECONDS:
        return None
    return seconds


PERMANENT_REFUSALS = frozenset(
    {
        "unknown_table",
        "bad_request",
        "init_stream_missing",
        "row_too_large",
        "no_primary_key",
        "not_published",
    }
)
"""Refusals a later request would get again; the others are worth asking again."""


class SnapshotMeta(BaseModel):
    """A snapshot's meta (`init.meta.<table>`, and the reply to a request that got one, with
    `joined` when it joined a running snapshot)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_count: int = Field(ge=0)
    lsn: str
    row_count: int = Field(ge=0)
    schema_: str = Field(alias="schema")
    snapshot_id: str
    table: str
    timestamp: int
    joined: bool = False
    mode: Literal["exported", "chunked"] = "exported"
    replay_until: str | None = None  # chunked: replay CDC idempotently below this LSN
    partial: bool = False  # a backfill of the rows matching `where`, not the whole table
    resumed: bool = False  # chunked: continued after its first reader stopped
    started: int | None = None  # chunked: unix time the snapshot began
    where: list[Condition] | None = None  # a backfill's conditions (with `partial`)
    # The table as its rows are in this snapshot (read under the snapshot, or unchanged over
    # a chunked one's ranges): a copy builds the table from it, not from KV, whose document
    # may already describe an ALTER TABLE committed after the snapshot's point.
    schema_document: SchemaDocument | None = None

    @field_validator("lsn", "replay_until")
    @classmethod
    def _an_lsn(cls, value: str | None) -> str | None:
        if value is not None:
            Lsn.parse(value)
        return value


class SnapshotChunk(BaseModel):
    """One chunk of a snapshot's rows on `init.snap.<table>.<snapshot_id>.<chunk>`: its number,
    PostgreSQL's row estimate when it has one (for progress displays), the rows. The
    snapshotter packs chunks by hand (services/snapshotter/chunk_packing.py); a test holds its bytes
    to this model's encoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk: int = Field(ge=0)
    estimated_rows: int | None = None
    data: list[dict[str, Any]]

    def encode(self) -> bytes:
        exclude = {"estimated_rows"} if self.estimated_rows is None else set()
        return pack(self.model_dump(exclude=exclude))

    @classmethod
    def decode(cls, data: bytes) -> SnapshotChunk:
        """The chunk `data` holds; ValueError otherwise (anyone on `init.>` may publish)."""
        try:
            body = unpack(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not MessagePack ({type(exc).__name__})") from None
        return cls.model_validate(body)


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """What a progress display reads of a chunk: its number, the row estimate (None when it
    is not a number), its rows."""

    chunk: int
    estimated_rows: int | None
    rows: int


def chunk_header(data: bytes) -> ChunkHeader:
    """A chunk's header and row count, its rows not decoded (a chunk is up to a megabyte, and
    a display decoding each whole falls behind several readers); ValueError for anything that
    is not a chunk (anyone on `init.>` may publish)."""
    try:
        fields = msgpack.Unpacker(**UNPACK_OPTIONS, max_buffer_size=len(data) + 1)
        fields.feed(data)
        number: Any = None
        estimated: Any = None
        for _ in range(fields.read_map_header()):
            key = fields.unpack()
            if key == "data":
                rows = fields.read_array_header()
                break
            value = fields.unpack()
            if key == "chunk":
                number = value
            elif key == "estimated_rows":
                estimated = value
        else:
            raise ValueError("no rows")
    except Exception as exc:
        raise ValueError(f"not a snapshot chunk ({type(exc).__name__})") from None
    if not _an_int(number):
        raise ValueError("not a snapshot chunk (its number is not an integer)")
    return ChunkHeader(number, estimated if _an_int(estimated) else None, rows)


def chunk_rows(data: bytes) -> tuple[int, list[dict[str, Any]]]:
    """A chunk's number and rows, as a consumer loads them: decoded once, its shape checked,
    the rows not validated one by one (`SnapshotChunk.decode` does, at a cost per row);
    ValueError for anything that is not a chunk."""
    try:
        body = unpack(data)
    except Exception as exc:
        raise ValueError(f"not MessagePack ({type(exc).__name__})") from None
    if (
        not isinstance(body, dict)
        or not _an_int(body.get("chunk"))
        or not isinstance(body.get("data"), list)
    ):
        raise ValueError("not a snapshot chunk (chunk and data expected)")
    return body["chunk"], body["data"]


def _an_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SnapshotRefusal(BaseModel):
    """The reply to a request that cannot be served."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    error: str
    reason: str


def read_snapshot_reply(data: bytes) -> SnapshotMeta | SnapshotRefusal:
    """A reply as a requester reads it; ValueError when it is neither (anyone can publish to
    a requester's inbox)."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    try:
        if "error" in body:
            return SnapshotRefusal.model_validate(body)
        return SnapshotMeta.model_validate(body)
    except ValidationError as exc:
        raise ValueError(f"not a snapshot reply ({exc.error_count()} problems)") from None


class KeySegment(BaseModel):
    """A part of a table's primary key that one reader process of a parallel snapshot reads:
    from `start` (inclusive; None: from the first key) to `end` (exclusive; None: to the last),
    read through `after` so far (chunked mode), `done` once read to its end. Keys are the text
    PostgreSQL gave for each key column."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    start: list[str] | None = None
    end: list[str] | None = None
    after: list[str] | None = None
    done: bool = False

    @field_validator("start", "end", "after", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return None if value is None else [str(v) for v in value]


class ProgressRecord(BaseModel):
    """A chunked snapshot's progress record on `init.progress.<table>` (the subject's last
    message counts): the snapshotter that reads it writes one after every range whose chunks
    JetStream stored (services/snapshotter/resume.py); another one continues it from here when
    its reader died, and a requester reads it to tell whether the reader is alive."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    snapshot_id: str
    lsn: str  # the consistent point
    after: list[str] | None = None  # the key read through (as text); None: nothing read yet
    next_chunk: int = Field(ge=0)
    row_count: int = Field(ge=0)
    owner: str  # the snapshotter process reading it
    updated: float  # unix time of this record
    started: int  # unix time the snapshot began
    state: Literal["running", "stopped", "paused", "cancelled", "done"] = "running"
    # Read by several readers: each segment's key read through, instead of `after`.
    segments: list[KeySegment] | None = None
    # How old a running record must be before another request continues the snapshot: what
    # a waiting requester needs to ask again as soon as that is possible (absent from records
    # of earlier releases).
    takeover_seconds: float | None = None
    # The table's shape digest when the snapshot began: a continuation that finds another
    # one (an ALTER TABLE committed meanwhile) is refused with `table_rewritten`.
    shape: str | None = None

    @field_validator("after", mode="before")
    @classmethod
    def _key_texts(cls, value: Any) -> Any:
        return [str(v) for v in value] if value else None

    def encode(self) -> bytes:
        return pack(self.model_dump())

    def msg_id(self) -> str:
        """Unique per record (a duplicate's PubAck would carry the first one's sequence)."""
        return (
            f"{self.snapshot_id}:progress:{self.next_chunk}:{self.owner}:{self.state}:"
            f"{self.updated:.6f}"
        )

    def age(self, now: float) -> float:
        return now - self.updated

    def continuable(self, now: float) -> str | None:
        """Why asking again now continues the snapshot, or None while its reader is alive (or
        the record says nothing about it)."""
        if self.state == "stopped":
            return f"its reader {self.owner} stopped it after an error"
        age, takeover = self.age(now), self.takeover_seconds
        if self.state == "running" and takeover is not None and age >= takeover:
            return (
                f"its reader {self.owner} has not recorded progress for {age:.0f} s "
                f"(taken over after {takeover:.0f} s; chunk {self.next_chunk})"
            )
        return None


def read_progress_record(data: bytes | None) -> ProgressRecord | None:
    """The record, or None for anything else (anyone allowed on `init.>` may publish there)."""
    try:
        return ProgressRecord.model_validate(unpack(data or b""))
    except Exception:
        return None


CONDITION_OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "is null", "is not null")


class Condition(BaseModel):
    """One condition of a partial backfill: `column op value`, ANDed with the others. The value
    reaches PostgreSQL as a bound parameter and is read as the column's type there."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    column: str = Field(min_length=1, max_length=63)
    op: Literal["=", "!=", "<", "<=", ">", ">=", "is null", "is not null"]
    value: str | int | float | bool | None = None

    @field_validator("value")
    @classmethod
    def _short(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_CONDITION_VALUE:
            raise ValueError(f"at most {MAX_CONDITION_VALUE} characters")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ValueError("out of the 64-bit range (send it as a string)")
        return value

    @model_validator(mode="after")
    def _value_for_op(self) -> Condition:
        if self.op in ("is null", "is not null"):
            if self.value is not None:
                raise ValueError(f"{self.op!r} takes no value")
        elif self.value is None:
            raise ValueError(f"{self.op!r} needs a value (for NULL use 'is null')")
        return self

    def describe(self) -> str:
        shown = "" if self.value is None else f" {self.value!r}"
        return f"{self.column} {self.op}{shown}"


class SnapshotRequest(BaseModel):
    """The options a snapshot request may carry; an empty body asks for the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    chunk_size: int | None = Field(
        None, ge=1, le=MAX_CHUNK_SIZE, description="Rows per chunk (default: the setting)"
    )
    mode: Literal["exported", "chunked"] | None = Field(
        None,
        description="`exported` (the default): one exported snapshot held for the whole read; "
        "`chunked`: primary-key ranges, each in its own short transaction (docs/wire-format.md)",
    )
    fresh: bool | None = Field(
        None,
        description="chunked: start a new snapshot rather than continue an unfinished one",
    )
    where: list[Condition] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CONDITIONS,
        description="a partial backfill: only the rows matching every condition, e.g. "
        '`[{"column": "updated_at", "op": ">=", "value": "2026-01-01"}]` (docs/wire-format.md)',
    )
