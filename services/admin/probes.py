"""What the admin reports about others, fetched once for any number of callers.

The admin's read endpoints are open to whoever reaches its port, so what a request costs the
systems behind it must not grow with the request rate. Each probe (PostgreSQL's check, a
service's /health or /metrics, the streams' state) is a `SharedProbe`: a result younger than
`max_age` is served as is; otherwise one fetch runs and every caller awaits it. The fetch is a
task of its own, shielded from the callers: a client that gives up mid-request cancels only
its wait, never the fetch (cancelled fetches left httpx's pool full of connections stuck
connecting, after which every probe failed and the admin reported its services dead while
they answered in a millisecond). So 500 parallel `/health` requests open one PostgreSQL
connection, not 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedProbe(Generic[T]):
    def __init__(self, fetch: Callable[[], Awaitable[T]], max_age: float) -> None:
        self.fetch = fetch
        self.max_age = max_age
        self.value: T | None = None
        self.fetched_at = float("-inf")
        self.running: asyncio.Task[T] | None = None

    async def get(self) -> T:
        """The latest result, fetched now if it is older than `max_age`."""
        if self.value is not None and time.monotonic() - self.fetched_at < self.max_age:
            return self.value
        if self.running is None:
            self.running = asyncio.create_task(self._refresh())
        return await asyncio.shield(self.running)

    async def _refresh(self) -> T:
        try:
            value = await self.fetch()
            self.value, self.fetched_at = value, time.monotonic()
            return value
        finally:
            self.running = None

    def cancel(self) -> None:
        if self.running is not None:
            self.running.cancel()
