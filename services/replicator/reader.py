"""WalReader: owns the replication connection. Reads frames, answers keepalives, sends the
position `Progress` (progress.py) says may be confirmed.

An actor on the publisher's event loop: it reads what the socket holds when the loop says it
is readable, a batch at a time, and gathers a batch for a linger on the loop's timers. Status
updates go out when the confirmed position moved (at most every 0.5 s), when the server asks,
and at least every `status_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from services.replicator import metrics
from services.replicator.failure import FailureSignal, reports_expected_failures
from services.replicator.flow import InFlightBudget
from services.replicator.loop_actor import LoopActor
from services.replicator.messages import Acked, Drain, Frames, Poll
from services.replicator.progress import Progress
from services.replicator.protocol import XLOG_DATA, keepalives, standby_status_update
from shared import failpoints
from shared.lsn import Lsn
from shared.postgres import ReplicationConnection

log = logging.getLogger(__name__)

_BATCH_FRAMES = 2000
# The linger (`batch_linger_seconds`): once PostgreSQL has sent all it had, a batch gathers
# for this long before it goes, and the socket is not read again before the next linger ends.
# Live traffic of small transactions otherwise makes every transaction a batch of its own, and
# the costs paid per batch (wake-ups, a socket write, a PubAck, cold code) then dominate: at 5k
# single-row tx/s, no linger cost 111 µs CPU per event; 2 ms 36 µs (p99 commit -> stored
# 3.3 ms), 5 ms 24 µs (6.7 ms), 10 ms 16 µs (11.8 ms), measured with three threads; with the
# actors on one loop, 10 ms costs 13-15 µs (docs/benchmarks.md).

_MIN_UPDATE_GAP = 0.5
_IDLE_PING_SECONDS = 1.0


class WalReader(LoopActor):
    """An actor on the publisher's event loop (as the decoder): it reads the libpq socket when
    the loop says it is readable and lingers on the loop's timers, so a batch costs no thread
    wake-up or GIL hand-over between reading, decoding and publishing. Only connecting, which
    can block for long, runs in a worker thread."""

    def __init__(
        self,
        database_url: str,
        slot: str,
        options: dict[str, str],
        decoder: pykka.ActorRef[Any],
        budget: InFlightBudget,
        failure: FailureSignal,
        status_interval: float,
        linger: float,
        loop: asyncio.AbstractEventLoop,
        loop_thread_id: int,
        open_stream: Callable[[], ReplicationConnection] | None = None,
    ) -> None:
        super().__init__()
        # The replication stream: a connection to the server, or a scripted one in tests.
        self.open_stream = open_stream or (
            lambda: ReplicationConnection(database_url, application_name=f"bridge:{slot}")
        )
        self.loop, self.loop_thread_id = loop, loop_thread_id
        self.linger = linger
        self.database_url = database_url
        self.slot = slot
        self.options = options
        self.decoder = decoder
        self.budget = budget
        self.progress = Progress(budget)
        self.failure = failure
        self.status_interval = status_interval
        self.conn: ReplicationConnection | None = None
        self.conn_lock = threading.Lock()  # the connecting thread against a stop
        self.reported = Lsn(0)
        self.last_update = 0.0
        self.draining = False
        self.last_ping = 0.0
        # The batch being gathered: frames read and not yet handed to the decoder.
        self.frames: list[bytes] = []
        self.linger_until = 0.0  # when the gathering batch goes, if the socket stays empty
        self.timer: asyncio.TimerHandle | None = None
        self.watched_fd: int | None = None  # the socket, while the loop watches it for us
        self.waiting_for_room = False

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        # Connecting can block for as long as the network takes: not on the loop (and in a
        # daemon thread, which a hung connection cannot keep the process alive for).
        threading.Thread(target=self._connect, name="reader-connect", daemon=True).start()

    def _connect(self) -> None:
        error: BaseException | None = None
        try:
            conn = self.open_stream()
            try:
                # 0/0: the server starts from the slot's confirmed position.
                conn.start_replication(self.slot, Lsn(0), self.options)
            except BaseException:
                conn.close()
                raise
            with self.conn_lock:
                if self.actor_stopped.is_set():
                    # Stopped while connecting: nobody will close it, and an open walsender
                    # connection keeps the slot busy for the next pipeline.
                    conn.close()
                    return
                self.conn = conn
        except Exception as exc:
            error = exc
        self.loop.call_soon_threadsafe(self._connected, error)

    def _connected(self, error: BaseException | None) -> None:
        # pykka only logs an exception raised in on_start; the supervisor must hear of it.
        if error is not None:
            self.failure.fail(error)
            return
        if self.actor_stopped.is_set():  # stopped meanwhile: on_stop closed the connection
            return
        metrics.connected.set(1)
        log.info("streaming from slot %s", self.slot)
        self._poll_soon()

    def on_stop(self) -> None:
        metrics.connected.set(0)
        self._unwatch()
        with self.conn_lock:  # a connection that arrives after this is closed by `_connect`
            if self.conn is not None:
                try:
                    if self.conn.streaming:
                        self._send_status(force=True)
                except Exception as exc:  # the connection may already be gone
                    log.debug("final status update failed: %s", exc)
                self.conn.close()

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        metrics.connected.set(0)
        self._unwatch()
        self.failure.fail(exc or RuntimeError("reader failed"))
        with self.conn_lock:
            if self.conn is not None:
                self.conn.close()

    @reports_expected_failures
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Poll):
            self._poll()
        elif isinstance(message, Acked):
            self._acked(message)
        elif isinstance(message, Drain):
            self.draining = True
            self._send_batch()  # read already: better confirmed than replayed
        return None

    # -- waking ---------------------------------------------------------------------------

    def _poll_soon(self, delay: float = 0.0) -> None:
        """One Poll, now or after `delay` (replacing any other timer)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if delay <= 0:
            self.actor_ref.tell(Poll())
        else:
            self.timer = self.loop.call_later(delay, self._wake)

    def _wake(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._unwatch()
        if self.actor_ref.is_alive():
            self.actor_ref.tell(Poll())

    def _room_back(self) -> None:
        """The budget has room again (an acknowledgement): read on if that was the wait."""
        if self.waiting_for_room and self.budget.used < self.budget.limit:
            self.waiting_for_room = False
            self._wake()

    def _watch(self, timeout: float) -> None:
        """Poll when the socket becomes readable, or after `timeout` (status duties)."""
        assert self.conn is not None
        if self.watched_fd is None:
            self.watched_fd = self.conn.fileno()
            self.loop.add_reader(self.watched_fd, self._wake)
        self._poll_soon(timeout)

    def _unwatch(self) -> None:
        if self.watched_fd is not None:
            self.loop.remove_reader(self.watched_fd)
            self.watched_fd = None

    # -- reading --------------------------------------------------------------------------

    def _poll(self) -> None:
        if self.failure.failed or self.conn is None:
            return
        self._unwatch()
        now = time.monotonic()
        if self.draining:
            self._send_status()
            self._poll_soon(0.05)
            return
        if self.budget.used >= self.budget.limit:
            # Room comes back when PubAcks arrive, on this loop (`_room_back`).
            self.waiting_for_room = True
            self._send_status()
            self._poll_soon(0.1)
            return
        emptied = self._read()
        if self.frames and (
            not emptied
            or len(self.frames) >= _BATCH_FRAMES
            or self.progress.room <= 0
            or now >= self.linger_until
        ):
            self._send_batch()
            if emptied:
                # The next batch gathers for a linger before the socket is read again: one
                # wake-up per batch, whatever the rate.
                self.linger_until = now + self.linger
                self._poll_soon(self.linger)
            else:
                self._poll_soon()
        elif self.frames:
            self._poll_soon(self.linger_until - now)  # gathering: the rest of the linger
        else:
            if now >= self.linger_until:
                self.linger_until = 0.0  # idle: the first frame to come starts a linger
            if self.progress.idle and now - self.last_ping > _IDLE_PING_SECONDS:
                # Ask the server where it is: its keepalive answer carries the WAL position we
                # may confirm while nothing is pending, so an idle slot follows a busy server.
                self.last_ping = now
                self._send_status(force=True, reply=True)
            self._watch(_IDLE_PING_SECONDS / 2)
        self._send_status()

    def _read(self) -> bool:
        """Add what the socket holds to the gathering batch; True when it was all read."""
        conn = self.conn
        assert conn is not None
        progress = self.progress
        started = not self.frames
        while len(self.frames) < _BATCH_FRAMES and progress.room > 0:
            got, other = conn.read_ready(_BATCH_FRAMES - len(self.frames), progress.room, XLOG_DATA)
            if other:
                # Order against the frames is not kept: with any in this batch, the
                # keepalives' position is not confirmed (a later one's will be).
                self._keepalives(other, pending_frames=bool(self.frames or got))
            if got:
                self.frames += got
                progress.read(got)
            elif not other:
                if started and self.frames and not self.linger_until:
                    # The first frames after a quiet spell: gather for a linger from now.
                    self.linger_until = time.monotonic() + self.linger
                return True
        return False

    def _send_batch(self) -> None:
        frames = self.frames
        if not frames:
            return
        self.frames = []
        metrics.wal_messages.inc(len(frames))
        batch_no, _ = self.progress.hand_on()
        metrics.in_flight_bytes.set(self.budget.used)
        self.decoder.tell(Frames(batch_no, frames))

    def _keepalives(self, raws: list[bytes], pending_frames: bool) -> None:
        """The walsender sends a keepalive each time it has sent all it had and waits for WAL
        (while the write position we reported is behind what it sent), so live traffic brings
        about one per transaction (measured: 44k keepalives for 60k single-row transactions).
        The last one's position may be confirmed (`Progress.keepalive` says), and any asking
        for a reply is answered."""
        wal_end, reply = keepalives(raws)
        self.progress.keepalive(wal_end, frames_in_same_read=pending_frames)
        if reply:
            self._send_status(force=True)

    # -- confirming -----------------------------------------------------------------------

    def _acked(self, message: Acked) -> None:
        self.progress.acked(message.batch_no)
        failpoints.hit("reader.after_acked")
        metrics.in_flight_bytes.set(self.budget.used)
        self._room_back()

    @property
    def confirmed(self) -> Lsn:
        return self.progress.confirmed

    def _send_status(self, force: bool = False, reply: bool = False) -> None:
        now = time.monotonic()
        moved = self.confirmed > self.reported
        due = now - self.last_update >= self.status_interval
        if not (force or due or (moved and now - self.last_update >= _MIN_UPDATE_GAP)):
            return
        assert self.conn is not None
        lsn = self.confirmed
        self.conn.send(standby_status_update(lsn, lsn, lsn, reply=reply))
        if lsn > self.reported:
            metrics.last_confirmed_at.set_to_current_time()
        self.reported = lsn
        self.last_update = now
        metrics.status_updates.inc()
        metrics.last_ack_lsn.set(int(lsn))
        failpoints.hit("reader.after_status")

    # -- queries (supervisor) -------------------------------------------------------------

    def drained(self) -> bool:
        return self.progress.all_acked

    def confirmed_lsn(self) -> Lsn:
        return self.confirmed

    def flush_status(self) -> Lsn:
        """Send the confirmed position now (shutdown)."""
        self._send_status(force=True)
        return self.confirmed
