"""The pgoutput decoder on bytes a real PostgreSQL sent, one message type family per test."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from pg_nats_bridge.contract import change_msg_id
from services.replicator import pgoutput as po
from services.replicator.protocol import (
    PrimaryKeepalive,
    XLogData,
    parse_copy_data,
    standby_status_update,
)
from shared.codec import UNCHANGED_TOAST, BinaryValue, RowCodec, ValueMode
from shared.lsn import Lsn
from shared.postgres import ReplicationConnection, pgoutput_options
from tests.harness.postgres import Database
from tests.integration import scenarios
from tests.integration.capture import create_slot, decode_all, max_proto

pytestmark = pytest.mark.realbytes


@pytest.fixture
def conn(pg: Database) -> Any:
    with pg.connect() as c:
        yield c


def kinds(messages: list[po.Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def codec_for(relation: po.Relation, mode: ValueMode = ValueMode.TYPED) -> RowCodec:
    return RowCodec(
        [c.name for c in relation.columns], [c.type_oid for c in relation.columns], mode
    )


def test_begin_relation_insert_update_delete_commit(conn: Any) -> None:
    msgs = decode_all(scenarios.dml(conn))
    assert kinds(msgs) == ["Begin", "Relation", "Insert", "Update", "Delete", "Commit"]
    begin, rel, ins, upd, dele, commit = msgs
    assert isinstance(begin, po.Begin) and isinstance(commit, po.Commit)
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert begin.xid > 0 and begin.commit_time == commit.commit_time
    assert isinstance(rel, po.Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "items", "d")
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    assert [c.type_oid for c in rel.columns] == [23, 25, 1700, 16, 17, 701, 3802, 25]
    codec = codec_for(rel)
    assert isinstance(ins, po.Insert) and ins.relation_oid == rel.oid and ins.xid is None
    assert codec.decode_values(ins.new) == {
        "id": 1,
        "name": "widget",
        "price": "9.99",
        "ok": True,
        "raw": b"\x00\xff",
        "ratio": 0.5,
        "doc": '{"a": [1, 2]}',
        "note": None,
    }
    assert isinstance(upd, po.Update) and upd.old is None and upd.old_kind is None
    assert codec.decode_values(upd.new)["name"] == "gadget"
    assert isinstance(dele, po.Delete) and dele.old_kind == "K"
    assert codec.decode_values(dele.old) == {"id": 1, **dict.fromkeys(codec.names[1:])}
    assert codec_for(rel, ValueMode.TEXT).decode_values(ins.new)["ok"] == "t"


def test_copy_rows_share_an_lsn_but_get_distinct_msg_ids(conn: Any) -> None:
    captured = scenarios.copy(conn, rows=1000)
    msgs = decode_all(captured)
    inserts = [(c, m) for c, m in zip(captured, msgs, strict=True) if isinstance(m, po.Insert)]
    assert len(inserts) == 1000
    # The seed's `{LSN}-{table}-{operation}` would collide: COPY writes multi-insert records.
    assert len({c.lsn for c, _ in inserts}) < 100
    commit = next(m for m in msgs if isinstance(m, po.Commit))
    assert len({change_msg_id(commit.commit_lsn, i) for i in range(len(inserts))}) == 1000
    rel = next(m for m in msgs if isinstance(m, po.Relation))
    rows = [codec_for(rel).decode_values(m.new) for _, m in inserts]
    assert rows[0] == {"id": 0, "label": "row 0"} and rows[-1] == {"id": 999, "label": "row 999"}


def test_unchanged_toast_column_is_marked_not_null(conn: Any) -> None:
    msgs = decode_all(scenarios.unchanged_toast(conn))
    assert kinds(msgs) == ["Begin", "Relation", "Update", "Commit"]
    rel, upd = msgs[1], msgs[2]
    assert isinstance(rel, po.Relation) and isinstance(upd, po.Update)
    assert upd.new[2] is UNCHANGED_TOAST
    row, unchanged = codec_for(rel).decode(upd.new)
    assert row == {"id": 1, "title": "second"} and unchanged == ["body"]


def test_replica_identity_full_sends_old_rows(conn: Any) -> None:
    msgs = decode_all(scenarios.replica_identity_full(conn))
    rel = next(m for m in msgs if isinstance(m, po.Relation))
    upd = next(m for m in msgs if isinstance(m, po.Update))
    dele = next(m for m in msgs if isinstance(m, po.Delete))
    assert rel.replica_identity == "f" and all(c.is_key for c in rel.columns)
    codec = codec_for(rel)
    assert upd.old_kind == "O" and upd.old is not None
    assert codec.decode_values(upd.old) == {"id": 1, "v": "a"}
    assert codec.decode_values(upd.new) == {"id": 1, "v": "b"}
    assert dele.old_kind == "O" and codec.decode_values(dele.old) == {"id": 1, "v": "b"}


def test_key_changing_update_sends_old_key(conn: Any) -> None:
    msgs = decode_all(scenarios.key_change(conn))
    rel = next(m for m in msgs if isinstance(m, po.Relation))
    upd = next(m for m in msgs if isinstance(m, po.Update))
    assert upd.old_kind == "K" and upd.old is not None
    assert codec_for(rel).decode_values(upd.old) == {"id": 1, "v": None}
    assert codec_for(rel).decode_values(upd.new) == {"id": 101, "v": "a"}


def test_truncate_of_several_tables(conn: Any) -> None:
    msgs = decode_all(scenarios.truncate(conn))
    truncates = [m for m in msgs if isinstance(m, po.Truncate)]
    relations = {m.oid: m.name for m in msgs if isinstance(m, po.Relation)}
    assert len(truncates) == 2
    first, second = truncates
    assert first.cascade and first.restart_identity
    assert sorted(relations[oid] for oid in first.relation_oids) == ["children", "parents"]
    assert second.options == 0
    assert [relations[oid] for oid in second.relation_oids] == ["loners"]


def test_logical_decoding_messages(conn: Any) -> None:
    msgs = decode_all(scenarios.messages(conn))
    assert kinds(msgs) == ["Begin", "LogicalMessage", "Commit", "LogicalMessage"]
    tx, plain = msgs[1], msgs[3]
    assert isinstance(tx, po.LogicalMessage) and isinstance(plain, po.LogicalMessage)
    assert tx.transactional and tx.prefix == "bridge" and tx.content == b"in a transaction"
    assert not plain.transactional and plain.content == b"\x00\x01\xff"
    assert tx.lsn > 0 and plain.lsn > tx.lsn


def test_type_message_precedes_relation_with_user_type(conn: Any) -> None:
    msgs = decode_all(scenarios.user_type(conn))
    assert kinds(msgs) == ["Begin", "Type", "Relation", "Insert", "Commit"]
    typ, rel, ins = msgs[1], msgs[2], msgs[3]
    assert isinstance(typ, po.Type) and isinstance(rel, po.Relation) and isinstance(ins, po.Insert)
    assert (typ.namespace, typ.name) == ("public", "mood")
    assert rel.columns[1].type_oid == typ.oid
    assert codec_for(rel).decode_values(ins.new) == {"id": 1, "m": "happy"}


def test_origin_message(pg: Database, conn: Any) -> None:
    msgs = decode_all(scenarios.origin(conn, pg.url))
    assert kinds(msgs) == ["Begin", "Origin", "Relation", "Insert", "Commit"]
    orig = msgs[1]
    assert isinstance(orig, po.Origin)
    assert orig.name == "upstream" and orig.origin_lsn == Lsn.parse("0/ABCDEF")


def test_binary_tuple_data(conn: Any) -> None:
    msgs = decode_all(scenarios.binary(conn))
    rel = next(m for m in msgs if isinstance(m, po.Relation))
    ins = next(m for m in msgs if isinstance(m, po.Insert))
    assert all(type(v) is BinaryValue for v in ins.new)
    assert codec_for(rel).decode_values(ins.new) == {
        "id": 7,
        "big": 9_000_000_000,
        "f": 2.5,
        "t": "txt",
    }


def test_streamed_in_progress_transactions(conn: Any) -> None:
    msgs = decode_all(scenarios.streamed(conn, rows=2000))
    counts = Counter(kinds(msgs))
    assert counts["StreamStart"] == counts["StreamStop"] > 3
    assert counts["Begin"] == 0  # every transaction here was streamed
    starts = [m for m in msgs if isinstance(m, po.StreamStart)]
    assert starts[0].first_segment and not all(s.first_segment for s in starts)
    rel = next(m for m in msgs if isinstance(m, po.Relation))
    assert rel.xid == starts[0].xid  # data messages inside a stream block carry the xid
    inserts = [m for m in msgs if isinstance(m, po.Insert)]
    commits = [m for m in msgs if isinstance(m, po.StreamCommit)]
    aborts = [m for m in msgs if isinstance(m, po.StreamAbort)]
    # A subtransaction's changes carry the subtransaction's own xid.
    assert {m.xid for m in inserts} == {s.xid for s in starts} | {a.subxid for a in aborts}
    assert len(commits) == 2
    # Decoded after the fact, a wholly aborted transaction is dropped unsent (PostgreSQL ≥ 16
    # checks the commit log first); the live test below streams one before its abort.
    partial = [a for a in aborts if a.subxid != a.xid]
    assert len(partial) == 1 and partial[0].xid == commits[1].xid
    if conn.info.server_version >= 160000:  # protocol 4, streaming 'parallel'
        assert all(a.abort_lsn is not None and a.abort_time for a in aborts)
    else:
        assert all(a.abort_lsn is None for a in aborts)
    assert commits[0].commit_lsn < commits[0].end_lsn


def read_messages_until(
    repl: ReplicationConnection, decoder: po.PgOutputDecoder, stop: type, timeout: float = 30
) -> list[po.Message]:
    """Decode walsender frames until a message of type `stop` arrived."""
    out: list[po.Message] = []
    deadline = time.monotonic() + timeout
    while not out or not isinstance(out[-1], stop):
        assert time.monotonic() < deadline, f"no {stop.__name__} within {timeout} s"
        raw = repl.read(0.5)
        if raw is not None and raw[:1] == b"w":
            frame = parse_copy_data(raw)
            assert isinstance(frame, XLogData)
            out.append(decoder.decode(frame.payload))
    return out


def test_stream_abort_of_a_transaction_streamed_while_in_progress(pg: Database, conn: Any) -> None:
    conn.execute("CREATE TABLE live (id int PRIMARY KEY, pad text)")
    conn.execute("CREATE PUBLICATION pub_live FOR TABLE live")
    create_slot(conn, "s_live")
    proto = max_proto(conn)
    with ReplicationConnection(pg.url) as repl, pg.connect() as writer:
        repl.command("SET logical_decoding_work_mem = '64kB'")
        options = pgoutput_options(
            ["pub_live"], proto, streaming="parallel" if proto >= 4 else "on"
        )
        repl.start_replication("s_live", Lsn(0), options)
        decoder = po.PgOutputDecoder()
        writer.execute("BEGIN")
        writer.execute(
            "INSERT INTO live SELECT g, repeat('p', 100) FROM generate_series(1, 3000) g"
        )
        (xid,) = writer.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        streamed = read_messages_until(repl, decoder, po.StreamStop)
        start = streamed[0]
        assert isinstance(start, po.StreamStart) and start.xid == xid and start.first_segment
        writer.execute("ROLLBACK")
        rest = read_messages_until(repl, decoder, po.StreamAbort)
        abort = rest[-1]
        assert isinstance(abort, po.StreamAbort) and abort.xid == abort.subxid == xid
        if proto >= 4:
            assert abort.abort_lsn is not None and abort.abort_lsn > 0 and abort.abort_time
        else:
            assert abort.abort_lsn is None


def test_two_phase_commit(conn: Any) -> None:
    msgs = decode_all(scenarios.two_phase(conn, rows=2000))
    names = kinds(msgs)
    assert names.count("BeginPrepare") == 2 and names.count("Prepare") == 2
    assert names.count("CommitPrepared") == 2 and names.count("RollbackPrepared") == 1
    assert names.count("StreamPrepare") == 1
    gids = {m.gid: m for m in msgs if isinstance(m, po.BeginPrepare)}
    assert set(gids) == {"g_commit", "g_rollback"}
    prep = next(m for m in msgs if isinstance(m, po.Prepare) and m.gid == "g_commit")
    done = next(m for m in msgs if isinstance(m, po.CommitPrepared) and m.gid == "g_commit")
    assert prep.xid == done.xid == gids["g_commit"].xid and prep.prepare_lsn < done.commit_lsn
    back = next(m for m in msgs if isinstance(m, po.RollbackPrepared))
    assert back.gid == "g_rollback" and back.rollback_time >= back.prepare_time
    sp = next(m for m in msgs if isinstance(m, po.StreamPrepare))
    assert sp.gid == "g_streamed"
    assert any(isinstance(m, po.CommitPrepared) and m.gid == "g_streamed" for m in msgs)


def test_walsender_frames_and_status_update(pg: Database, conn: Any) -> None:
    """XLogData and keepalive frames from a real walsender; the status update we send moves
    the slot's confirmed position."""
    conn.execute("CREATE TABLE framed (id int PRIMARY KEY)")
    conn.execute("CREATE PUBLICATION pub_frame FOR TABLE framed")
    create_slot(conn, "s_frame")
    conn.execute("INSERT INTO framed VALUES (1)")
    with ReplicationConnection(pg.url) as repl:
        assert repl.identify_system()["dbname"] == pg.name
        repl.start_replication("s_frame", Lsn(0), pgoutput_options(["pub_frame"]))
        decoder = po.PgOutputDecoder()
        frames: list[XLogData] = []
        deadline = time.monotonic() + 30
        while not any(isinstance(decoder.decode(f.payload), po.Commit) for f in frames[-1:]):
            assert time.monotonic() < deadline, "no Commit within 30 s"
            raw = repl.read(1.0)
            if raw is not None and raw[:1] == b"w":
                frame = parse_copy_data(raw)
                assert isinstance(frame, XLogData)
                frames.append(frame)
        decoder = po.PgOutputDecoder()
        msgs = [decoder.decode(f.payload) for f in frames]
        assert kinds(msgs) == ["Begin", "Relation", "Insert", "Commit"]
        commit = msgs[-1]
        assert isinstance(commit, po.Commit)
        assert frames[0].data_start <= commit.commit_lsn <= frames[-1].wal_end
        repl.send(standby_status_update(commit.end_lsn, commit.end_lsn, commit.end_lsn, reply=True))
        keepalive = None
        while keepalive is None:
            assert time.monotonic() < deadline, "no keepalive within 30 s"
            raw = repl.read(1.0)
            if raw is not None and raw[:1] == b"k":
                keepalive = parse_copy_data(raw)
        assert isinstance(keepalive, PrimaryKeepalive) and keepalive.wal_end >= commit.end_lsn
    for _ in range(100):
        (confirmed,) = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's_frame'"
        ).fetchone()
        if Lsn.parse(confirmed) == commit.end_lsn:
            break
        time.sleep(0.05)
    assert Lsn.parse(confirmed) == commit.end_lsn


def test_server_version_in_use(conn: psycopg.Connection[Any]) -> None:
    """Records which PostgreSQL produced the bytes (visible with -v)."""
    assert conn.info.server_version >= 150000
