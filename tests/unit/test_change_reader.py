"""`ChangeReader` (pg_nats_bridge/change_reader.py): what one CDC event asks of a copy, by the
rules of docs/wire-format.md, read from the very bytes the replicator publishes
(`contract.ChangeEvent.encode`)."""

from __future__ import annotations

from typing import Any

import pytest

from pg_nats_bridge import contract
from pg_nats_bridge.change_reader import ChangeReader, Reload
from pg_nats_bridge.changes import (
    Delete,
    Insert,
    Oversized,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)
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


# -- schema changes (docs/wire-format.md, "Schema changes") ------------------------------------

TYPED = [
    {"name": "id", "data_type": "integer", "type_oid": 23, "type_modifier": -1},
    {"name": "price", "data_type": "numeric", "type_oid": 1700, "type_modifier": 786438},
    {"name": "note", "data_type": "text", "type_oid": 25, "type_modifier": -1},
]


def typed_reader(columns: list[dict[str, Any]] | None = None) -> ChangeReader:
    changes = ChangeReader({"t": T})
    changes.schemas[T] = TableSchema.from_document(
        {"schema": T, "table": "t", "columns": columns or TYPED, "primary_key": ["id"]}
    )
    changes.reset({T: Lsn.parse("0/100")}, {})
    return changes


def shape(
    columns: list[tuple[str, int, int, bool]],
    *,
    table: str = "t",
    identity: str = "default",
    rewritten: bool = False,
    lsn: str = "0/200",
    **ddl: Any,
) -> bytes:
    return contract.SchemaChange(
        schema="public",
        table=table,
        lsn=lsn,
        commit_lsn=lsn,
        xid=7,
        commit_time="2026-12-07T00:00:00.000000Z",
        version=lsn,
        relation_oid=16384,
        columns=[
            contract.RelationColumn(name=n, type_oid=o, type_modifier=m, key=k)
            for n, o, m, k in columns
        ],
        replica_identity=identity,  # type: ignore[arg-type]
        rewritten=rewritten,
        **ddl,
    ).encode()


SAME = [("id", 23, -1, True), ("price", 1700, 786438, False), ("note", 25, -1, False)]
SUBJECT = b"cdc.t.schema"


def test_a_repeated_shape_asks_nothing() -> None:
    assert typed_reader().read(SUBJECT, 5, shape(SAME)) is None


def test_a_schema_change_the_snapshot_holds_asks_nothing() -> None:
    assert typed_reader().read(SUBJECT, 5, shape(SAME[:1], lsn="0/50")) is None


def test_columns_only_dropped_are_dropped_in_place() -> None:
    changes = typed_reader()
    got = changes.read(SUBJECT, 5, shape([SAME[0], SAME[2]]))
    assert isinstance(got, SchemaChanged)
    assert got.schema.columns == ("id", "note") and changes.schemas[T] is got.schema
    assert [c.type_oid for c in got.schema.document.columns] == [23, 25]
    assert changes.read(SUBJECT, 6, shape([SAME[0], SAME[2]])) is None  # now the same


@pytest.mark.parametrize(
    ("columns", "options", "why"),
    [
        ([*SAME, ("color", 25, -1, False)], {}, "columns"),  # added (a DEFAULT, maybe)
        ([SAME[0], ("title", 1700, 786438, False), SAME[2]], {}, "columns"),  # renamed
        ([SAME[0], ("price", 1700, 786437, False), SAME[2]], {}, "types"),  # scale 2 -> 1
        ([SAME[0], ("price", 23, -1, False), SAME[2]], {}, "types"),  # numeric -> int
        (SAME, {"rewritten": True}, "rewritten"),  # USING upper(note): same shape
        ([("id", 23, -1, True), ("price", 1700, 786438, True), SAME[2]], {}, "key"),
        ([(n, o, m, True) for n, o, m, _ in SAME], {"identity": "full"}, "replica identity"),
    ],
)
def test_anything_else_reads_the_table_again(
    columns: list[tuple[str, int, int, bool]], options: dict[str, Any], why: str
) -> None:
    changes = typed_reader()
    got = changes.read(SUBJECT, 5, shape(columns, **options))
    assert isinstance(got, Reload) and got.table == T and why in got.why
    assert (got.seq, got.commit_lsn) == (5, "0/200")
    # Until it is loaded again, the snapshot asked for holds the table's changes.
    assert changes.read(b"cdc.t.insert", 6, event("insert", "0/300", data={"id": 1})) is None


def test_a_document_without_types_reads_the_table_again_once() -> None:
    untyped = [{"name": c["name"], "data_type": c["data_type"]} for c in TYPED]
    got = typed_reader(untyped).read(SUBJECT, 5, shape(SAME))
    assert isinstance(got, Reload) and "types" in got.why


def test_a_renamed_table_leaves_the_copy() -> None:
    changes = typed_reader()
    got = changes.read(SUBJECT, 5, shape(SAME, table="u"))
    assert isinstance(got, TableFailed) and "renamed to public.u" in got.reason and got.dropped
    assert changes.read(b"cdc.t.insert", 6, event("insert", "0/300", data={"id": 1})) is None


@pytest.mark.parametrize(
    ("command", "said"), [("DROP TABLE", "dropped"), ("ALTER PUBLICATION", "taken out")]
)
def test_a_table_that_left_the_publication_leaves_the_copy(command: str, said: str) -> None:
    changes = typed_reader()
    gone = shape([], source="ddl", command=command, published=False)
    got = changes.read(SUBJECT, 5, gone)
    assert isinstance(got, TableFailed) and said in got.reason and got.dropped
    assert changes.read(b"cdc.t.insert", 6, event("insert", "0/300", data={"id": 1})) is None
    # Put back in the publication: read again from a snapshot.
    back = shape(SAME, source="ddl", command="ALTER PUBLICATION", lsn="0/400")
    again = changes.read(SUBJECT, 7, back)
    assert isinstance(again, Reload) and "published at 0/400" in again.why
    # A relation message, or another DDL, of a table left out asks nothing.
    assert typed_reader_left_out().read(SUBJECT, 5, shape(SAME)) is None
    other = shape(SAME, source="ddl", command="ALTER TABLE")
    assert typed_reader_left_out().read(SUBJECT, 5, other) is None


def typed_reader_left_out() -> ChangeReader:
    changes = typed_reader()
    changes.snapshots.pop(T)
    return changes


def test_a_row_filter_the_ddl_changed_reads_the_table_again() -> None:
    got = typed_reader().read(SUBJECT, 5, shape(SAME, source="ddl", row_filter="(id > 5)"))
    assert isinstance(got, Reload) and "row filter" in got.why
    unchanged = shape(SAME, source="ddl", command="ALTER TABLE")
    assert typed_reader().read(SUBJECT, 5, unchanged) is None
