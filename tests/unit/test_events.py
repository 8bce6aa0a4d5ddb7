"""The event builder never publishes a change of a transaction PostgreSQL streamed before it
committed (pgoutput protocol 2+ with `streaming`): the replicator does not ask for it, and a
streamed transaction may still abort."""

from __future__ import annotations

import struct

import pytest

from services.replicator import pgoutput as po
from services.replicator.events import EventBuilder, Outgoing
from shared.codec import ValueMode


def xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + payload


def test_a_streamed_transaction_is_refused_not_published() -> None:
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    out: list[Outgoing] = []
    stream_start = b"S" + struct.pack("!I", 777) + b"\x01"
    with pytest.raises(
        po.DecodeError, match=r"Stream Start of a streamed \(in-progress\) transaction"
    ):
        builder.feed(xlog(0x100, stream_start), out)
    assert out == []
