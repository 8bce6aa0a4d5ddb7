"""The follower's pull requests on the CDC stream, each marked with the stream's last
sequence (pg_nats_bridge/pull.py reads the answers): when a marked request ends with nothing
pending, every event of the followed tables up to its marker has been delivered (`Idle`), and
the position may move past other tables' events there.

Before each marked request the stream's state is read, and checked (`lacks`) against the last
message received: a stream that lost messages since then cannot be followed on. The read is
answered while what arrived before is applied, and with a backlog larger than the requests the
next ones go out at once, unmarked (a request waiting for the read cost a backlog 15-20% of its
rate).

A marked request asks for what is pending, at least `MARKED_BATCH`: a copy that keeps up gets
a marker, and so a consistent point (`CaughtUp`), each time such a request is used up, where
one of the puller's full size would last a second or more (`bridge replica` under pgbench at
8,200-8,700 events/s: its committed position lagged a median 3,400 events, at most 4,500,
with every request of 16,000; 1,200, at most 3,200, with marked ones of the pending); a
backlog is pulled in full-size requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from pg_nats_bridge.pull import Delivery, Idle, Puller, PullError

MARKED_BATCH = 2000


class StreamLacks(Exception):
    """The stream cannot give every message after the last one received: why."""


class MarkedPull:
    def __init__(
        self,
        puller: Puller,
        js: JetStreamContext,
        stream: str,
        idle_seconds: float,
        lacks: Callable[[StreamInfo, int], str | None],
    ) -> None:
        self.puller, self.js, self.stream = puller, js, stream
        self.idle_seconds = idle_seconds
        self.lacks = lacks  # why the stream cannot give every message after a sequence
        self._state: asyncio.Task[StreamInfo] | None = None  # the stream's, being read
        self._state_after = 0  # the last message received when it was asked for
        self._unchecked = False  # a request went out since the last read of the state

    async def take(self, received: int, pending: int) -> list[Delivery | Idle]:
        """What arrives next, after sending the requests due: `received` is the sequence of
        the last message received, `pending` what the consumer holds beyond it."""
        puller = self.puller
        if puller.wants_request() and pending > puller.outstanding * puller.batch:
            # These requests are filled entirely whatever the stream holds: no marker to wait
            # for (its answer queues behind the messages already sent).
            while puller.wants_request():
                await puller.request()
            self._unchecked = True
        if self._state is None and (self._unchecked or puller.wants_request()):
            self._state = asyncio.ensure_future(self.js.stream_info(self.stream))
            self._state.add_done_callback(lambda _: puller.arrived.set())
            self._state_after, self._unchecked = received, False
        if self._state is not None and self._state.done():
            info, self._state = self._state.result(), None
            why = self.lacks(info, self._state_after)
            if why is not None:
                raise StreamLacks(why)
            while puller.wants_request():
                await puller.request(info.state.last_seq, max(MARKED_BATCH, pending))
        arrived = await puller.take(self.idle_seconds)
        if not arrived and puller.silent_for() > 3 * self.idle_seconds + 5:
            raise PullError(
                f"no answer to pull requests on {self.stream} for {puller.silent_for():.0f} s; "
                "reading again from the stored position"
            )
        return arrived

    async def stop(self) -> None:
        if self._state is not None:
            self._state.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._state
        await self.puller.stop()
