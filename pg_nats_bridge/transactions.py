"""Where transactions end, for a consumer of some of the tables (docs/wire-format.md,
"Transactions"): a transaction's changes come first on the CDC stream, then its commit record
(`cdc.~commit`), which says how many changes each table got. So once the record arrives, the
consumer holds every change of that transaction for its tables, and a copy that commits only
there never shows part of a transaction.

Streams written before the bridge published commit records have none: there a transaction is
taken to end where a change of a later one arrives, or where the stream has nothing more (what
copies did before), said once in the log. A stream with records never ends a transaction
without one.

Also here: from when a copy is one consistent state. Tables loaded from snapshots taken at
different points hold different moments until CDC carries them all past the latest of those
points (a chunked snapshot's or a backfill's replay window included); the commit record of any
transaction at or past it (the snapshotter writes one after every snapshot, see
services/snapshotter/snapshot.py) says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pg_nats_bridge.changes import Committed, Item
from pg_nats_bridge.contract import CommitRecord
from pg_nats_bridge.lsn import Lsn

log = logging.getLogger("pg_nats_bridge.follower")


@dataclass
class _Open:
    """The transaction whose changes are being handed out."""

    commit_lsn: str
    received: dict[str, int]  # table token → its changes that arrived
    seq: int  # CDC sequence of its last change


class TransactionTracker:
    def __init__(self, tokens: dict[str, str], before_snapshot: Callable[[str, str], bool]) -> None:
        self.tokens = tokens  # table token → the copy's table name, of the followed tables
        # Whether a table's snapshot holds the change committed at an LSN already (a record of
        # such a transaction counts changes this copy passes over, or never read).
        self.before_snapshot = before_snapshot
        self.open: _Open | None = None
        self.ended_without_record: str | None = None  # the last one taken to end at idle
        self.records_seen = False  # the stream carries commit records (from some point on)
        self.said_no_records = False
        self.incomplete = 0  # transactions whose record counted changes that did not arrive
        # Until a record at or past this LSN arrives, the copy holds different moments of its
        # tables (None: it is one consistent state).
        self.consistent_from: Lsn | None = None
        self.held: set[str] = set()  # tables to be read again (`hold`)

    @property
    def at_boundary(self) -> bool:
        """Whether every change handed out belongs to a transaction that ended."""
        return self.open is None

    @property
    def consistent(self) -> bool:
        return self.consistent_from is None and not self.held

    def hold(self, table: str) -> None:
        """`table` is about to be read again (a schema change): the copy is not one state
        until it is loaded and CDC passes its point (`release`, then `until`)."""
        self.held.add(table)

    def release(self, table: str) -> None:
        self.held.discard(table)

    def until(self, lsn: Lsn) -> None:
        """The copy holds a moment at `lsn` of some table (a snapshot's point, the end of a
        replay window): it is one consistent state again once CDC reaches it."""
        if self.consistent_from is None or lsn > self.consistent_from:
            self.consistent_from = lsn

    def reset(self) -> None:
        """A new bootstrap: nothing is open."""
        self.open = None

    def change(self, token: str, commit_lsn: str, seq: int, out: list[Item]) -> None:
        """A change of a followed table arrives (before its item is handed out): a transaction
        open before it that has not ended has no record (an older stream), and ends first."""
        open_ = self.open
        if open_ is not None and open_.commit_lsn != commit_lsn:
            self._ended_without_record(out)
            open_ = None
        if open_ is None:
            self.open = _Open(commit_lsn, {token: 1}, seq)
            return
        open_.received[token] = open_.received.get(token, 0) + 1
        open_.seq = seq

    def record(self, record: CommitRecord, seq: int, out: list[Item]) -> None:
        """A commit record arrives: the open transaction, if it is the record's, ends here; any
        record may make the copy consistent."""
        self.records_seen = True
        open_ = self.open
        if open_ is not None and open_.commit_lsn != record.commit_lsn:
            self._ended_without_record(out)
            open_ = None
        became_consistent = self._reached(record.commit_lsn)
        if open_ is None:
            expected = {t: n for t, n in record.tables.items() if t in self.tokens}
            if expected and record.commit_lsn != self.ended_without_record:
                self._missing(record.commit_lsn, expected, {})
            if became_consistent and not self.held:
                out.append(Committed(record.commit_lsn, seq, consistent=True))
            return
        expected = {t: n for t, n in record.tables.items() if t in self.tokens}
        if expected != open_.received:
            self._missing(record.commit_lsn, expected, open_.received)
        self.open = None
        out.append(Committed(record.commit_lsn, seq, consistent=self.consistent))

    def idle(self, out: list[Item]) -> None:
        """The stream has nothing more for now: in a stream without records, that is where
        the open transaction ends (its record, in one with them, is on its way)."""
        if self.open is not None and not self.records_seen:
            self._ended_without_record(out)

    def _ended_without_record(self, out: list[Item]) -> None:
        open_ = self.open
        assert open_ is not None
        if not self.said_no_records:
            self.said_no_records = True
            log.warning(
                "the CDC stream has no commit record for the transaction at %s: it was written "
                "by a bridge that did not publish them, so transactions are taken to end where "
                "a later one begins (a copy may show part of a transaction until the stream "
                "carries commit records)",
                open_.commit_lsn,
            )
        self.open = None
        self.ended_without_record = open_.commit_lsn
        self._reached(open_.commit_lsn)
        out.append(Committed(open_.commit_lsn, open_.seq, consistent=self.consistent))

    def _reached(self, commit_lsn: str) -> bool:
        """Whether CDC at `commit_lsn` makes the copy one moment again (parsed only while it
        is not: once per transaction otherwise)."""
        if self.consistent_from is None or Lsn.parse(commit_lsn) < self.consistent_from:
            return False
        self.consistent_from = None
        return True

    def _missing(self, commit_lsn: str, expected: dict[str, int], got: dict[str, int]) -> None:
        """A record counts changes of the followed tables that did not all arrive: said, and
        counted (the stream lost them; `bridge verify` finds what differs)."""
        lacking = {
            t: n
            for t, n in expected.items()
            if got.get(t, 0) < n and not self.before_snapshot(self.tokens[t], commit_lsn)
        }
        if not lacking:
            return  # every change arrived, or the table's snapshot holds the transaction
        self.incomplete += 1
        log.error(
            "transaction %s: its commit record counts %s changes of the followed tables, %s "
            "arrived; the copy lacks the others (run bridge verify)",
            commit_lsn,
            {self.tokens[t]: n for t, n in expected.items()},
            {self.tokens.get(t, t): n for t, n in got.items()},
        )
