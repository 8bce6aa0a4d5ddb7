import struct

import pytest

from services.replicator.protocol import (
    PrimaryKeepalive,
    XLogData,
    parse_copy_data,
    parse_standby_status_update,
    pg_time_to_datetime,
    standby_status_update,
)
from services.replicator.wire_reader import DecodeError
from shared.lsn import Lsn


def test_xlogdata_frame() -> None:
    frame = b"w" + struct.pack("!QQq", 0x100, 0x200, 5) + b"B payload"
    assert parse_copy_data(frame) == XLogData(Lsn(0x100), Lsn(0x200), 5, b"B payload")


def test_keepalive_frame() -> None:
    frame = b"k" + struct.pack("!Qq", 0x300, 7) + b"\x01"
    assert parse_copy_data(frame) == PrimaryKeepalive(Lsn(0x300), 7, True)


@pytest.mark.parametrize(
    ("frame", "kind", "message"),
    [
        (b"", "CopyData", "empty"),
        (b"x123", "CopyData", "unknown replication message type 'x'"),
        (b"w" + b"\x00" * 10, "XLogData", "at byte 9"),
        (b"k" + b"\x00" * 17 + b"\x00", "PrimaryKeepalive", "1 unexpected trailing"),
        (b"k" + b"\x00" * 16, "PrimaryKeepalive", "at byte 17"),
    ],
)
def test_bad_frames_name_type_and_offset(frame: bytes, kind: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        parse_copy_data(frame)
    assert info.value.message_type == kind


def test_standby_status_update_round_trip() -> None:
    msg = standby_status_update(Lsn(30), Lsn(20), Lsn(10), now=99, reply=True)
    assert len(msg) == 34 and msg[:1] == b"r"
    assert parse_standby_status_update(msg) == (Lsn(30), Lsn(20), Lsn(10), 99, True)


def test_postgres_epoch() -> None:
    assert pg_time_to_datetime(0).isoformat() == "2000-01-01T00:00:00+00:00"
    assert pg_time_to_datetime(1_500_000).isoformat() == "2000-01-01T00:00:01.500000+00:00"
