"""The bridge's services as e2e tests run them (`bridge …` subprocesses), and what tests wait
on and read of them and of the streams."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats

from pg_nats_bridge import contract
from shared.wire import unpack
from tests.harness.postgres import Database

# Every service started, stopped after each test (tests/e2e/conftest.py, `reap_services`).
MADE: list[Service] = []

BRIDGE = str(Path(sys.executable).parent / "bridge")


@dataclass
class Service:
    """One `bridge <command>` process with its log and HTTP port. Every one a test made is
    killed when the test ends (`reap_services`), also when it failed before stopping it."""

    command: str
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        MADE.append(self)

    def start(self) -> Service:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [BRIDGE, self.command], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def health(self) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def wait_healthy(self, timeout: float = 30) -> Service:
        wait_for(lambda: self.health() == 200, timeout, f"{self.command} healthy", self)
        return self

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def published(self) -> float:
        """The replicator's `bridge_cdc_events_published_total`: the messages JetStream
        acknowledged (a transaction's changes and its commit record)."""
        for line in self.metrics().splitlines():
            if line.startswith("bridge_cdc_events_published_total "):
                return float(line.split()[1])
        return 0.0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def copy_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    """What `query` reads from a SQLite copy, or nothing while the file or its table is not
    there yet (the replica writing it meanwhile)."""
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, service: Service | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if (
            service is not None
            and service.process is not None
            and service.process.poll() is not None
        ):
            raise AssertionError(
                f"{service.command} exited ({service.process.returncode}) while waiting for "
                f"{what}:\n{service.output()[-3000:]}"
            )
        if time.monotonic() > deadline:
            log = f":\n{service.output()[-3000:]}" if service else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")
        time.sleep(0.1)


def ask_all(
    url: str, subject: str, bodies: list[bytes], timeout: float = 120
) -> list[dict[str, Any]]:
    """The JSON answers to a request on `subject` per body, all sent at once."""

    async def ask() -> list[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            replies = await asyncio.gather(
                *(nc.request(subject, body, timeout=timeout) for body in bodies)
            )
            return [json.loads(r.data) for r in replies]
        finally:
            await nc.close()

    return asyncio.run(ask())


COMMITS = contract.commit_subject()
# The logical decoding message the snapshotter writes after each snapshot.
MARKERS = contract.message_subject(contract.escape_name("pg-nats-bridge"))
BOOKKEEPING = frozenset({COMMITS, MARKERS})


def bookkeeping(subject: str) -> bool:
    """Not a row change: a commit record, a snapshot's marker, a table's schema change (the
    replicator's, at a table's first change after it starts and at every change of its
    shape)."""
    return subject in BOOKKEEPING or contract.is_schema_change(subject)


def stream_messages(
    url: str, stream: str = "CDC", commits: bool = False, **connect_options: Any
) -> list[tuple[str, dict[str, str], Any]]:
    """Every message in the stream, in sequence order: (subject, headers, decoded payload),
    the transactions' commit records (`cdc.~commit`), the snapshotter's markers and the
    schema changes only with `commits`. `connect_options` are nats-py's (tls, user,
    password…) for a secured server."""

    async def fetch() -> list[tuple[str, dict[str, str], Any]]:
        nc = await nats.connect(url, **connect_options)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            total = info.state.messages
            out: list[tuple[str, dict[str, str], Any]] = []
            if total == 0:
                return out
            sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
            for _ in range(total):
                msg = await sub.next_msg(timeout=10)
                if commits or not bookkeeping(msg.subject):
                    out.append((msg.subject, dict(msg.headers or {}), unpack(msg.data)))
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(fetch())


def stream_count(url: str, stream: str = "CDC", commits: bool = False) -> int:
    """The messages in the stream, the transactions' commit records, the snapshotter's markers
    and the schema changes only with `commits`; -1 when the stream cannot be read."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            if commits or stream != "CDC":
                return int((await js.stream_info(stream)).state.messages)
            info = await js.stream_info(stream, subjects_filter=f"{contract.CDC}.>")
            subjects = info.state.subjects or {}
            total = int(info.state.messages)
            return total - sum(int(n) for s, n in subjects.items() if bookkeeping(s))
        except Exception:
            return -1
        finally:
            await nc.close()

    return asyncio.run(count())


def slot_lag(pg: Database, slot: str = "bridge_slot") -> int:
    rows = pg.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    return int(rows[0][0]) if rows else -1
