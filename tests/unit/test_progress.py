"""`Progress`, the one rule for the flushed LSN, driven through every interleaving hypothesis
finds of: the walsender's stream (transactions of real pgoutput framing, keepalives anywhere,
also mid-transaction, carrying positions up to what was sent), reads of any size, batches
handed on at any point, JetStream storing batches in order, PubAcks (`Acked`) delayed,
reordered, repeated or never sent, refusals, and restarts from the slot.

The invariant, after every step: the position the slot has confirmed never reaches the end of
a transaction with a change JetStream has not stored (PostgreSQL would then never send it
again). And the budget: what is charged is exactly what is in flight, and an idle pipeline
gets to confirm the server's position (so an idle slot does not hold WAL).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.replicator.flow import InFlightBudget
from services.replicator.progress import HELD_PER_FRAME, Progress
from shared.lsn import Lsn


def xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + payload


def begin(final_lsn: int, xid: int) -> bytes:
    return xlog(final_lsn, b"B" + struct.pack("!Qqi", final_lsn, 0, xid))


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return xlog(commit_lsn, b"C" + struct.pack("!bQQq", 0, commit_lsn, end_lsn, 0))


def insert(lsn: int) -> bytes:
    return xlog(lsn, b"I" + struct.pack("!I", 16384) + b"N\x00\x00")


@dataclass
class Transaction:
    number: int
    start: int  # where its first record is
    end: int  # its commit record's end
    frames: list[bytes] = field(default_factory=list)


@dataclass
class Item:
    """One CopyData message in the socket: a frame of transaction `tx`, or a keepalive."""

    frame: bytes | None = None
    tx: int = -1
    keepalive: int = 0


def make_wal(sizes: list[int], gaps: list[int]) -> list[Transaction]:
    """Transactions with `sizes[i]` changes each, other WAL (tables not published) between."""
    out, lsn = [], 0x1000
    for i, (size, gap) in enumerate(zip(sizes, gaps, strict=False)):
        lsn += gap
        start = lsn
        frames = [begin(start + 0x100 * (size + 1), 700 + i)]
        for k in range(size):
            frames.append(insert(start + 0x100 * (k + 1)))
        commit_lsn = start + 0x100 * (size + 1)
        end = commit_lsn + 0x30
        frames.append(commit(commit_lsn, end))
        out.append(Transaction(i, start, end, frames))
        lsn = end
    return out


class Bridge(RuleBasedStateMachine):
    """The walsender, the reader's use of `Progress`, the publisher and JetStream, modelled."""

    @rule(
        data=st.data(),
        sizes=st.lists(st.integers(0, 4), min_size=1, max_size=8),
        limit=st.sampled_from([1 << 20, 2500, 900]),
    )
    @precondition(lambda self: not hasattr(self, "wal"))
    def start(self, data: st.DataObject, sizes: list[int], limit: int) -> None:
        gaps = data.draw(st.lists(st.integers(0, 0x400), min_size=len(sizes), max_size=len(sizes)))
        self.wal = make_wal(sizes, gaps)
        self.limit = limit
        self.stored: set[int] = set()  # transactions whose every change JetStream stored
        self.slot = Lsn(0)  # the slot's confirmed position (what status updates said)
        self.restart()

    def restart(self) -> None:
        """A new pipeline: the server sends again every transaction ending after the slot."""
        self.budget = InFlightBudget(self.limit)
        self.progress = Progress(self.budget)
        self.socket: list[Item] = []
        self.sent_through = -1  # transactions queued in the socket so far
        for tx in self.wal:
            if tx.end > self.slot:
                break
            self.sent_through = tx.number
        self.gathering: list[Item] = []
        self.batches: list[list[Item]] = []  # handed on, by batch number
        self.jetstream_through = -1  # batches stored, in order
        self.acks_due: list[int] = []  # Acked messages the publisher sent, not yet delivered

    # -- the walsender -------------------------------------------------------------------------

    @rule()
    @precondition(lambda self: hasattr(self, "wal") and self.sent_through + 1 < len(self.wal))
    def server_sends_a_transaction(self) -> None:
        self.sent_through += 1
        tx = self.wal[self.sent_through]
        self.socket += [Item(frame=f, tx=tx.number) for f in tx.frames]

    @rule(data=st.data())
    @precondition(lambda self: hasattr(self, "wal"))
    def server_sends_a_keepalive(self, data: st.DataObject) -> None:
        """Anywhere, even between a transaction's frames: at most the end of what it sent
        (and the WAL of other tables after it, up to the next transaction)."""
        sent_end = self.wal[self.sent_through].end if self.sent_through >= 0 else 0x1000
        nxt = self.sent_through + 1
        ceiling = self.wal[nxt].start if nxt < len(self.wal) else sent_end + 0x400
        if self.socket and self.socket[-1].frame is not None:
            ceiling = sent_end  # in the middle of sending: no further than what is sent
        at = data.draw(st.integers(0, len(self.socket)))
        # A keepalive inside the socket's queue comes after the frames before it.
        before = [i.tx for i in self.socket[:at] if i.frame is not None]
        bound = self.wal[max(before)].end if before else self._delivered_end()
        top = max(0x1000, min(ceiling, max(bound, 0x1000)))
        # As far as it may go, mostly: the position most likely to expose a wrong rule.
        position = data.draw(st.one_of(st.just(top), st.integers(0x1000, top)))
        self.socket.insert(at, Item(keepalive=position))

    def _delivered_end(self) -> int:
        delivered = [i.tx for i in self.gathering] + [i.tx for b in self.batches for i in b]
        txs = [t for t in delivered if t >= 0]
        return self.wal[max(txs)].end if txs else 0x1000

    # -- the reader ----------------------------------------------------------------------------

    @rule(count=st.integers(1, 6))
    @precondition(lambda self: hasattr(self, "wal") and self.socket and self.progress.room > 0)
    def reader_reads(self, count: int) -> None:
        got, keepalives = [], []
        for item in self.socket[:count]:
            (got if item.frame is not None else keepalives).append(item)
        del self.socket[:count]
        if keepalives:
            pending = bool(self.gathering or got)
            self.progress.keepalive(Lsn(keepalives[-1].keepalive), frames_in_same_read=pending)
        if got:
            self.gathering += got
            self.progress.read([i.frame for i in got if i.frame is not None])

    @rule()
    @precondition(lambda self: hasattr(self, "wal") and self.gathering)
    def reader_hands_on_a_batch(self) -> None:
        batch_no, cost = self.progress.hand_on()
        assert batch_no == len(self.batches)
        assert cost == sum(len(i.frame or b"") + HELD_PER_FRAME for i in self.gathering)
        self.batches.append(self.gathering)
        self.gathering = []

    @rule()
    @precondition(lambda self: hasattr(self, "wal"))
    def reader_sends_a_status_update(self) -> None:
        self.slot = max(self.slot, self.progress.confirmed)

    # -- the publisher and JetStream -----------------------------------------------------------

    @rule()
    @precondition(
        lambda self: hasattr(self, "wal") and self.jetstream_through + 1 < len(self.batches)
    )
    def jetstream_stores_the_next_batch(self) -> None:
        self.jetstream_through += 1
        frames = self.batches[self.jetstream_through]
        for tx in {i.tx for i in frames}:
            tx_frames = self.wal[tx].frames
            stored_here = [
                i.frame for b in self.batches[: self.jetstream_through + 1] for i in b if i.tx == tx
            ]
            if len(stored_here) == len(tx_frames):
                self.stored.add(tx)

    @rule(data=st.data())
    @precondition(lambda self: hasattr(self, "wal") and self.jetstream_through >= 0)
    def publisher_sends_an_ack(self, data: st.DataObject) -> None:
        """For any stored batch: in order, late, twice, or one that a later one covers."""
        self.acks_due.append(data.draw(st.integers(0, self.jetstream_through)))

    @rule(data=st.data())
    @precondition(lambda self: hasattr(self, "wal") and self.acks_due)
    def an_ack_arrives(self, data: st.DataObject) -> None:
        batch_no = self.acks_due.pop(data.draw(st.integers(0, len(self.acks_due) - 1)))
        self.progress.acked(batch_no)

    @rule()
    @precondition(lambda self: hasattr(self, "wal"))
    def refusal_or_crash_restarts_from_the_slot(self) -> None:
        self.restart()

    # -- what must hold ------------------------------------------------------------------------

    @invariant()
    def nothing_unstored_is_ever_confirmed(self) -> None:
        if not hasattr(self, "wal"):
            return
        for position in (self.slot, self.progress.confirmed):
            for tx in self.wal:
                if tx.number not in self.stored:
                    assert position < tx.end, (
                        f"confirmed {position} reaches the end {tx.end:#x} of transaction "
                        f"{tx.number}, not stored"
                    )

    @invariant()
    def the_budget_holds_exactly_what_is_in_flight(self) -> None:
        if not hasattr(self, "wal"):
            return
        acked = self.progress.acked_batch
        in_flight = [b for n, b in enumerate(self.batches) if n > acked]
        charged = sum(len(i.frame or b"") + HELD_PER_FRAME for b in in_flight for i in b)
        assert self.budget.used == charged


TestProgress = Bridge.TestCase
TestProgress.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)


def test_an_idle_pipeline_confirms_the_servers_position() -> None:
    """Everything acknowledged and no transaction open: a keepalive's position is confirmed,
    so a slot whose tables are quiet follows a busy server."""
    progress = Progress(InFlightBudget(1 << 20))
    (tx,) = make_wal([2], [0])
    progress.read(tx.frames)
    batch_no, _ = progress.hand_on()
    progress.keepalive(Lsn(tx.end + 0x500), frames_in_same_read=False)
    assert progress.confirmed == Lsn(0)  # in flight: not yet
    progress.acked(batch_no)
    assert progress.confirmed == Lsn(tx.end)
    progress.keepalive(Lsn(tx.end + 0x500), frames_in_same_read=False)
    assert progress.confirmed == Lsn(tx.end + 0x500)
    assert progress.budget.used == 0


def test_a_batch_ending_mid_transaction_confirms_the_last_complete_one() -> None:
    progress = Progress(InFlightBudget(1 << 20))
    first, second = make_wal([1, 3], [0, 0x10])
    progress.read(first.frames + second.frames[:2])
    batch_no, _ = progress.hand_on()
    progress.acked(batch_no)
    assert progress.confirmed == Lsn(first.end)
    assert progress.in_transaction
    progress.keepalive(Lsn(second.end), frames_in_same_read=False)
    assert progress.confirmed == Lsn(first.end)  # the open transaction holds it
