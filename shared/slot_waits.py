"""Saying whom the creation of a replication slot waits for, while it waits.

Creating a logical slot waits until every transaction running at that moment has ended
(decoding must start where no transaction is half seen). One left open (a session idle in a
transaction, a long report) holds the creation up for as long as it stays open, and nothing
shows why: the replicator does not become healthy, a snapshot request gets no answer. So
while a creation takes longer than a few seconds, the log names the sessions it waits for.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg

from shared import postgres

log = logging.getLogger(__name__)

# While it is being created a slot is listed already, its creator as `active_pid`.
BLOCKERS_QUERY = (
    "SELECT a.pid, a.usename, a.application_name, a.state, a.xact_start"
    " FROM pg_replication_slots s"
    " CROSS JOIN LATERAL unnest(pg_blocking_pids(s.active_pid)) AS b(pid)"
    " JOIN pg_stat_activity a ON a.pid = b.pid"
    " WHERE s.slot_name = %s ORDER BY a.xact_start NULLS LAST, a.pid"
)

FIRST_REPORT_SECONDS = 5.0
REPORT_EVERY_SECONDS = 60.0


def describe(what: str, rows: Sequence[Sequence[Any]]) -> str:
    """One log line: `what` waits for these sessions (what the role may see of them)."""
    sessions = []
    for pid, user, application, state, started in rows:
        facts = [f"user {user}" if user else None]
        facts.append(f"application {application!r}" if application else None)
        if state:
            since = (
                started.strftime(" since %Y-%m-%d %H:%M:%S %Z")
                if isinstance(started, datetime)
                else ""
            )
            facts.append(f"{state}{since}")
        shown = ", ".join(f for f in facts if f)
        sessions.append(f"pid {pid}" + (f" ({shown})" if shown else ""))
    return (
        f"{what} waits for {len(rows)} transaction(s) open when it began to end (a new "
        f"replication slot starts after all of them): {'; '.join(sessions)}. It goes on once "
        "they commit or roll back; pg_terminate_backend(pid) ends a session"
    )


@contextlib.contextmanager
def reporting_waits(database_url: str, slot: str, what: str) -> Iterator[None]:
    """Inside, a thread says whom the creation of `slot` waits for, on a connection of its
    own (opened only once the creation has taken `FIRST_REPORT_SECONDS`)."""
    done = threading.Event()

    def report() -> None:
        if done.wait(FIRST_REPORT_SECONDS):
            return
        try:
            with postgres.connect(database_url, autocommit=True, connect_timeout=10) as conn:
                while not done.is_set():
                    rows = conn.execute(BLOCKERS_QUERY, (slot,)).fetchall()
                    if rows:
                        log.warning(describe(what, rows))
                    done.wait(REPORT_EVERY_SECONDS)
        except psycopg.Error as exc:
            log.debug("could not say what the slot's creation waits for: %s", exc)

    thread = threading.Thread(target=report, name="slot-wait-report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
