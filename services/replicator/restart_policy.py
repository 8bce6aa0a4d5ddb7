"""What the replicator does after its pipeline failed: stop, or start it again, when.

A permanent failure stops the process (an operator must act: retrying is a crash loop). A slot
another replicator streams from is asked for again every second (a standby replicator waits
like this for as long as the active one runs). Anything else restarts the pipeline from the
slot's confirmed position: after a backoff against servers that answer (whatever failed may
fail again at once), but as soon as they answer again while they do not (PostgreSQL down or a
standby not yet promoted, the CDC stream without a leader), however long that takes. Which
failure is which is services/replicator/errors.py's to say.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from services.replicator.errors import Failure, classify
from services.replicator.settings import ReplicatorSettings
from shared import postgres
from shared.nats_connection import NatsRefused, NatsUnavailable, connect

log = logging.getLogger("bridge.replicator")

HEALTHY_RESET_SECONDS = 30.0  # a pipeline up this long resets the backoff
SLOT_BUSY_RETRY_SECONDS = 1.0
# While PostgreSQL does not accept writes or the CDC stream does not answer, one attempt this
# often tells when they do again (a failover manager may take any time to promote a standby;
# a stream elects a leader in seconds). A probe's JetStream request waits at most
# PROBE_TIMEOUT.
PROBE_SECONDS = 0.5
PROBE_TIMEOUT = 1.0
# After JetStream left a pipeline's start unanswered: the most time spent probing before
# trying again anyway.
ANSWER_WAIT_SECONDS = 30.0


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


@dataclass(frozen=True)
class Restart:
    """What comes after a failure: `failure` says which; `delay` the most to wait (0: until
    the servers answer)."""

    failure: Failure
    delay: float

    @property
    def stop(self) -> bool:
        return self.failure is Failure.PERMANENT

    def described(self) -> str:
        return f"in {self.delay:.1f} s" if self.delay else "once the CDC stream answers"


class RestartPolicy:
    def __init__(
        self,
        settings: ReplicatorSettings,
        stop_requested: threading.Event,
        on_standby: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.stop_requested = stop_requested
        self.on_standby = on_standby  # the slot lives on a hot standby: recovery is expected
        self.backoff = Backoff()

    def healthy_for(self, seconds: float) -> None:
        """The running pipeline has been up `seconds`."""
        if seconds > HEALTHY_RESET_SECONDS:
            self.backoff.reset()

    def after(self, exc: BaseException, made_progress: bool) -> Restart:
        """What to do about `exc`. `made_progress`: the pipeline published since it started,
        so this failure is a new incident, not the same one again (faults close together
        would otherwise stretch each stall with the backoff)."""
        failure = classify(exc)
        if made_progress:
            self.backoff.reset()
        if failure is Failure.PERMANENT:
            return Restart(failure, 0.0)
        if failure is Failure.SLOT_BUSY:
            return Restart(failure, SLOT_BUSY_RETRY_SECONDS)
        if failure is Failure.UNANSWERED and not made_progress:
            # A stream electing a leader, or a server just back and not yet current: again as
            # soon as the probes get an answer (a new connection, perhaps to another server).
            return Restart(failure, 0.0)
        return Restart(failure, self.backoff.next())

    def wait(self, restart: Restart) -> None:
        """Wait before the restart (or less, once the servers answer again)."""
        if restart.failure is Failure.SLOT_BUSY:
            # Both servers answer: no probes (a standby replicator asks every second for as
            # long as it waits).
            self.stop_requested.wait(restart.delay)
            return
        self._wait_until_answering(restart.delay)

    def _wait_until_answering(self, delay: float) -> None:
        """Wait `delay`, or less when what the pipeline needs was missing and is back (a
        `delay` of 0: until it is back, at most ANSWER_WAIT_SECONDS).

        While PostgreSQL does not accept writes or the CDC stream does not answer, the servers
        are asked every PROBE_SECONDS instead (one connection attempt each, refused at once by
        a server that is down) and the pipeline restarts as soon as both answer."""
        deadline = time.monotonic() + (delay or ANSWER_WAIT_SECONDS)
        if self._postgres_writable() and self._stream_answers():
            self.stop_requested.wait(delay if delay else PROBE_SECONDS)
            return
        while not self.stop_requested.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop_requested.wait(min(PROBE_SECONDS, left))
            if self._postgres_writable() and self._stream_answers():
                log.info("PostgreSQL accepts writes and the CDC stream answers: restarting now")
                return

    def _stream_answers(self) -> bool:
        """The CDC stream answers an info request (it has a leader), within a second."""

        async def ask() -> bool:
            try:
                nc = await connect(self.settings, "bridge-replicator-probe")
            except (NatsUnavailable, NatsRefused):
                return False
            try:
                await nc.jetstream(timeout=PROBE_TIMEOUT).stream_info(self.settings.cdc_stream)
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        return asyncio.run(ask())

    def _postgres_writable(self) -> bool:
        """A server of the database URL (libpq picks it, `target_session_attrs` included)
        accepts connections and is not in recovery (or is, when the bridge decodes on a
        standby)."""
        try:
            with postgres.connect(
                self.settings.database_dsn(),
                autocommit=True,
                connect_timeout=2,
                application_name="bridge-replicator-probe",
            ) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return False
        return row is not None and (row[0] is False or self.on_standby())
