"""Where transactions end for a copy of some tables (pg_nats_bridge/transactions.py): at their
commit record, counted per table; at the next transaction's first change or at the stream's
end in a stream written before records; and from when the copy is one moment."""

from __future__ import annotations

import logging

import pytest

from pg_nats_bridge import contract
from pg_nats_bridge.changes import Committed, Item
from pg_nats_bridge.lsn import Lsn
from pg_nats_bridge.transactions import TransactionTracker

TOKENS = {"a": "public.a", "b": "public.b"}


def record(lsn: str, **tables: int) -> contract.CommitRecord:
    counts = {**tables, "other": 1}  # and a table this copy does not follow
    return contract.CommitRecord(
        commit_lsn=lsn,
        xid=1,
        commit_time="2026-12-07T00:00:00.000000Z",
        event_count=sum(counts.values()),
        tables=counts,
    )


def tracker() -> TransactionTracker:
    return TransactionTracker(TOKENS, lambda table, lsn: False)


def test_a_transaction_ends_at_its_record_with_every_change_of_the_followed_tables() -> None:
    tx, out = tracker(), list[Item]()
    tx.change("a", "0/10", 1, out)
    tx.change("b", "0/10", 2, out)
    tx.change("a", "0/10", 4, out)
    assert out == [] and not tx.at_boundary
    tx.records_seen = True  # the stream has records: at its end the record is on its way
    tx.idle(out)
    assert out == [] and not tx.at_boundary
    tx.record(record("0/10", a=2, b=1), 5, out)
    assert out == [Committed("0/10", 5)] and tx.at_boundary and tx.incomplete == 0


def test_a_record_of_other_tables_ends_nothing_and_a_short_count_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tx, out = tracker(), list[Item]()
    tx.record(record("0/5"), 1, out)  # only a table this copy does not follow
    assert out == [] and tx.at_boundary
    tx.change("a", "0/10", 2, out)
    with caplog.at_level(logging.ERROR):
        tx.record(record("0/10", a=2), 3, out)  # one of a's two changes never arrived
    assert out == [Committed("0/10", 3)] and tx.incomplete == 1
    assert "counts {'public.a': 2} changes" in caplog.text


def test_without_records_a_transaction_ends_where_the_next_begins_or_the_stream_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tx, out = tracker(), list[Item]()
    with caplog.at_level(logging.WARNING):
        tx.change("a", "0/10", 1, out)
        tx.change("a", "0/10", 2, out)
        tx.change("b", "0/20", 3, out)
        tx.idle(out)
    assert out == [Committed("0/10", 2), Committed("0/20", 3)] and tx.at_boundary
    assert caplog.text.count("no commit record") == 1  # said once
    # Its record arriving after all (a first transaction split from it at the stream's end)
    # is no loss.
    tx.record(record("0/20", b=1), 4, out)
    assert tx.incomplete == 0


def test_the_copy_is_one_moment_from_the_first_record_past_every_snapshot() -> None:
    tx, out = tracker(), list[Item]()
    tx.until(Lsn.parse("0/100"))
    tx.until(Lsn.parse("0/80"))  # the latest counts
    tx.change("a", "0/90", 1, out)
    tx.record(record("0/90", a=1), 2, out)
    assert out == [Committed("0/90", 2, consistent=False)] and not tx.consistent
    tx.record(record("0/100"), 3, out)  # other tables only: it still says where CDC is
    assert out[-1] == Committed("0/100", 3, consistent=True) and tx.consistent


def test_changes_a_snapshot_holds_are_not_missing() -> None:
    before = {("public.a", "0/10")}
    tx = TransactionTracker(TOKENS, lambda table, lsn: (table, lsn) in before)
    out: list[Item] = []
    tx.record(record("0/10", a=5), 1, out)  # its changes were before the copy's start
    assert tx.incomplete == 0
