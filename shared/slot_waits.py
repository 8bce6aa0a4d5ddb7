"""Saying whom the creation of a replication slot waits for, while it waits.

Creating a logical slot waits until every transaction running at that moment has ended
(decoding must start where no transaction is half seen). One left open (a session idle in a
transaction, a long report) holds the creation up for as long as it stays open, and nothing
shows why: the replicator does not become healthy, a snapshot request gets no answer. So
while a creation takes longer than a few seconds, the log names the sessions it waits for.

On a hot standby (PostgreSQL 16+) the creation waits instead for the primary to write a
running-transactions record into the WAL, which it does every 15 s only while it is busy: with
the primary's URL the record is asked for (`pg_log_standby_snapshot()`, once a second while
the creation waits), without it the log says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg

from shared import postgres, slots

log = logging.getLogger(__name__)

BLOCKERS_QUERY = slots.CREATION_BLOCKERS

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


STANDBY_WAIT = (
    "{what} is creating a slot on a hot standby, which waits for the primary to log its running "
    "transactions (PostgreSQL writes that record every 15 s while the primary is busy, none "
    "while it is idle). Run SELECT pg_log_standby_snapshot() on the primary to go on now, or "
    "set BRIDGE_PRIMARY_URL so the bridge asks for it"
)

# While a slot is created on a standby with the primary's URL known, the primary is asked
# for a running-transactions record this often.
NUDGE_SECONDS = 1.0


@contextlib.contextmanager
def reporting_waits(
    database_url: str, slot: str, what: str, primary_url: str | None = None
) -> Iterator[None]:
    """Inside, a thread says whom the creation of `slot` waits for, on a connection of its
    own (opened only once the creation has taken a second). On a hot standby the wait is for
    the primary: with `primary_url` it is asked for the record the creation needs, without
    it the log says how to give it."""
    done = threading.Event()

    def report() -> None:
        if done.wait(NUDGE_SECONDS):
            return
        try:
            with postgres.connect(database_url, autocommit=True, connect_timeout=10) as conn:
                (standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone() or (False,)
                if standby:
                    _standby_wait(done, what, primary_url)
                    return
                if done.wait(FIRST_REPORT_SECONDS - NUDGE_SECONDS):
                    return
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


def _standby_wait(done: threading.Event, what: str, primary_url: str | None) -> None:
    if primary_url is None:
        if not done.wait(FIRST_REPORT_SECONDS - NUDGE_SECONDS):
            log.warning(STANDBY_WAIT.format(what=what))
        while not done.wait(REPORT_EVERY_SECONDS):
            log.warning(STANDBY_WAIT.format(what=what))
        return
    log.info(
        "%s is creating a slot on a hot standby, which waits for the primary to log its running "
        "transactions: asking the primary for that record (pg_log_standby_snapshot())",
        what,
    )
    failures = 0
    while not done.is_set():
        try:
            with postgres.connect(primary_url, autocommit=True, connect_timeout=10) as primary:
                while not done.is_set():
                    primary.execute("SELECT pg_log_standby_snapshot()")
                    done.wait(NUDGE_SECONDS)
        except psycopg.Error as exc:
            failures += 1
            if failures == 1 or failures % 60 == 0:
                log.warning(
                    "%s: could not ask the primary for a running-transactions record (%s); "
                    "the slot's creation waits for the primary to log one by itself",
                    what,
                    str(exc).strip(),
                )
            done.wait(NUDGE_SECONDS)
