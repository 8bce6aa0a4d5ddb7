"""One run of the actor pipeline: reader → decoder → publisher, `Acked` back to the reader.

The pipeline owns the event loop all three actors run on (io_loop.py) and the NATS connection
on it (`open_link`): it opens them before the actors start and closes them after the actors
stopped. The actors talk to one another only in the messages of messages.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pykka

from pg_nats_bridge.contract import table_token
from services.replicator.decoder import Decoder
from services.replicator.events import EventBuilder, PublishedNames
from services.replicator.failure import FailureSignal
from services.replicator.flow import InFlightBudget
from services.replicator.io_loop import IoLoop
from services.replicator.messages import AttachReader, Drain
from services.replicator.publisher import JetStreamLink, Publisher, open_link
from services.replicator.reader import WalReader
from services.replicator.settings import ReplicatorSettings
from shared import postgres
from shared.codec.domains import BASE_TYPES_QUERY
from shared.postgres import pgoutput_options

log = logging.getLogger(__name__)

_PUBLISHED_NAMES = (
    "SELECT c.oid, n.nspname, c.relname, (CASE WHEN pg_is_in_recovery()"
    " THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint"
    " FROM pg_publication_tables p JOIN pg_namespace n ON n.nspname = p.schemaname"
    " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename"
    " WHERE p.pubname = %s"
)


OpenLink = Callable[[ReplicatorSettings, str, FailureSignal], Coroutine[Any, Any, JetStreamLink]]


class Pipeline:
    """`open_stream` and `open_link` are the two ends: the replication stream and the
    JetStream connection (a scripted walsender and a JetStream stand-in in the in-process
    tests, tests/unit/test_pipeline_in_process.py)."""

    def __init__(
        self,
        settings: ReplicatorSettings,
        open_stream: Callable[[], Any] | None = None,
        open_link: OpenLink = open_link,
    ) -> None:
        self.settings = settings
        self.open_stream = open_stream
        self.open_link = open_link
        self.failure = FailureSignal()
        self.budget = InFlightBudget(settings.max_in_flight_bytes)
        self.io = IoLoop()
        self.link: JetStreamLink | None = None
        self.actors: list[pykka.ActorRef[Any]] = []
        self.reader: pykka.ActorRef[Any] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        s = self.settings
        self.io.start()
        self.link = link = self.io.run(self.open_link(s, s.cdc_stream, self.failure), timeout=60)
        publisher = Publisher.start(
            link, self.io, self.failure, s.max_in_flight_messages, s.ack_timeout_seconds
        )
        self.actors.append(publisher)
        builder = EventBuilder(
            s.value_mode,
            link.max_payload,
            s.oversized_policy,
            resolve_types=self._base_types,
            replayed_through=link.stored_through,
            publication=s.publication,
            names=self._published_names() if self.open_stream is None else None,
        )
        decoder = Decoder.start(builder, publisher, self.io, self.failure)
        self.actors.append(decoder)
        options = pgoutput_options([s.publication], 1, messages=True)
        self.reader = WalReader.start(
            s.database_dsn(),
            s.slot,
            options,
            decoder,
            self.budget,
            self.failure,
            s.status_interval_seconds,
            s.batch_linger_seconds,
            self.io.loop,
            self.io.thread_id,
            self.open_stream,
        )
        self.actors.append(self.reader)
        publisher.tell(AttachReader(self.reader))
        self.started_at = time.monotonic()
        time.sleep(0.05)
        self._raise_if_failed()

    def _base_types(self, oids: list[int]) -> list[tuple[int, int]]:
        """Domains' base types, asked when a Relation names a non-built-in type (rarely)."""
        url = self.settings.database_dsn()
        with postgres.connect(url, autocommit=True, connect_timeout=10) as conn:
            return [(a, b) for a, b in conn.execute(BASE_TYPES_QUERY, (oids,)).fetchall()]

    def _published_names(self) -> PublishedNames | None:
        """The published tables' names now, and the WAL position now (best effort: without
        them a table renamed before its first change in this run is said on its new name's
        subject only)."""
        url = self.settings.database_dsn()
        try:
            with postgres.connect(url, autocommit=True, connect_timeout=10) as conn:
                rows = conn.execute(_PUBLISHED_NAMES, (self.settings.publication,)).fetchall()
        except psycopg.Error as exc:
            log.warning("the published tables' names were not read (%s)", str(exc).strip())
            return None
        at = int(rows[0][3]) if rows else 0
        return PublishedNames({oid: table_token(ns, name) for oid, ns, name, _ in rows}, at)

    def _raise_if_failed(self) -> None:
        if self.failure.failed:
            assert self.failure.error is not None
            raise self.failure.error

    def drain(self, timeout: float) -> bool:
        """Stop reading, wait until JetStream acknowledged what was read, send the final status
        update. True when everything in flight was acknowledged within `timeout`."""
        if self.reader is None or self.failure.failed:
            return False
        self.reader.tell(Drain())
        drained = self.budget.wait_until_empty(timeout)
        try:
            deadline = time.monotonic() + 2
            while not self.reader.proxy().drained().get(timeout=2) and time.monotonic() < deadline:
                time.sleep(0.05)
            lsn = self.reader.proxy().flush_status().get(timeout=5)
            log.info("final status update: confirmed %s", lsn)
        except Exception as exc:
            log.warning("final status update failed: %s", exc)
            return False
        return drained

    def stop(self) -> None:
        for ref in reversed(self.actors):
            try:
                ref.stop(block=True, timeout=10)
            except Exception as exc:
                log.debug("stopping %s: %s", ref, exc)
        self.actors.clear()
        if self.link is not None and self.io.thread.is_alive():
            try:
                self.io.run(self.link.close(), timeout=5)
            except Exception as exc:
                log.debug("closing NATS: %s", exc)
        self.io.stop()
