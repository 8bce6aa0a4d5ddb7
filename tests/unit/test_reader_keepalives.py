"""The reader's check of a read's keepalives, all at once: every one is checked, the last
one's position is what an idle slot may confirm, and any one asking for a reply is answered.
(The walsender is stood in for by the status updates it would receive.)"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from services.replicator.failure import FailureSignal
from services.replicator.flow import InFlightBudget
from services.replicator.protocol import parse_standby_status_update
from services.replicator.reader import WalReader
from services.replicator.wire_reader import DecodeError
from shared.lsn import Lsn


class _Sent:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.messages.append(message)


def keepalive(wal_end: int, reply: bool = False) -> bytes:
    return b"k" + struct.pack("!Qq", wal_end, 1) + (b"\x01" if reply else b"\x00")


def reader() -> tuple[WalReader, _Sent]:
    loop = asyncio.new_event_loop()
    r = WalReader(
        "postgresql://unused", "slot", {}, None, InFlightBudget(1 << 20), FailureSignal(), 10.0,
        0.01, loop, 0,
    )  # fmt: skip
    sent = _Sent()
    r.conn = sent  # type: ignore[assignment]
    r.last_update = 1e18  # no periodic update due: only forced ones go out
    return r, sent


def test_the_last_position_counts_when_nothing_is_pending() -> None:
    r, sent = reader()
    r._keepalives([keepalive(0x500), keepalive(0x900), keepalive(0x700)], pending_frames=False)
    assert r.confirmed == Lsn(0x700)
    assert sent.messages == []


def test_no_position_while_frames_are_pending() -> None:
    r, _ = reader()
    r._keepalives([keepalive(0x500)], pending_frames=True)
    assert r.confirmed == Lsn(0)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_any_reply_request_is_answered(which: int) -> None:
    r, sent = reader()
    raws = [keepalive(0x100 * (i + 1), reply=i == which) for i in range(3)]
    r._keepalives(raws, pending_frames=False)
    assert len(sent.messages) == 1
    _, flushed, _, _, _ = parse_standby_status_update(sent.messages[0])
    assert flushed == Lsn(0x300)


@pytest.mark.parametrize(
    "bad",
    [
        keepalive(1)[:-1],
        keepalive(1) + b"\x00",
        b"x" + keepalive(1)[1:],
        b"",
    ],
)
@pytest.mark.parametrize("at", [0, 1])
def test_any_malformed_one_is_an_error(bad: bytes, at: int) -> None:
    r, _ = reader()
    raws: list[Any] = [keepalive(0x100), keepalive(0x200)]
    raws[at] = bad
    with pytest.raises(DecodeError):
        r._keepalives(raws, pending_frames=False)
    assert r.confirmed == Lsn(0)
