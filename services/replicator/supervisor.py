"""Runs the replicator: setup, the pipeline, restarts with backoff, telemetry, shutdown.

Exit codes: 0 after a graceful shutdown (signal or control request), 2 on a permanent error
(the log's last line says what to fix).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

import psycopg

from pg_nats_bridge.contract import control_subject
from services.replicator import metrics
from services.replicator.errors import Failure, PermanentError, TransientError, explain
from services.replicator.pipeline import Pipeline
from services.replicator.publisher import START_API_TIMEOUT
from services.replicator.restart_policy import RestartPolicy
from services.replicator.settings import ReplicatorSettings
from services.replicator.setup import prepare
from shared import postgres, slots
from shared.control import ControlEndpoint
from shared.http_endpoint import serve
from shared.lsn import Lsn
from shared.nats_connection import NatsRefused, NatsUnavailable, connect
from shared.pg_cancel import QueryCanceller
from shared.provisioning import ProvisioningError, ensure_cdc_stream, provision
from shared.redact import redact
from shared.tables import TableName

log = logging.getLogger("bridge.replicator")


class Replicator:
    def __init__(self, settings: ReplicatorSettings) -> None:
        self.settings = settings
        self.stop_requested = threading.Event()
        # Ends a start-up query that waits (creating the slot waits for every transaction
        # open at that moment): a stop must not wait for some other session to commit.
        self.setup_canceller = QueryCanceller()
        self.pipeline: Pipeline | None = None
        self.running = False
        self.on_standby = False  # the slot lives on a hot standby (services/replicator/standby.py)
        self.table_oids: dict[TableName, int] = {}  # the configured tables at first start
        self.secrets = settings.secrets()
        self.restarts = 0
        self.last_error: dict[str, str] | None = None  # {"at": ISO time, "error": why}
        self.refused: dict[str, str] = {}  # configured tables left out at the last setup
        self.policy = RestartPolicy(settings, self.stop_requested, lambda: self.on_standby)

    # -- health and telemetry -------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Up or not, and what happened meanwhile: how often the pipeline restarted and the
        last reason (a NATS failover, a PostgreSQL restart…), so a blip shows after it."""
        ok = self.running and self.pipeline is not None and not self.pipeline.failure.failed
        return ok, {
            "connected": ok,
            "slot": self.settings.slot,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "tables_refused": self.refused,
        }

    def _shown(self, text: str) -> str:
        """`text` as it may be logged: no part of the database password in it."""
        return redact(text, *self.secrets)

    def _check_slot(self) -> None:
        url = self.settings.database_dsn()
        try:
            with postgres.connect(url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(slots.SLOT_ACTIVITY, (self.settings.slot,)).fetchone()
        except psycopg.Error as exc:
            metrics.slot_active.set(0)  # unknown counts as inactive: nothing reads it from here
            log.warning("slot check failed: %s", self._shown(str(exc).strip()))
            return
        metrics.slot_active.set(1 if row is not None and row[0] else 0)
        if row is not None:
            metrics.wal_lag.set(float(row[1] or 0))

    def _telemetry_loop(self) -> None:
        next_slot = next_log = time.monotonic()
        while not self.stop_requested.wait(0.5):
            now = time.monotonic()
            if now >= next_slot:
                self._check_slot()
                next_slot = now + self.settings.slot_check_seconds
            if now >= next_log:
                print(metrics_line(), flush=True)
                next_log = now + self.settings.metrics_log_seconds

    def _control_loop(self) -> None:
        """Serve `<control_prefix>.replicator.shutdown` over NATS (while NATS is reachable)."""
        subject = control_subject("replicator", prefix=self.settings.control_prefix)
        endpoint = ControlEndpoint(
            self.settings.control_token,
            self.request_stop,
            log,
            on_refused=metrics.control_refused.inc,
        )

        async def serve_control() -> None:
            while not self.stop_requested.is_set():
                try:
                    nc = await connect(self.settings, "bridge-replicator-control", reconnect=True)
                except NatsRefused:
                    return  # the supervisor stops on the same refusal
                except NatsUnavailable:
                    await asyncio.sleep(2)
                    continue

                await nc.subscribe(subject, cb=endpoint.handle)
                while not self.stop_requested.is_set():
                    await asyncio.sleep(0.2)
                await nc.close()

        asyncio.run(serve_control())

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.request_stop())
        server = serve(s.port, metrics.REGISTRY, self.health)
        threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True).start()
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()
        log.info(
            "replicator: tables=%s slot=%s publication=%s http=:%d",
            ",".join(s.table),
            s.slot,
            s.publication,
            s.port,
        )
        try:
            return self._supervise()
        finally:
            self.stop_requested.set()
            server.shutdown()

    def request_stop(self) -> None:
        self.stop_requested.set()
        # In a thread: a cancel request is a round trip, and this runs in a signal handler.
        threading.Thread(target=self.setup_canceller.cancel, name="stop", daemon=True).start()

    def _supervise(self) -> int:
        s = self.settings
        first = True
        while not self.stop_requested.is_set():
            pipeline: Pipeline | None = None
            published_before = _published()
            try:
                # NATS first: a refused connection then stops us before a slot exists to hold
                # WAL for a replicator that will not come back until an operator acts.
                asyncio.run(_provision(s, everything=first))
                state = prepare(
                    s.database_dsn(),
                    s.table,
                    s.publication,
                    s.slot,
                    s.replica_identity_full_for(),
                    create_slot=first,
                    known_oids=self.table_oids,
                    failover_slot=s.failover_slot,
                    canceller=self.setup_canceller,
                    parts=s.published_parts(),
                    primary_url=s.primary_dsn(),
                )
                self.on_standby = state.on_standby
                self.refused = dict(state.refused)
                metrics.tables_refused.set(len(self.refused))
                first = False
                pipeline = self.pipeline = Pipeline(s)
                pipeline.start()
                self.running = True
                while not self.stop_requested.is_set() and not pipeline.failure.wait(0.5):
                    self.policy.healthy_for(time.monotonic() - pipeline.started_at)
                if self.stop_requested.is_set():
                    drained = pipeline.drain(s.shutdown_drain_seconds)
                    log.info(
                        "shutdown: %s",
                        "all in-flight messages acknowledged"
                        if drained
                        else "drain incomplete; unacknowledged changes will be replayed",
                    )
                    return 0
                assert pipeline.failure.error is not None
                raise pipeline.failure.error
            except Exception as exc:
                if pipeline is None and self.stop_requested.is_set():
                    log.info("shutdown: stopped while starting (%s)", self._shown(explain(exc)))
                    return 0
                self.last_error = {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "error": self._shown(explain(exc)),
                }
                made_progress = pipeline is not None and _published() > published_before
                restart = self.policy.after(exc, made_progress)
                if restart.stop:
                    log.error("stopping: %s", self._shown(explain(exc)))
                    return 2
                if restart.failure is Failure.SLOT_BUSY:
                    log.info("slot %s is in use by another replicator; waiting", s.slot)
                else:
                    metrics.reconnects.inc()
                    self.restarts += 1
                    log.warning(
                        "pipeline failed: %s; restarting %s",
                        self._shown(explain(exc)),
                        restart.described(),
                    )
                self.policy.wait(restart)
            finally:
                self.running = False
                if pipeline is not None:
                    pipeline.stop()
        return 0


async def _provision(settings: ReplicatorSettings, everything: bool) -> None:
    """The streams and bucket at the first start; at a restart only the CDC stream, which the
    pipeline needs (another stream electing a leader must not hold the pipeline up)."""
    try:
        nc = await connect(settings, "bridge-replicator-setup")
    except NatsUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except NatsRefused as exc:
        raise PermanentError(str(exc)) from exc
    try:
        js = nc.jetstream(timeout=START_API_TIMEOUT)
        if everything:
            await provision(js, settings)
        else:
            await ensure_cdc_stream(js, settings)
    except ProvisioningError as exc:
        raise PermanentError(str(exc)) from exc
    finally:
        await nc.close()


def metrics_line() -> str:
    def value(metric: Any, suffix: str = "") -> float:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(suffix):
                    return float(sample.value)
        return 0.0

    return "METRICS " + " ".join(
        [
            f"uptime_seconds={value(metrics.uptime):.0f}",
            f"wal_messages_received={value(metrics.wal_messages, '_total'):.0f}",
            f"cdc_events_published={value(metrics.events_published, '_total'):.0f}",
            f"last_ack_lsn={Lsn(int(value(metrics.last_ack_lsn)))}",
            f"connected={value(metrics.connected):.0f}",
            f"reconnects={value(metrics.reconnects, '_total'):.0f}",
            f"in_flight_bytes={value(metrics.in_flight_bytes):.0f}",
            f"slot_active={value(metrics.slot_active):.0f}",
            f"wal_lag_bytes={value(metrics.wal_lag):.0f}",
            f"oversized_rows={value(metrics.oversized_rows, '_total'):.0f}",
        ]
    )


def _published() -> float:
    """Messages JetStream acknowledged so far (this process)."""
    return metrics.REGISTRY.get_sample_value("bridge_cdc_events_published_total") or 0.0
