"""Flow control between the reader and JetStream: a budget of WAL bytes in flight.

The reader spends budget for every batch of frames it hands on and gives it back once
JetStream acknowledged every message made from them (progress.py keeps the account). When the
budget is spent the reader stops reading, the socket fills, and PostgreSQL's walsender waits:
memory stays bounded by the budget whatever the transaction size or NATS's speed. Thread-safe:
the supervisor waits on it (`wait_until_empty`) from its own thread at shutdown.
"""

from __future__ import annotations

import threading


class InFlightBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def spend(self, amount: int) -> None:
        with self._cond:
            self._used += amount

    def give_back(self, amount: int) -> None:
        with self._cond:
            self._used -= amount
            self._cond.notify_all()

    def wait_until_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._used <= 0, timeout)
