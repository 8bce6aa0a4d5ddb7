"""The snapshot reply as requesters read it (pg_nats_bridge.contract): a meta, a refusal, or
a clear ValueError for anything else someone may publish to a requester's inbox."""

from __future__ import annotations

import json

import pytest

from pg_nats_bridge import contract

META = {
    "batch_count": 3,
    "lsn": "0/1D73E78",
    "row_count": 2500,
    "schema": "public",
    "snapshot_id": "snap-1795538891-a1b2c3",
    "table": "orders",
    "timestamp": 1795538891,
}


def test_a_meta_and_a_joined_meta() -> None:
    reply = contract.read_snapshot_reply(json.dumps(META).encode())
    assert isinstance(reply, contract.SnapshotMeta)
    assert (reply.row_count, reply.schema_, reply.joined) == (2500, "public", False)
    joined = contract.read_snapshot_reply(json.dumps({**META, "joined": True}).encode())
    assert isinstance(joined, contract.SnapshotMeta) and joined.joined


def test_a_refusal() -> None:
    reply = contract.read_snapshot_reply(b'{"error": "no such table", "reason": "unknown_table"}')
    assert isinstance(reply, contract.SnapshotRefusal) and reply.reason in contract.REFUSALS


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[" * 50_000,
        b"[1, 2]",
        b'{"error": 5}',
        json.dumps({**META, "lsn": "not an lsn"}).encode(),
        json.dumps({**META, "row_count": -1}).encode(),
        json.dumps({k: v for k, v in META.items() if k != "snapshot_id"}).encode(),
    ],
)
def test_anything_else_is_a_clear_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not"):
        contract.read_snapshot_reply(data)


def test_a_heartbeat_header_is_a_number_of_seconds_from_1_to_60_or_nothing() -> None:
    """Anyone may send a snapshot request: a header that is not a sane interval asks for no
    interim messages rather than a flood or an error."""
    from pg_nats_bridge.contract import HEARTBEAT_HEADER, heartbeat_seconds

    assert heartbeat_seconds({HEARTBEAT_HEADER: "5"}) == 5.0
    assert heartbeat_seconds({HEARTBEAT_HEADER: "1"}) == 1.0
    assert heartbeat_seconds({HEARTBEAT_HEADER: "60"}) == 60.0
    for bad in ("0", "0.01", "61", "1e9", "-5", "nan", "inf", "abc", ""):
        assert heartbeat_seconds({HEARTBEAT_HEADER: bad}) is None, bad
    assert heartbeat_seconds(None) is None and heartbeat_seconds({}) is None
