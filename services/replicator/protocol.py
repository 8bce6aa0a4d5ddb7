"""Framing of the streaming replication protocol's CopyData messages (no I/O, no policy).

Inside the COPY BOTH stream the server sends XLogData (`w`) carrying one pgoutput message and
primary keepalives (`k`); the client sends standby status updates (`r`) telling the server how
far it may prune WAL. Timestamps are microseconds since 2000-01-01 00:00 UTC.

The XLogData framing is written here once (`XLOG_HEADER`: where the pgoutput message starts in
a frame); pgoutput.py, which lays out the messages, reads frames in place through it. What a
read's keepalives say is read here too (`keepalives`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.replicator.wire_reader import DecodeError, Reader
from shared.lsn import Lsn, lsn_from_u64, lsn_text

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000
_STATUS_UPDATE = struct.Struct("!cQQQqB")
_XLOG_HEADER = struct.Struct("!QQq")  # data start, WAL end, send time
_U64 = struct.Struct("!Q")

XLOG_DATA, KEEPALIVE = 0x77, 0x6B  # w k
XLOG_HEADER = 1 + _XLOG_HEADER.size
"""In an XLogData message, the pgoutput message starts after 'w' and the 24-byte header."""
_KEEPALIVE_SIZE = 18  # 'k', WAL end (8), send time (8), reply requested (1)


def pg_now() -> int:
    """Now, in PostgreSQL's microseconds since 2000-01-01."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def pg_time_to_datetime(us: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class XLogData:
    """One pgoutput message and where it sits in the WAL."""

    data_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """The server's heartbeat; `reply_requested` means: answer now or be disconnected."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


def parse_copy_data(buf: bytes) -> XLogData | PrimaryKeepalive:
    """Split one CopyData message from the walsender into its frame and payload."""
    if not buf:
        raise DecodeError("CopyData", 0, "empty message")
    kind = buf[0]
    if kind == 0x77:  # 'w'
        if len(buf) >= _XLOG_HEADER.size + 1:  # one unpack; short ones get the Reader's error
            start, end, sent = _XLOG_HEADER.unpack_from(buf, 1)
            return XLogData(
                lsn_from_u64(start), lsn_from_u64(end), sent, bytes(buf[_XLOG_HEADER.size + 1 :])
            )
        r = Reader(buf, "XLogData", 1)
        start, end, sent = r.u64(), r.u64(), r.i64()
        return XLogData(Lsn(start), Lsn(end), sent, r.rest())
    if kind == 0x6B:  # 'k'
        r = Reader(buf, "PrimaryKeepalive", 1)
        end, sent, reply = r.u64(), r.i64(), r.byte()
        r.end()
        return PrimaryKeepalive(Lsn(end), sent, reply == 1)
    raise DecodeError("CopyData", 0, f"unknown replication message type {chr(kind)!r}")


def standby_status_update(
    written: Lsn, flushed: Lsn, applied: Lsn, now: int | None = None, reply: bool = False
) -> bytes:
    """The `r` message. `flushed` is what lets the server discard WAL: only ever acknowledged
    positions may go there."""
    return _STATUS_UPDATE.pack(
        b"r", written, flushed, applied, pg_now() if now is None else now, 1 if reply else 0
    )


def parse_standby_status_update(buf: bytes) -> tuple[Lsn, Lsn, Lsn, int, bool]:
    """The inverse of `standby_status_update` (tests and tools read what a client sent)."""
    r = Reader(buf, "StandbyStatusUpdate")
    if r.byte() != 0x72:
        raise r.fail("does not start with 'r'", 0)
    written, flushed, applied, sent, reply = r.u64(), r.u64(), r.u64(), r.i64(), r.byte()
    r.end()
    return Lsn(written), Lsn(flushed), Lsn(applied), sent, reply == 1


def xlog_data_start(raw: bytes) -> Lsn:
    """Where an XLogData message's data starts in the WAL (the LSN of its record)."""
    return lsn_from_u64(_U64.unpack_from(raw, 1)[0])


def xlog_data_start_text(raw: bytes) -> str:
    """`xlog_data_start` as PostgreSQL prints it (once per change: no Lsn object)."""
    return lsn_text(_U64.unpack_from(raw, 1)[0])


def keepalives(raws: list[bytes]) -> tuple[Lsn, bool]:
    """A read's primary keepalives, checked all at once (a read holds ~15 at 5k tx/s): the
    last one's WAL end, and whether any asks for a reply. Anything else among them, or a
    malformed one, is a `DecodeError`."""
    joined = b"".join(raws)
    kinds = joined[0::_KEEPALIVE_SIZE]
    if set(map(len, raws)) != {_KEEPALIVE_SIZE} or kinds.count(b"k") != len(raws):
        for raw in raws:
            if len(raw) != _KEEPALIVE_SIZE or raw[0] != KEEPALIVE:
                message = parse_copy_data(raw)  # raises the framing error
                raise DecodeError("CopyData", 0, f"unexpected {type(message).__name__}")
    reply = b"\x01" in joined[_KEEPALIVE_SIZE - 1 :: _KEEPALIVE_SIZE]
    wal_end = Lsn(int.from_bytes(joined[-17:-9], "big"))  # the last one's, after its 'k'
    return wal_end, reply
