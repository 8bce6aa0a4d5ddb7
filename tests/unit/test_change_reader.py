"""`ChangeReader` (pg_nats_bridge/change_reader.py): what one CDC event asks of a copy, by the
rules of docs/wire-format.md, read from the very bytes the replicator publishes
(`contract.ChangeEvent.encode`)."""

from __future__ import annotations

from typing import Any

import pytest

from pg_nats_bridge import contract
from pg_nats_bridge.change_reader import ChangeReader
from pg_nats_bridge.changes import Delete, Insert, Oversized, TableSchema, Truncate, Update
from pg_nats_bridge.follow_errors import FollowError, Undecodable
from pg_nats_bridge.lsn import Lsn

T = "public.t"


def reader(key: list[str] | None = None) -> ChangeReader:
    changes = ChangeReader({"t": T})
    changes.schemas[T] = TableSchema.from_document(
        {
            "schema": T,
            "columns": [{"name": "id", "data_type": "integer"}, {"name": "v"}],
            "primary_key": ["id"] if key is None else key,
        }
    )
    changes.reset({T: Lsn.parse("0/100")}, {})
    return changes


def event(op: str, lsn: str = "0/200", **fields: Any) -> bytes:
    body = {
        "operation": op,
        "table": "t",
        "schema": "public",
        "lsn": lsn,
        "commit_lsn": lsn,
        "xid": 7,
        "ordinal": 0,
        "commit_time": "2026-12-07T00:00:00.000000Z",
        "data": None,
        "old": None,
        "unchanged": [],
        **fields,
    }
    return contract.ChangeEvent.model_validate(body).encode()


def subject(op: str) -> bytes:
    return contract.cdc_subject("public", "t", op).encode()


def test_each_operation_becomes_its_change() -> None:
    changes = reader()
    insert = changes.read(subject("insert"), 1, event("insert", data={"id": 1, "v": "a"}))
    assert isinstance(insert, Insert) and insert.row == {"id": 1, "v": "a"} and insert.seq == 1
    update = changes.read(
        subject("update"), 2, event("update", data={"id": 2, "v": "b"}, old={"id": 1})
    )
    assert isinstance(update, Update) and update.match == {"id": 1}
    assert update.row == {"id": 2, "v": "b"}  # a key change says which row it replaces
    delete = changes.read(subject("delete"), 3, event("delete", old={"id": 2}))
    assert isinstance(delete, Delete) and delete.match == {"id": 2}
    assert isinstance(changes.read(subject("truncate"), 4, event("truncate")), Truncate)
    assert changes.last_commit_time == "2026-12-07T00:00:00.000000Z"


def test_a_change_the_snapshot_holds_is_passed_over() -> None:
    changes = reader()
    assert changes.read(subject("insert"), 1, event("insert", "0/FF", data={"id": 1})) is None
    assert changes.read(subject("insert"), 2, event("insert", "0/100", data={"id": 1}))


def test_a_table_without_a_key_is_matched_on_its_old_row() -> None:
    changes = reader(key=[])
    update = changes.read(
        subject("update"), 1, event("update", data={"id": 1, "v": "b"}, old={"id": 1, "v": "a"})
    )
    assert isinstance(update, Update) and update.match == {"id": 1, "v": "a"}
    with pytest.raises(FollowError, match="REPLICA IDENTITY FULL"):
        changes.read(subject("delete"), 2, event("delete", old=None))


def test_a_replay_window_closes_at_the_first_change_past_it() -> None:
    changes = reader()
    changes.open_window(T, Lsn.parse("0/300"))
    first = changes.read(subject("insert"), 5, event("insert", "0/200", data={"id": 1}))
    past = changes.read(subject("insert"), 6, event("insert", "0/300", data={"id": 2}))
    later = changes.read(subject("insert"), 7, event("insert", "0/250", data={"id": 3}))
    assert isinstance(first, Insert) and first.replay
    assert isinstance(past, Insert) and not past.replay
    assert isinstance(later, Insert) and not later.replay  # closed for good
    assert changes.windows(5) == {T: "0/300"} and changes.windows(6) == {}


def test_oversized_markers_and_foreign_subjects() -> None:
    changes = reader()
    marker = contract.OversizedMarker.model_validate(
        {
            "operation": "insert",
            "table": "t",
            "schema": "public",
            "lsn": "0/200",
            "commit_lsn": "0/200",
            "xid": 7,
            "ordinal": 0,
            "commit_time": "2026-12-07T00:00:00.000000Z",
            "size": 2_000_000,
            "key": {"id": 9},
            "max_payload": 1_048_576,
        }
    )
    found = changes.read(contract.oversized_subject("t").encode(), 1, marker.encode())
    assert isinstance(found, Oversized)
    for foreign in (b"cdc.other.insert", b"elsewhere.t.insert", contract.message_subject("x")):
        with pytest.raises(KeyError):
            changes.route(foreign if isinstance(foreign, bytes) else foreign.encode())
    with pytest.raises(Undecodable):
        changes.read(subject("insert"), 1, b"\xc1 not msgpack")
