"""A snapshot's rows packed into `{"chunk": n, "estimated_rows": e, "data": [...]}` chunks
(docs/wire-format.md, INIT stream; `estimated_rows` only when PostgreSQL has an estimate): at
most the requested rows each, and never more than NATS max_payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from pg_nats_bridge.contract import packer
from services.snapshotter.errors import SnapshotError
from shared.wire import unpack

# Room for headers and framing beside a chunk's payload.
_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    payload: bytes
    rows: int


@dataclass(frozen=True, slots=True)
class RangeDone:
    """A chunked read finished a range (services/snapshotter/key_ranges.py): the chunks before
    `next_chunk` hold every row up to the key `after` (as text), `row_count` of them. Handed to
    the publisher in line with the chunks, so that it records the progress once they are
    stored."""

    after: tuple[str, ...]
    next_chunk: int
    row_count: int


class ChunkBuilder:
    """Packs rows into `{"chunk": n, "data": [...]}` chunks no larger than `max_payload`."""

    def __init__(self, chunk_size: int, max_payload: int) -> None:
        self.chunk_size = chunk_size
        self.limit = max_payload - _OVERHEAD
        self.rows: list[bytes] = []
        self.size = 0
        self.chunks = 0
        self.row_count = 0
        self.estimated_rows: int | None = None  # said in each chunk when known
        self.packer = packer()

    def refuse(self, packed_row: bytes, row: dict[str, Any], key: list[str]) -> SnapshotError:
        return SnapshotError(
            "row_too_large",
            f"row {describe_row(row, key)} is {len(packed_row)} bytes encoded, more than NATS "
            f"max_payload allows ({self.limit + _OVERHEAD}); raise max_payload on the server",
        )

    def add_many(self, packed_rows: list[bytes], key: list[str]) -> list[Chunk]:
        """Adds a block of packed rows; returns the chunks they completed (a row too large
        for any chunk is refused)."""
        done: list[Chunk] = []
        limit, chunk_size = self.limit, self.chunk_size
        sizes = list(map(len, packed_rows))
        total = sum(sizes)
        if (
            len(self.rows) + len(packed_rows) <= chunk_size
            and self.size + total + 64 <= limit
            and max(sizes, default=0) + 64 <= limit
        ):  # the whole block joins the chunk being filled (the common case)
            self.rows.extend(packed_rows)
            self.size += total
            self.row_count += len(packed_rows)
            return done
        for packed in packed_rows:
            size = len(packed) + 64
            if size > limit:
                raise self.refuse(packed, unpack(packed), key)
            if self.rows and (len(self.rows) >= chunk_size or self.size + size > limit):
                chunk = self.finish()
                assert chunk is not None
                done.append(chunk)
            self.rows.append(packed)
            self.size += size - 64
        self.row_count += len(packed_rows)
        return done

    def adopt(self, entries: int, body: bytes, rows: int) -> Chunk:
        """A reader process's chunk (`split_chunk`), numbered next."""
        chunk = Chunk(self.chunks, join_chunk(self.chunks, entries, body), rows)
        self.chunks += 1
        self.row_count += rows
        return chunk

    def finish(self) -> Chunk | None:
        if not self.rows:
            return None
        packer = self.packer
        estimate = (
            (packer.pack("estimated_rows"), packer.pack(self.estimated_rows))
            if self.estimated_rows is not None
            else ()
        )
        payload = b"".join(
            (
                packer.pack_map_header(2 + bool(estimate)),
                packer.pack("chunk"),
                packer.pack(self.chunks),
                *estimate,
                packer.pack("data"),
                packer.pack_array_header(len(self.rows)),
                *self.rows,
            )
        )
        chunk = Chunk(self.chunks, payload, len(self.rows))
        self.chunks += 1
        self.rows, self.size = [], 0
        return chunk


_CHUNK_KEY = msgpack.packb("chunk")
_INT_SIZES = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}


def split_chunk(payload: bytes) -> tuple[int, bytes]:
    """A chunk's map entries and what follows its `chunk` number: a reader process's chunk
    without its own number (`join_chunk` gives it the snapshot's)."""
    entries = payload[0] & 0x0F  # a fixmap: a chunk has at most three entries
    if payload[0] & 0xF0 != 0x80 or payload[1:7] != _CHUNK_KEY:
        raise ValueError("not a chunk of ChunkBuilder's")
    first = payload[7]
    size = 1 if first < 0x80 else _INT_SIZES[first]
    return entries, payload[7 + size :]


def join_chunk(index: int, entries: int, body: bytes) -> bytes:
    return b"".join((bytes((0x80 | entries,)), _CHUNK_KEY, msgpack.packb(index), body))


def describe_row(row: dict[str, Any], key: list[str]) -> str:
    if key:
        return "with key " + ", ".join(f"{k}={row.get(k)!r}" for k in key)
    return "(table without primary key)"
