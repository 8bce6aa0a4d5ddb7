"""Ending a worker thread that waits in PostgreSQL, when the task awaiting it is cancelled.

A thread cannot be interrupted, but the query it waits in can: PostgreSQL's cancel request
makes it fail at once, and the thread returns. The snapshotter runs blocking work in threads
(CREATE_REPLICATION_SLOT, which waits for every transaction running at that moment to end; the
table's lock and COPY, which wait behind a queued ALTER TABLE). Cancelled at shutdown without
this, such a task leaves its thread waiting, and the process cannot exit for as long as some
other session keeps its transaction open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often the cancel requests are sent again while the thread has not returned: a request
# that arrives between two queries cancels nothing, the next query would wait all the same.
_RESEND_SECONDS = 1.0

# Cancel requests are sent from threads of their own: the default executor's may all be taken
# by the very threads that wait in PostgreSQL.
_SENDERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-cancel")


class QueryCanceller:
    """The connections a worker thread is using, so another thread can cancel their queries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancels: list[Callable[[], None]] = []
        self.cancelled = False

    @contextlib.contextmanager
    def cancelling(self, cancel: Callable[[], None]) -> Iterator[None]:
        """While inside, `QueryCanceller.cancel` sends `cancel` (a connection's cancel request),
        at once if it was called before. Leave before closing the connection: leaving waits for
        a cancel request being sent, which must not meet a connection being closed."""
        with self._lock:
            self._cancels.append(cancel)
            cancelled = self.cancelled
        if cancelled:
            self._send(cancel)
        try:
            yield
        finally:
            with self._lock:
                self._cancels.remove(cancel)

    def cancel(self) -> None:
        """Cancel whatever the registered connections are running, now and when they join."""
        with self._lock:
            self.cancelled = True
            for cancel in self._cancels:
                self._send(cancel)

    @staticmethod
    def _send(cancel: Callable[[], None]) -> None:
        try:
            cancel()
        except Exception as exc:  # the connection may be gone already: nothing to cancel
            log.debug("cancel request failed: %s", exc)


async def finish_thread(thread: asyncio.Future[T], canceller: QueryCanceller) -> None:
    """Cancel the thread's queries until it has returned (its outcome is not asked for)."""
    while not thread.done():
        with contextlib.suppress(asyncio.CancelledError):  # cancelled again: finish all the same
            # A cancel request is a round trip to the server.
            await asyncio.get_running_loop().run_in_executor(_SENDERS, canceller.cancel)
            await asyncio.wait({thread}, timeout=_RESEND_SECONDS)
    if not thread.cancelled():
        thread.exception()  # retrieved: a cancelled query's error is expected, not news


async def run_cancellable(work: Callable[[], T], canceller: QueryCanceller) -> T:
    """`work()` in a worker thread. Cancelled, the queries it runs on connections registered
    with `canceller` are cancelled until it returns; then the cancellation goes on."""
    thread = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        await finish_thread(thread, canceller)
        raise
