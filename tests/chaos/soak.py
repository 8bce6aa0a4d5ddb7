"""The chaos soak (`make chaos`; 45 s of it in `make test`): a random workload on three tables
while a fault lands every few seconds, a `bridge replica` copy kept throughout; at the end
`bridge verify` must find the copy equal to PostgreSQL (writes still going), and the CDC stream
must hold no Msg-Id twice and every table's changes in commit order.

Everything random comes from one seed, printed first with the fault schedule as it happens, so
a failing run can be replayed with `python -m tests.chaos --seed N`. Servers and services are
private to the soak: it restarts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import psycopg
from nats.js.api import DeliverPolicy

from pg_nats_bridge.lsn import Lsn
from services.dev.servers import free_port, make_temp_dir
from services.dev.servers import stop as stop_process
from tests.harness import processes
from tests.harness.nats import NatsServer
from tests.harness.postgres import Database, PostgresServer
from tests.harness.services import BRIDGE, Service

log = logging.getLogger("chaos")

TABLES = ("accounts", "ledger", "parts")
SCHEMA = """
CREATE TABLE accounts (
    id bigint PRIMARY KEY, balance numeric(14, 2), owner text, doc text, active boolean,
    updated timestamptz DEFAULT now()
);
CREATE TABLE ledger (account bigint, amount float8, memo text);
ALTER TABLE ledger REPLICA IDENTITY FULL;
CREATE TABLE parts (region int, id int, qty int, label text, PRIMARY KEY (region, id))
    PARTITION BY LIST (region);
CREATE TABLE parts_a PARTITION OF parts FOR VALUES IN (1, 2);
CREATE TABLE parts_b PARTITION OF parts FOR VALUES IN (3, 4);
INSERT INTO accounts (id, balance, owner, doc, active)
    SELECT g, g * 1.5, 'owner ' || g,
           CASE WHEN g % 10 = 0 THEN (SELECT string_agg(md5(g::text || i), '')
                                      FROM generate_series(1, 150) i) ELSE 'short' END,
           g % 3 = 0
    FROM generate_series(1, 20000) g;
INSERT INTO ledger SELECT g % 500, g / 4.0, 'seed' FROM generate_series(1, 2000) g;
INSERT INTO parts SELECT 1 + g % 4, g, g % 50, 'p' FROM generate_series(1, 3000) g;
"""
# Incompressible enough to be stored out of line (TOAST).
TOASTED = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200))"


@dataclass
class Report:
    seed: int
    seconds: float
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    transactions: int = 0
    rows_written: int = 0
    snapshots_ok: int = 0
    snapshots_failed: int = 0
    events: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    verify_exit: int | None = None
    verify_output: str = ""
    exits: list[tuple[str, int]] = field(default_factory=list)
    workload_errors: list[str] = field(default_factory=list)

    @property
    def unexpected_exits(self) -> list[tuple[str, int]]:
        """Exits other than a graceful one (0) or our kill -9: a crash the soak caused."""
        return [(role, code) for role, code in self.exits if code not in (0, -9)]

    def summary(self) -> str:
        longest = max(self.recoveries, key=lambda r: r[1], default=("-", 0.0))
        lost = "0" if self.verify_exit == 0 else f"verify exit {self.verify_exit}"
        return (
            f"chaos soak seed {self.seed}: {self.seconds:.0f} s, {self.transactions} "
            f"transactions ({self.rows_written} rows), {self.events} CDC events, "
            f"{sum(self.faults.values())} faults survived ({dict(self.faults)}), longest "
            f"recovery {longest[1]:.1f} s ({longest[0]}), snapshots {self.snapshots_ok} "
            f"served / {self.snapshots_failed} failed during faults, lost {lost}, duplicated "
            f"{self.duplicated}, out of order {self.out_of_order}, service crashes "
            f"{len(self.unexpected_exits)}"
            + (f", workload errors {self.workload_errors[:3]}" if self.workload_errors else "")
        )


class Workload:
    """Random transactions of 1 to 50,000 rows on the three tables, riding out PostgreSQL
    restarts (a transaction cut by one is simply not counted)."""

    def __init__(self, url: str, rng: random.Random, report: Report) -> None:
        self.url, self.rng, self.report = url, rng, report
        self.stop = threading.Event()
        self.next_id = 20001
        self.next_part = 3001
        self.big_now = threading.Event()  # the soak asks for one 50,000-row transaction
        self.thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
                    while not self.stop.is_set():
                        with conn.transaction():
                            rows = self._transaction(conn)
                        self.report.transactions += 1
                        self.report.rows_written += rows
                        time.sleep(self.rng.uniform(0, 0.01))
            except psycopg.OperationalError:  # PostgreSQL restarting: the connection is gone
                time.sleep(0.3)
            except psycopg.Error as exc:  # a bug of the workload itself: the soak says so
                self.report.workload_errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.3)

    def _transaction(self, conn: psycopg.Connection[Any]) -> int:
        rng, roll = self.rng, self.rng.random()
        if roll < 0.0015 or self.big_now.is_set():  # a large transaction, up to 50,000 rows
            n = 50000 if self.big_now.is_set() else rng.randint(5000, 50000)
            self.big_now.clear()
            conn.execute(
                "INSERT INTO ledger SELECT g %% 1000, random(), 'bulk'"
                " FROM generate_series(1, %s) g",
                (n,),
            )
            return n
        if roll < 0.02:
            n = rng.randint(10, 2000)
            with conn.cursor().copy("COPY ledger (account, amount, memo) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((rng.randint(0, 999), rng.random(), f"copy {i}"))
            return n
        if roll < 0.025:
            table = rng.choice(("ledger", "parts"))
            conn.execute(f"TRUNCATE {table}")
            return 1
        if roll < 0.05:
            n = rng.randint(50, 1500)
            first = self.next_id + 1  # next_id is the last id handed out
            self.next_id = first + n - 1
            conn.execute(
                "INSERT INTO accounts (id, balance, owner, doc, active)"
                " SELECT g, g %% 100, 'bulk', 'd', true FROM generate_series(%s::int, %s::int) g",
                (first, first + n - 1),
            )
            return n
        rows = 0
        for _ in range(rng.randint(1, 5)):
            rows += self._statement(conn)
        return rows

    def _statement(self, conn: psycopg.Connection[Any]) -> int:
        rng, roll = self.rng, self.rng.random()
        some_id = rng.randint(1, self.next_id)
        if roll < 0.25:
            self.next_id += 1
            toasted = rng.random() < 0.1
            conn.execute(
                "INSERT INTO accounts (id, balance, owner, doc, active) VALUES"
                f" (%s, %s, %s, {TOASTED if toasted else repr('new')}, %s)",
                (self.next_id, rng.randint(0, 10**6) / 100, f"o{self.next_id}", rng.random() < 0.5),
            )
        elif roll < 0.45:  # doc (TOASTed or not) left unchanged
            conn.execute(
                "UPDATE accounts SET balance = balance + 1, updated = now() WHERE id = %s",
                (some_id,),
            )
        elif roll < 0.5:
            conn.execute(f"UPDATE accounts SET doc = {TOASTED} WHERE id = %s", (some_id,))
        elif roll < 0.55:
            self.next_id += 1
            conn.execute("UPDATE accounts SET id = %s WHERE id = %s", (self.next_id, some_id))
        elif roll < 0.62:
            conn.execute("DELETE FROM accounts WHERE id = %s", (some_id,))
        elif roll < 0.75:
            conn.execute(
                "INSERT INTO ledger VALUES (%s, %s, %s)",
                (rng.randint(0, 999), rng.choice((rng.random(), float("nan"), -0.0)), "tx"),
            )
        elif roll < 0.8:
            conn.execute(
                "UPDATE ledger SET amount = amount + 1 WHERE ctid ="
                " (SELECT ctid FROM ledger WHERE account = %s LIMIT 1)",
                (rng.randint(0, 999),),
            )
        elif roll < 0.84:
            conn.execute(
                "DELETE FROM ledger WHERE ctid ="
                " (SELECT ctid FROM ledger WHERE account = %s LIMIT 1)",
                (rng.randint(0, 999),),
            )
        elif roll < 0.92:
            self.next_part += 1
            conn.execute(
                "INSERT INTO parts VALUES (%s, %s, %s, 'n')",
                (rng.randint(1, 4), self.next_part, rng.randint(0, 99)),
            )
        elif roll < 0.97:
            conn.execute(
                "UPDATE parts SET qty = qty + 1 WHERE id = %s", (rng.randint(1, self.next_part),)
            )
        else:  # moves the row to the other partition: a delete and an insert of the parent
            conn.execute(
                "UPDATE parts SET region = 5 - region WHERE id = %s",
                (rng.randint(1, self.next_part),),
            )
        return 1


class Stack:
    """The services as compose runs them (restarted when they exit), with faults to inject."""

    def __init__(self, pg: PostgresServer, db: Database, nats_server: NatsServer, work: Path):
        self.pg, self.db, self.nats, self.work = pg, db, nats_server, work
        self.token = "chaos-admin-token"
        self.services: dict[str, list[Service]] = {
            "replicator": [],
            "snapshotter": [],
            "admin": [],
        }
        self.replica: Service | None = None
        self.copy = work / "copy.db"
        self.lock = threading.Lock()
        self.report: Report | None = None

    def env(self, port: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DATABASE_URL=self.db.url,
            BRIDGE_NATS_URL=self.nats.url,
            BRIDGE_TABLE=",".join(TABLES),
            BRIDGE_PORT=str(port),
            # The end-of-soak scan reads every event: keep them (and the duplicate window)
            # for the whole run instead of the seed's 60 s.
            BRIDGE_CDC_MAX_AGE_SECONDS="7200",
            BRIDGE_CDC_MAX_MSGS="20000000",
            BRIDGE_ADMIN_TOKEN=self.token,
            BRIDGE_STATUS_INTERVAL_SECONDS="2",
            **extra,
        )
        return env

    def start(self, role: str) -> Service:
        port = free_port()
        extra: dict[str, str] = {}
        if role == "admin":
            running = {r: s[-1].port for r, s in self.services.items() if s and r != "admin"}
            extra = {
                "BRIDGE_REPLICATOR_URL": f"http://127.0.0.1:{running.get('replicator', 9)}",
                "BRIDGE_SNAPSHOTTER_URL": f"http://127.0.0.1:{running.get('snapshotter', 9)}",
            }
        service = Service(role, self.env(port, **extra), port, self.work / f"{role}.log")
        service.start()
        self.services[role].append(service)
        return service

    def start_replica(self) -> None:
        self.replica = Service("replica", self.env(0), 0, self.work / "replica.log")
        with open(self.replica.log, "ab") as out:
            self.replica.process = subprocess.Popen(
                [BRIDGE, "replica", *TABLES, "--sqlite", str(self.copy)],
                env=self.replica.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self, role: str) -> list[Service]:
        return [s for s in self.services[role] if s.process and s.process.poll() is None]

    def supervise(self) -> None:
        """Restart what exited, as `restart: unless-stopped` does; record exit codes."""
        with self.lock:
            for role, started in self.services.items():
                for service in list(started):
                    if service.process is not None and service.process.poll() is not None:
                        started.remove(service)
                        if self.report is not None:
                            self.report.exits.append((role, service.process.returncode))
                if not self.alive(role):
                    self.start(role)
            if self.replica and self.replica.process and self.replica.process.poll() is not None:
                if self.report is not None:
                    self.report.exits.append(("replica", self.replica.process.returncode))
                self.start_replica()

    def stop_all(self) -> None:
        for started in self.services.values():
            for service in started:
                service.stop()
        if self.replica:
            self.replica.stop()

    # -- faults ------------------------------------------------------------------------------

    def fault(self, name: str, rng: random.Random) -> None:
        with self.lock:
            getattr(self, f"_{name}")(rng)

    def _replicator_kill(self, rng: random.Random) -> None:
        for service in self.alive("replicator")[:1]:
            service.kill()

    def _nats_restart(self, rng: random.Random) -> None:
        self.nats.kill()
        time.sleep(rng.uniform(0.5, 2))
        self.nats.start()

    def _postgres_restart(self, rng: random.Random) -> None:
        stop_process(self.pg.process, signal.SIGQUIT)  # pg_ctl stop -m immediate
        time.sleep(rng.uniform(0.2, 1))
        self.pg.start()

    def _snapshotter_kill(self, rng: random.Random) -> None:
        """Kill it while it publishes a snapshot of the largest table."""
        threading.Thread(
            target=snapshot_request, args=(self.nats.url, "accounts"), daemon=True
        ).start()
        time.sleep(rng.uniform(0.2, 0.6))
        for service in self.alive("snapshotter"):
            service.kill()

    def _second_replicator(self, rng: random.Random) -> None:
        if len(self.alive("replicator")) < 2:
            self.start("replicator")

    def _admin_shutdown(self, rng: random.Random) -> None:
        for admin in self.alive("admin")[:1]:
            httpx.post(
                f"http://127.0.0.1:{admin.port}/shutdown",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=15,
            )


FAULTS = (
    "replicator_kill",
    "nats_restart",
    "postgres_restart",
    "snapshotter_kill",
    "second_replicator",
    "admin_shutdown",
)


def snapshot_request(url: str, table: str, report: Report | None = None) -> None:
    async def ask() -> None:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            reply = json.loads((await nc.request(f"bridge.snapshot.{table}", b"", timeout=60)).data)
            if report is not None:
                if "error" in reply:
                    report.snapshots_failed += 1
                else:
                    report.snapshots_ok += 1
        finally:
            await nc.close()

    try:
        asyncio.run(ask())
    except Exception:
        if report is not None:
            report.snapshots_failed += 1


def probe(stack: Stack, name: str, started: float, report: Report) -> None:
    """Recovery: from the fault until a row written after it is in the CDC stream."""
    memo = f"probe {name} {started}"

    async def seen() -> None:
        while True:
            try:
                nc = await nats.connect(
                    stack.nats.url, connect_timeout=2, max_reconnect_attempts=-1
                )
                break
            except Exception:
                await asyncio.sleep(0.2)
        arrived = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            if memo.encode() in msg.data:
                arrived.set()

        try:
            # From the stream, not a core subscription: a NATS restart during the wait would
            # lose a message published while this connection was away.
            js = nc.jetstream()
            while True:
                try:
                    await js.subscribe(
                        "cdc.ledger.insert",
                        cb=on_msg,
                        ordered_consumer=True,
                        deliver_policy=DeliverPolicy.NEW,
                    )
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            while True:
                try:
                    with psycopg.connect(stack.db.url, autocommit=True, connect_timeout=2) as conn:
                        conn.execute("INSERT INTO ledger VALUES (-1, 0, %s)", (memo,))
                    break
                except psycopg.Error:
                    await asyncio.sleep(0.2)
            try:
                await asyncio.wait_for(arrived.wait(), 120)
                report.recoveries.append((name, time.monotonic() - started))
            except TimeoutError:
                report.recoveries.append((name, float("inf")))
        finally:
            await nc.close()

    asyncio.run(seen())


def scan_stream(url: str, report: Report) -> None:
    """Every CDC event: Msg-Ids once, and per table (commit_lsn, ordinal) strictly rising."""

    async def scan() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            total = (await js.stream_info("CDC")).state.messages
            sub = await js.subscribe("cdc.>", stream="CDC", ordered_consumer=True)
            ids: set[str] = set()
            last: dict[str, tuple[int, int]] = {}
            for _ in range(total):
                msg = await sub.next_msg(timeout=30)
                report.events += 1
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                if msg_id in ids:
                    report.duplicated += 1
                ids.add(msg_id)
                event = msgpack.unpackb(msg.data, raw=False)
                if "commit_lsn" not in event or "ordinal" not in event or "table" not in event:
                    continue  # a commit record, a table's schema change
                position = (int(Lsn.parse(event["commit_lsn"])), int(event["ordinal"]))
                table = event["table"]
                if table in last and position <= last[table]:
                    report.out_of_order += 1
                last[table] = position
            await sub.unsubscribe()
        finally:
            await nc.close()

    asyncio.run(scan())


def run_soak(seconds: float, seed: int | None = None, work: Path | None = None) -> Report:
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 10**9)
    rng = random.Random(seed)
    report = Report(seed, seconds)
    log.info(
        "chaos soak: seed %d, %.0f s (replay: python -m tests.chaos --seed %d)", seed, seconds, seed
    )
    work = work or Path(make_temp_dir("bridge-chaos-", None))
    pg = PostgresServer.create()
    nats_server = NatsServer.create()
    stack: Stack | None = None
    try:
        db = Database(pg, pg.create_database())
        db.execute(SCHEMA)
        stack = Stack(pg, db, nats_server, work)
        stack.report = report
        for role in ("replicator", "snapshotter"):
            stack.start(role).wait_healthy(60)
        stack.start("admin")
        stack.start_replica()
        workload = Workload(db.url, random.Random(rng.random()), report)
        workload.thread.start()
        started = time.monotonic()
        next_fault = started + rng.uniform(3, 6)
        next_snapshot = started + rng.uniform(1, 4)
        big_at = started + seconds / 3
        probes: list[threading.Thread] = []
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if now >= next_fault:
                name = rng.choice(FAULTS)
                log.info("fault at %.1f s: %s", now - started, name)
                stack.fault(name, rng)
                report.faults[name] += 1
                thread = threading.Thread(
                    target=probe, args=(stack, name, now, report), daemon=True
                )
                thread.start()
                probes.append(thread)
                next_fault = time.monotonic() + rng.uniform(3, 8)
            if big_at and now >= big_at:
                workload.big_now.set()
                big_at = 0.0
            if now >= next_snapshot:
                threading.Thread(
                    target=snapshot_request,
                    args=(nats_server.url, rng.choice(TABLES), report),
                    daemon=True,
                ).start()
                next_snapshot = now + rng.uniform(2, 5)
            time.sleep(rng.uniform(0.5, 1.5))  # compose restarts within about a second
            stack.supervise()
        log.info("faults over: waiting for every probe, then verifying under writes")
        for thread in probes:
            thread.join(150)
        for _ in range(5):
            stack.supervise()
            time.sleep(1)
        assert stack.replica is not None and stack.replica.process is not None
        stack.replica.terminate(60)
        verify = subprocess.run(
            [BRIDGE, "verify", *TABLES, "--sqlite", str(stack.copy), "--confirm-timeout", "300"],
            env=stack.env(0),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        report.verify_exit = verify.returncode
        report.verify_output = verify.stdout + verify.stderr
        log.info("verify (exit %d):\n%s", verify.returncode, report.verify_output)
        workload.stop.set()
        workload.thread.join(60)
        wait_confirmed(db)
        scan_stream(nats_server.url, report)
        log.info("%s", report.summary())
        return report
    finally:
        if stack is not None:
            stack.stop_all()
        nats_server.destroy()
        pg.destroy()
        if report.verify_exit == 0 and not report.duplicated and not report.out_of_order:
            processes.remove(work)
        else:
            log.info("logs kept in %s", work)


def wait_confirmed(db: Database, timeout: float = 120) -> None:
    """Until the slot confirmed everything written, so the scan sees every event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            rows = db.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                " FROM pg_replication_slots WHERE slot_name = 'bridge_slot'"
            )
            if rows and rows[0][0] is not None and rows[0][0] <= 0:
                return
        time.sleep(0.5)
