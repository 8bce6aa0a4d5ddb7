"""The replicator's progress: what it read, what is in flight, what JetStream stored, and so the
one rule that decides the flushed LSN it may report to PostgreSQL.

The rule (docs/architecture.md, "Nothing lost"): the confirmed position only moves forward, and
only to
- the end of a transaction whose messages, and every earlier one's, JetStream stored: a batch
  is confirmed with the end of the last transaction it completes once it and every batch
  before it are acknowledged; or
- the server's WAL position from a keepalive, when nothing is pending at all (no frame read and
  not yet acknowledged, no transaction half read), so an idle publication on a busy server
  does not hold WAL back.

It also keeps the memory budget: every frame read is charged its bytes plus what its decoded
event holds (`HELD_PER_FRAME`) until its batch is acknowledged, and reading pauses while the
budget is spent (flow.py). The reader, the decoder and the publisher do no LSN arithmetic:
the reader tells this object what it read and what was acknowledged, and sends what it says.

Plain code, no I/O and no actor: its property tests (tests/unit/test_progress.py) drive it
through every interleaving of reads, keepalives, acknowledgements and restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from services.replicator.flow import InFlightBudget
from services.replicator.pgoutput import transaction_boundary
from shared.lsn import Lsn

# What a frame holds besides its bytes until JetStream acknowledged it: its bytes object, and
# the event decoded from it (payload, subject and Msg-Id, the object around them). Charged to
# the budget with the frame, so the budget bounds memory, not only WAL bytes: with the bytes
# alone, a 1M-row transaction's small rows let 16 MiB of frames become ~100 MB of events
# waiting for their PubAcks (peak RSS 142 MB; with this 65 MB, and faster).
HELD_PER_FRAME = 320


@dataclass(slots=True)
class _InFlight:
    batch_no: int
    cost: int
    commit_end: Lsn | None  # end of the last transaction the batch completes


class Progress:
    def __init__(self, budget: InFlightBudget) -> None:
        self.budget = budget
        self.confirmed = Lsn(0)  # 0/0: nothing yet; the server starts from the slot's position
        self.in_transaction = False
        self.next_batch = 0
        self.acked_batch = -1
        self.in_flight: deque[_InFlight] = deque()
        # The batch being gathered: frames read, not yet handed on.
        self.gathering = 0  # frames
        self.gathering_cost = 0
        self.gathering_commit_end: Lsn | None = None

    # -- reading ------------------------------------------------------------------------------

    @property
    def room(self) -> int:
        """Budget left for reading more (bytes)."""
        return self.budget.limit - self.budget.used - self.gathering_cost

    def read(self, frames: list[bytes]) -> None:
        """XLogData frames read (in WAL order), joining the batch being gathered."""
        self.gathering += len(frames)
        self.gathering_cost += sum(map(len, frames)) + HELD_PER_FRAME * len(frames)
        in_transaction, commit_end = transaction_boundary(frames)
        if in_transaction is not None:
            self.in_transaction = in_transaction
        if commit_end is not None:
            self.gathering_commit_end = commit_end

    def hand_on(self) -> tuple[int, int]:
        """The gathered frames go to the decoder as one batch: its number and its cost, now
        charged to the budget until the batch is acknowledged."""
        batch_no, cost = self.next_batch, self.gathering_cost
        self.in_flight.append(_InFlight(batch_no, cost, self.gathering_commit_end))
        self.budget.spend(cost)
        self.next_batch += 1
        self.gathering = self.gathering_cost = 0
        self.gathering_commit_end = None
        return batch_no, cost

    # -- what the server and JetStream say -----------------------------------------------------

    def acked(self, batch_no: int) -> None:
        """JetStream stored every message of batch `batch_no` and of every batch before it
        (the publisher's chain proves the earlier ones); a stale or repeated one changes
        nothing."""
        if batch_no <= self.acked_batch:
            return
        self.acked_batch = batch_no
        done = 0
        while self.in_flight and self.in_flight[0].batch_no <= batch_no:
            batch = self.in_flight.popleft()
            done += batch.cost
            if batch.commit_end is not None and batch.commit_end > self.confirmed:
                self.confirmed = batch.commit_end
        if done:
            self.budget.give_back(done)

    def keepalive(self, wal_end: Lsn, frames_in_same_read: bool) -> None:
        """The server's WAL position: confirmable when nothing at all is pending. Frames read
        with it count as pending, since their order against it is not kept."""
        if not frames_in_same_read and self.idle and wal_end > self.confirmed:
            self.confirmed = wal_end

    @property
    def idle(self) -> bool:
        """Nothing read that JetStream has not stored, and no transaction half read."""
        return not self.gathering and not self.in_transaction and not self.in_flight

    @property
    def all_acked(self) -> bool:
        return not self.in_flight
