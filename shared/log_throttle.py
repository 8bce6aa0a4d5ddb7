"""Log lines an outsider can cause, at most one per key every `every` seconds, with the count
of those not logged in between: a flood of bad requests must not become a flood of the log
(or of the disk behind it)."""

from __future__ import annotations

import logging
import time


class ThrottledLog:
    def __init__(self, log: logging.Logger, every: float = 10.0) -> None:
        self.log = log
        self.every = every
        self.last: dict[str, float] = {}
        self.unlogged: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """`message % args` with `(N like it since the last)` when some were held back."""
        now = time.monotonic()
        held = self.unlogged.get(key, 0)
        if now - self.last.get(key, -self.every) < self.every:
            self.unlogged[key] = held + 1
            return
        self.last[key], self.unlogged[key] = now, 0
        suffix = f" ({held} more like it in the last {self.every:g} s)" if held else ""
        self.log.warning(message + suffix, *args)
