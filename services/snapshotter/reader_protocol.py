"""What the snapshotter and a reader process of a parallel snapshot say to each other
(services/snapshotter/parallel.py is one side, reader.py the other).

The job is one JSON line on the reader's stdin (`ReaderJob`). Frames on its stdout are
`<kind: 1 byte><length: 4 bytes, big-endian><payload>`, the kinds a `Frame`:

- `LOCKED` (exported mode) the reader's transaction adopted the snapshot and locked the table;
  it then reads one more stdin line: the plan as the snapshot sees it (`{"plan": …}`) to go
  on, or nothing (EOF) to stop.
- `CHUNK` a chunk: 4 bytes of row count, 1 byte of map entries, then the chunk's map entries
  after its `chunk` number (the snapshotter puts its own number in front).
- `RANGE_DONE` (chunked mode) a range is done, its chunks sent: `{"after": [key as text],
  "rows": n}`; the reader reads a line, `go` or `stop`, before the next range.
- `FAILED` `{"reason": …, "error": …}` (a snapshot refusal's reason); then it exits.
- `DONE` the segment is read; `STOPPED` (chunked) it stopped after a range, as asked.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from pg_nats_bridge.contract import KeySegment
from services.snapshotter.chunk_packing import Chunk, split_chunk
from services.snapshotter.table_plan import TablePlan

HEADER = struct.Struct(">cI")
CHUNK_HEAD = struct.Struct(">IB")  # rows, map entries
GO, STOP = b"go", b"stop"


class Frame(bytes, enum.Enum):
    LOCKED = b"L"
    CHUNK = b"C"
    RANGE_DONE = b"R"
    FAILED = b"E"
    DONE = b"D"
    STOPPED = b"S"


@dataclass(frozen=True)
class ReaderJob:
    """One reader's segment of one snapshot, and how to read it."""

    dsn: str
    schema: str
    table: str
    segment: KeySegment
    chunk_size: int
    max_payload: int
    estimated_rows: int | None
    # Exported mode: the snapshot to adopt (the plan follows once every reader holds the
    # lock); chunked mode: the plan, known before.
    snapshot: str | None = None
    plan: TablePlan | None = None
    lock_seconds: float = 5.0
    transaction_seconds: float = 1.0
    statement_seconds: float = 20.0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "dsn": self.dsn,
                "schema": self.schema,
                "table": self.table,
                "segment": self.segment.model_dump(),
                "chunk_size": self.chunk_size,
                "max_payload": self.max_payload,
                "estimated_rows": self.estimated_rows,
                "snapshot": self.snapshot,
                "plan": self.plan.as_json() if self.plan is not None else None,
                "lock_seconds": self.lock_seconds,
                "transaction_seconds": self.transaction_seconds,
                "statement_seconds": self.statement_seconds,
            }
        ).encode()

    @classmethod
    def decode(cls, line: bytes) -> ReaderJob:
        body = json.loads(line)
        plan = body.get("plan")
        return cls(
            dsn=body["dsn"],
            schema=body["schema"],
            table=body["table"],
            segment=KeySegment.model_validate(body["segment"]),
            chunk_size=int(body["chunk_size"]),
            max_payload=int(body["max_payload"]),
            estimated_rows=body.get("estimated_rows"),
            snapshot=body.get("snapshot"),
            plan=TablePlan.from_json(plan) if plan is not None else None,
            lock_seconds=float(body["lock_seconds"]),
            transaction_seconds=float(body["transaction_seconds"]),
            statement_seconds=float(body["statement_seconds"]),
        )


def plan_line(plan: TablePlan) -> bytes:
    """An exported reader's go-ahead: the plan as the snapshot sees it."""
    return json.dumps({"plan": plan.as_json()}).encode()


def read_plan_line(line: bytes) -> TablePlan:
    return TablePlan.from_json(json.loads(line)["plan"])


class FrameWriter:
    """The reader's side of stdout."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        self.out.write(HEADER.pack(kind.value, len(payload)))
        self.out.write(payload)
        self.out.flush()

    def chunk(self, chunk: Chunk) -> None:
        entries, body = split_chunk(chunk.payload)
        self.out.write(HEADER.pack(Frame.CHUNK.value, CHUNK_HEAD.size + len(body)))
        self.out.write(CHUNK_HEAD.pack(chunk.rows, entries))
        self.out.write(body)

    def range_done(self, after: list[str], rows: int) -> None:
        self.send(Frame.RANGE_DONE, json.dumps({"after": after, "rows": rows}).encode())

    def failed(self, reason: str, error: str) -> None:
        self.send(Frame.FAILED, json.dumps({"reason": reason, "error": error}).encode())


def read_header(header: bytes) -> tuple[Frame, int]:
    """A frame's kind and payload size; ValueError for a kind no reader sends."""
    kind, size = HEADER.unpack(header)
    return Frame(kind), size


def chunk_parts(payload: bytes) -> tuple[int, bytes, int]:
    """A `CHUNK` frame's map entries, body and rows (`ChunkBuilder.adopt` numbers it)."""
    rows, entries = CHUNK_HEAD.unpack_from(payload)
    return entries, payload[CHUNK_HEAD.size :], rows


def range_parts(payload: bytes) -> tuple[list[str], int]:
    """A `RANGE_DONE` frame's key read through and rows."""
    body: dict[str, Any] = json.loads(payload)
    return [str(v) for v in body["after"]], int(body["rows"])


def failure_parts(payload: bytes) -> tuple[str, str]:
    """A `FAILED` frame's reason and error."""
    body: dict[str, Any] = json.loads(payload)
    return str(body.get("reason", "internal")), str(body.get("error", ""))
