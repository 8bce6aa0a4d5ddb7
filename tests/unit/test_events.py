"""The event builder never publishes a change of a transaction PostgreSQL streamed before it
committed (pgoutput protocol 2+ with `streaming`): the replicator does not ask for it, and a
streamed transaction may still abort."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_nats_bridge import contract
from pg_nats_bridge.lsn import Lsn
from services.replicator import pgoutput as po
from services.replicator.events import EventBuilder, Outgoing, PublishedNames
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


RELID = 16384
COLUMNS = [(23, "id"), (20, "big"), (25, "note"), (16, "ok"), (701, "ratio"), (17, "raw")]


def _text(oid: int, value: object) -> bytes:
    """PostgreSQL's text output of `value` for the column type `oid`."""
    if oid == 16:
        return b"t" if value else b"f"
    if oid == 17:
        return b"\\x" + bytes(value).hex().encode()  # type: ignore[call-overload]
    if oid == 701:
        f = float(value)  # type: ignore[arg-type]
        if f != f:
            return b"NaN"
        if f in (float("inf"), float("-inf")):
            return b"Infinity" if f > 0 else b"-Infinity"
        return repr(f).encode()
    return str(value).encode()


def _tuple(values: list[object]) -> bytes:
    out = struct.pack("!H", len(values))
    for (oid, _), value in zip(COLUMNS, values, strict=True):
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            text = _text(oid, value)
            out += b"t" + struct.pack("!I", len(text)) + text
    return out


UNCHANGED = object()
_values = [
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
    st.booleans(),
    st.floats(),
    st.binary(max_size=40),
]
rows = st.tuples(*(st.one_of(st.none(), v) for v in _values)).map(list)


@given(
    operation=st.sampled_from(["insert", "update", "delete"]),
    new=rows,
    old=st.one_of(st.none(), rows),
    unchanged=st.sets(st.integers(1, len(COLUMNS) - 1)),
    xid=st.integers(1, 2**32 - 1),
    commit_lsn=st.integers(0x1000000, 2**40),
)
def test_the_hand_written_change_encodes_as_the_contract_model(
    operation: str,
    new: list[object],
    old: list[object] | None,
    unchanged: set[int],
    xid: int,
    commit_lsn: int,
) -> None:
    """services/replicator/events.py packs a change piece by piece for speed: its bytes are
    exactly `ChangeEvent`'s encoding of the same event, whatever the values."""
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    columns = b"".join(
        (b"\x01" if i == 0 else b"\x00") + name.encode() + b"\x00" + struct.pack("!Ii", oid, -1)
        for i, (oid, name) in enumerate(COLUMNS)
    )
    relation = (
        b"R" + struct.pack("!I", RELID) + b"public\x00t\x00f"
        + struct.pack("!H", len(COLUMNS)) + columns
    )  # fmt: skip
    begin = b"B" + struct.pack("!QqI", commit_lsn, 800_000_000_000_000, xid)
    if operation == "update":
        new = [UNCHANGED if i in unchanged else v for i, v in enumerate(new)]
    old_part = b"" if old is None else b"O" + _tuple(old)
    if operation == "insert":
        change = b"I" + struct.pack("!I", RELID) + b"N" + _tuple(new)
    elif operation == "update":
        change = b"U" + struct.pack("!I", RELID) + old_part + b"N" + _tuple(new)
    else:
        change = b"D" + struct.pack("!I", RELID) + (old_part or b"K" + _tuple(new))
    out: list[Outgoing] = []
    for lsn, payload in ((commit_lsn - 30, relation), (commit_lsn - 20, begin)):
        builder.feed(xlog(lsn, payload), out)
    builder.feed(xlog(commit_lsn - 10, change), out)
    (message,) = out
    event = contract.ChangeEvent.decode(message.payload)
    assert event.encode() == message.payload
    assert message.subject == contract.cdc_subject("public", "t", operation).encode()
    assert message.msg_id == contract.change_msg_id(Lsn(commit_lsn), 0).encode()
    assert event.xid == xid and event.operation == operation


def _relation(relid: int, schema: str, table: str) -> bytes:
    columns = b"\x01id\x00" + struct.pack("!Ii", 23, -1)
    return (
        b"R" + struct.pack("!I", relid) + schema.encode() + b"\x00" + table.encode() + b"\x00d"
        + struct.pack("!H", 1) + columns
    )  # fmt: skip


@given(
    changes=st.lists(st.sampled_from([0, 1, 2]), max_size=40),
    messages=st.integers(0, 3),
    xid=st.integers(1, 2**32 - 1),
    commit_lsn=st.integers(0x1000000, 2**40),
)
def test_a_transaction_ends_with_its_commit_record(
    changes: list[int], messages: int, xid: int, commit_lsn: int
) -> None:
    """After a transaction's last change comes its commit record (hand-packed: its bytes are
    `CommitRecord`'s encoding) with the changes per table and the transactional messages;
    a transaction that published nothing has none."""
    tables = [(16384, "public", "a"), (16385, "sales", "Big.Orders"), (16386, "public", "c")]
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    out: list[Outgoing] = []
    lsn = commit_lsn - 1000
    for relid, schema, table in tables:
        builder.feed(xlog(lsn, _relation(relid, schema, table)), out)
    builder.feed(xlog(lsn, b"B" + struct.pack("!QqI", commit_lsn, 800_000_000_000_000, xid)), out)
    for n, index in enumerate(changes):
        row = struct.pack("!H", 1) + b"t" + struct.pack("!I", 1) + b"7"
        builder.feed(xlog(lsn + n, b"I" + struct.pack("!I", tables[index][0]) + b"N" + row), out)
    for _ in range(messages):
        body = b"M\x01" + struct.pack("!Q", lsn) + b"audit\x00" + struct.pack("!I", 2) + b"hi"
        builder.feed(xlog(lsn, body), out)
    commit = b"C\x00" + struct.pack("!QQq", commit_lsn, commit_lsn + 8, 800_000_000_000_000)
    builder.feed(xlog(commit_lsn, commit), out)
    if not changes and not messages:
        assert out == []
        return
    *published, last = out
    assert len(published) == len(changes) + messages
    assert last.subject == contract.commit_subject().encode()
    assert last.msg_id == contract.commit_msg_id(str(Lsn(commit_lsn))).encode()
    record = contract.CommitRecord.decode(last.payload)
    assert record.encode() == last.payload
    expected: dict[str, int] = {}
    for index in changes:
        token = contract.table_token(*tables[index][1:])
        expected[token] = expected.get(token, 0) + 1
    assert record.tables == expected and record.messages == messages
    assert record.event_count == len(changes) + messages
    assert record.commit_lsn == str(Lsn(commit_lsn)) and record.xid == xid


def _shaped(relid: int, table: str, columns: list[tuple[str, int, int, bool]]) -> bytes:
    body = b"".join(
        bytes([int(key)]) + name.encode() + b"\x00" + struct.pack("!Ii", oid, modifier)
        for name, oid, modifier, key in columns
    )
    return (
        b"R" + struct.pack("!I", relid) + b"public\x00" + table.encode() + b"\x00d"
        + struct.pack("!H", len(columns)) + body
    )  # fmt: skip


def _transaction(
    builder: EventBuilder, commit_lsn: int, frames: list[bytes], out: list[Outgoing]
) -> None:
    builder.feed(xlog(commit_lsn - 100, b"B" + struct.pack("!QqI", commit_lsn, 8 * 10**14, 9)), out)
    for frame in frames:
        builder.feed(xlog(commit_lsn - 50, frame), out)
    commit = b"C\x00" + struct.pack("!QQq", commit_lsn, commit_lsn + 8, 8 * 10**14)
    builder.feed(xlog(commit_lsn, commit), out)


def _insert(relid: int, values: int) -> bytes:
    row = struct.pack("!H", values) + (b"t" + struct.pack("!I", 1) + b"7") * values
    return b"I" + struct.pack("!I", relid) + b"N" + row


def test_a_table_s_shape_is_announced_before_its_first_change_and_at_each_change() -> None:
    """The first description of a table in a run, and every one that differs, is a schema
    change before the change it precedes (not counted by the record); one that repeats the
    shape (an invalidation, a new session) is not; a renamed table is announced on its old
    name's subject too."""
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    out: list[Outgoing] = []
    shape = [("id", 23, -1, True), ("price", 1700, (12 << 16 | 2) + 4, False)]
    _transaction(builder, 0x1000, [_shaped(7, "t", shape), _insert(7, 2)], out)
    _transaction(builder, 0x2000, [_shaped(7, "t", shape), _insert(7, 2)], out)
    retyped = [shape[0], ("price", 1700, (12 << 16 | 1) + 4, False)]
    _transaction(builder, 0x3000, [_shaped(7, "t", retyped), _insert(7, 2)], out)
    _transaction(builder, 0x4000, [_shaped(7, "u", retyped), _insert(7, 2)], out)
    subjects = [m.subject.decode() for m in out]
    assert subjects == [
        "cdc.t.schema", "cdc.t.insert", "cdc.~commit",
        "cdc.t.insert", "cdc.~commit",
        "cdc.t.schema", "cdc.t.insert", "cdc.~commit",
        "cdc.u.schema", "cdc.t.schema", "cdc.u.insert", "cdc.~commit",
    ]  # fmt: skip
    first = contract.SchemaChange.decode(out[0].payload)
    assert first.encode() == out[0].payload
    assert [(c.name, c.type_modifier, c.key) for c in first.columns] == [
        ("id", -1, True),
        ("price", (12 << 16 | 2) + 4, False),
    ]
    assert first.version == first.lsn and first.source == "relation"
    assert out[0].msg_id == b"0/1000:schema:7:0"
    renamed = contract.SchemaChange.decode(out[9].payload)
    assert (renamed.table, out[9].msg_id) == ("u", b"0/4000:schema:7:0:was")
    assert out[8].msg_id == b"0/4000:schema:7:0"  # one Msg-Id per subject: none dropped
    records = [contract.CommitRecord.decode(m.payload) for m in out if b"~commit" in m.subject]
    assert [r.event_count for r in records] == [1, 1, 1, 1]


def test_a_replay_announces_no_shape_the_stream_may_lack_before_its_changes() -> None:
    """Transactions at or below what the stream holds are a replay: PostgreSQL describes a
    table once per session, so the first run may not have announced a shape there, and
    announcing it now would store it after changes that follow it."""
    builder = EventBuilder(ValueMode.TYPED, 1 << 20, replayed_through=0x2000)
    out: list[Outgoing] = []
    shape = [("id", 23, -1, True)]
    _transaction(builder, 0x2000, [_shaped(7, "t", shape), _insert(7, 1)], out)
    _transaction(builder, 0x3000, [_insert(7, 1)], out)
    other = [("id", 20, -1, True)]
    _transaction(builder, 0x4000, [_shaped(7, "t", other), _insert(7, 1)], out)
    assert [m.subject.decode() for m in out] == [
        "cdc.t.insert", "cdc.~commit", "cdc.t.insert", "cdc.~commit",
        "cdc.t.schema", "cdc.t.insert", "cdc.~commit",
    ]  # fmt: skip


def _ddl_message(tables: list[dict[str, Any]], publication: str = "bridge_pub") -> bytes:
    """The event trigger's logical message (at 0/F00) saying `tables`' shapes."""
    content = json.dumps(
        {"publication": publication, "command": "ALTER TABLE", "tables": tables}
    ).encode()
    return (
        b"M\x01" + struct.pack("!Q", 0xF00) + b"pg-nats-bridge.ddl\x00"
        + struct.pack("!I", len(content)) + content
    )  # fmt: skip


def test_the_ddl_message_is_a_schema_change_at_the_ddl() -> None:
    """The event trigger's message (services/replicator/ddl_capture.py) becomes a schema
    change of each table in it, for this publication only; it is not published itself."""
    builder = EventBuilder(ValueMode.TYPED, 1 << 20, publication="bridge_pub")
    out: list[Outgoing] = []
    table = {
        "oid": 7, "schema": "public", "table": "t", "replica_identity": "full",
        "rewritten": True,
        "columns": [{"name": "id", "type_oid": 23, "type_modifier": -1, "key": True}],
    }  # fmt: skip

    ours, another = _ddl_message([table]), _ddl_message([table], "another")
    _transaction(builder, 0x1000, [ours, another], out)
    assert [m.subject for m in out] == [b"cdc.t.schema"]  # nothing published: no record
    event = contract.SchemaChange.decode(out[0].payload)
    assert (event.source, event.rewritten, event.command) == ("ddl", True, "ALTER TABLE")
    assert (event.lsn, event.commit_lsn, event.replica_identity) == ("0/F00", "0/1000", "full")
    assert out[0].msg_id == b"0/1000:ddl:0/F00:7"
    broken = b"M\x01" + struct.pack("!Q", 0xF00) + b"pg-nats-bridge.ddl\x00" + b"\0\0\0\x02{x"
    out.clear()
    _transaction(builder, 0x2000, [broken], out)
    assert out == []  # said in the log; the next change says the shape


def test_a_table_renamed_before_its_first_change_of_the_run_is_said_on_its_old_name() -> None:
    """Without a change of the table before the rename in this run, its old name is the one
    the catalog had when the run began: used for a transaction after that position only (a
    backlog's earlier transactions may carry a name the catalog no longer had then). Alike
    whether logical decoding or the event trigger says the rename."""
    shape = [("id", 23, -1, True)]
    renamed = {
        "oid": 7, "schema": "public", "table": "u", "replica_identity": "default",
        "columns": [{"name": "id", "type_oid": 23, "type_modifier": -1, "key": True}],
    }  # fmt: skip
    names = PublishedNames({7: "t"}, at=0x1800)
    for frames in ([_shaped(7, "u", shape), _insert(7, 1)], [_ddl_message([renamed])]):
        subjects = []
        for commit_lsn in (0x1000, 0x2000):
            builder = EventBuilder(ValueMode.TYPED, 1 << 20, names=names)
            out: list[Outgoing] = []
            _transaction(builder, commit_lsn, frames, out)
            subjects.append([m.subject.decode() for m in out if m.subject.endswith(b".schema")])
        assert subjects == [["cdc.u.schema"], ["cdc.u.schema", "cdc.t.schema"]], frames
