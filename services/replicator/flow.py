"""Flow control between the reader and JetStream: a budget of WAL bytes in flight.

The reader spends budget for every frame it takes off the socket; the publisher gives it
back once JetStream acknowledged every message made from those frames. When the budget is
spent the reader stops reading, the socket fills, and PostgreSQL's walsender waits: memory
stays bounded by the budget whatever the transaction size or NATS's speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class InFlightBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self.on_room: Callable[[], None] | None = None
        """Called (on the thread giving back) when a give-back leaves room."""

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
        if self.on_room is not None and self._used < self.limit:
            self.on_room()

    def wait_until_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._used <= 0, timeout)
