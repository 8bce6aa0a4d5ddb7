"""Benchmark: do consumers keep up with the bridge?

1. **Backlog.** The same backlog (rows in 1,000-row transactions, loaded while the replicator
   is stopped) is drained by the replicator into JetStream, then applied by `bridge replica`
   (TableFollower + SqliteCopy, a process of its own) and by the library's loop in this
   process (TableFollower + MemoryCopy), each resuming from a copy bootstrapped before the
   load. The ratio is each consumer's rate over the replicator's, measured in the same run.
   The consumers' own ceiling is measured too: a pull consumer with the follower's filters
   that does nothing with what it receives (`bare_pull`), and nats-server's CPU per message
   it delivers, there and while `bridge replica` applies (on two cores, nats-server delivering
   and the consumer applying share them).
2. **Steady load.** pgbench's TPC-B-like script (4 clients) runs for a while against the
   pgbench tables while the replicator publishes and `bridge replica` follows: the lag (CDC
   stream events published but not yet applied by the copy) is sampled every second.

Prints figures; asserts nothing.

    python -m bench.consumer_backlog [--rows 200000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.replicator_drain import cdc_state, replicator_env
from pg_nats_bridge import CaughtUp, Delete, Insert, MemoryCopy, TableFollower, Update
from pg_nats_bridge.follower import consumer_filters
from pg_nats_bridge.names import table_token
from pg_nats_bridge.pull import Idle, Puller
from shared.compiled import HOT_PATH, PURE_PYTHON_VARIABLE
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.processes import cpu_times

BRIDGE = str(Path(sys.executable).parent / "bridge")
PGBENCH_TABLES = "pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history"


class Stack:
    """The servers and the bridge's processes, each logging to a file under the run's root."""

    def __init__(self) -> None:
        self.pg, self.ns = PostgresServer.create(), NatsServer.create()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, tables: str, **more: str) -> dict[str, str]:
        return replicator_env(self.pg.url(), self.ns.url, tables, **more)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.pg.root / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([BRIDGE, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log(self, name: str) -> str:
        return (self.pg.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def destroy(self) -> None:
        for name in list(self.procs):
            self.procs[name].kill()
            self.procs.pop(name).wait(10)
        self.pg.destroy()
        self.ns.destroy()


def last_seq(url: str) -> int:
    return cdc_state(url)[1]


def copy_state(path: Path) -> dict[str, Any] | None:
    """The follower state the SQLite copy has committed (None before its bootstrap)."""
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM _bridge_state WHERE name = 'follower'").fetchone()
    except sqlite3.Error:
        return None
    return dict(json.loads(row[0])) if row else None


def copy_position(path: Path) -> int:
    """The CDC sequence the SQLite copy has committed through (0 before its bootstrap)."""
    state = copy_state(path)
    return int(state["seq"]) if state else 0


def _bootstrapped(path: Path) -> bool:
    return copy_state(path) is not None


def wait(condition: Any, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited while waiting for {what}:\n{stack.log(name)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


async def follow_in_memory(
    url: str, copy: MemoryCopy, state: dict[str, Any] | None, until_seq: int
) -> tuple[dict[str, Any], float, int, float]:
    """The library's loop into `copy`, from `state` until it has applied the CDC stream
    through `until_seq`: (its state, seconds from its first change, changes, CPU seconds).
    It is written as docs/consuming.md recommends (batches, `gc.freeze()` once started)."""
    nc = await nats.connect(url)
    follower = TableFollower(nc, ["bench"], state=state)
    first: float | None = None
    applied = 0
    cpu = time.process_time()
    gc.freeze()
    try:
        async for batch in follower.batches():
            changes = sum(1 for item in batch if isinstance(item, Insert | Update | Delete))
            if changes and first is None:  # timed from the first batch of changes on
                first, cpu = time.monotonic(), time.process_time()
            copy.apply_all(batch)
            applied += changes
            if batch and isinstance(batch[-1], CaughtUp) and follower.state["seq"] >= until_seq:
                break
    finally:
        await nc.close()
        gc.unfreeze()
    now = time.monotonic()
    return follower.state, now - (first or now), applied, time.process_time() - cpu


def server_cpu(stack: Stack) -> float:
    """nats-server's CPU seconds so far."""
    assert stack.ns.process is not None
    return sum(cpu_times(stack.ns.process.pid))


async def bare_pull(stack: Stack, table: str, messages: int) -> tuple[float, float]:
    """The consumers' ceiling: a pull consumer of the CDC stream with the follower's filters
    (the table's changes, its oversized markers, the commit records), pulled as the follower
    pulls (`Puller`, its batch and requests) by a loop that only counts what arrives: messages/s
    and nats-server's CPU µs per message delivered."""
    token = table_token("public", table)
    nc = await nats.connect(stack.ns.url)
    js = nc.jetstream()
    name = "bench-bare-pull"
    config = nats.js.api.ConsumerConfig(
        name=name,
        deliver_policy=nats.js.api.DeliverPolicy.ALL,
        ack_policy=nats.js.api.AckPolicy.NONE,
        filter_subjects=consumer_filters([token]),
        inactive_threshold=300.0,
    )
    await js.add_consumer("CDC", config)
    puller = Puller(nc, "CDC", name)
    await puller.start()
    received = 0
    try:
        t0, cpu0 = time.monotonic(), server_cpu(stack)
        while received < messages:
            while puller.wants_request():
                await puller.request(marker=True)
            received += sum(1 for entry in await puller.take(5.0) if not isinstance(entry, Idle))
        seconds, cpu = time.monotonic() - t0, server_cpu(stack) - cpu0
    finally:
        await puller.stop()
        await js.delete_consumer("CDC", name)
        await nc.close()
    return received / seconds, cpu * 1e6 / received


def apply_backlog(
    stack: Stack, copy_path: Path, argv: list[str], env: dict[str, str], rows: int
) -> tuple[float, float, float]:
    """`bridge replica` applying the stream into the copy at `copy_path`, resuming from its
    bootstrap: changes/s, CPU µs per change, and nats-server's CPU µs per message meanwhile.
    Timed from its first commit (start-up excluded); a backlog applied before that one (a
    --quick run) is timed from the launch instead, start-up included."""
    messages = last_seq(stack.ns.url)
    launched = time.monotonic()
    proc = stack.start("replica", argv, env)
    cpu0, server0 = cpu_times(proc.pid), server_cpu(stack)
    wait(lambda: copy_position(copy_path) > 0, 120, "the replica's first commit", stack)
    t0, at0 = time.monotonic(), copy_position(copy_path)
    if at0 >= messages:
        t0, at0 = launched, 0
    else:
        cpu0, server0 = cpu_times(proc.pid), server_cpu(stack)
    wait(lambda: copy_position(copy_path) >= messages, 600, "the replica's catch-up", stack)
    seconds = time.monotonic() - t0
    cpu, server = sum(cpu_times(proc.pid)) - sum(cpu0), server_cpu(stack) - server0
    done = (messages - at0) * rows // messages  # the changes among the messages applied
    stack.stop("replica")
    return done / seconds, cpu * 1e6 / done, server * 1e6 / (messages - at0)


def backlog(stack: Stack, rows: int, per_tx: int) -> dict[str, Any]:
    url = stack.pg.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench (id int PRIMARY KEY, name text, amount float8)")
    env = stack.env("bench")
    stack.start("replicator", ["replicator"], env)
    stack.start("snapshotter", ["snapshotter"], {**env, "BRIDGE_PORT": "0"})
    copy_path = stack.pg.root / "copy.db"
    replica_argv = ["replica", "bench", "--sqlite", str(copy_path), "--progress-seconds", "2"]
    # Both copies bootstrap (an empty snapshot) before the load, then stop.
    stack.start("replica", replica_argv, env)
    wait(lambda: _bootstrapped(copy_path), 120, "the replica's bootstrap", stack)
    stack.stop("replica")
    # The same copy for the pure-Python hot path's run (the before), bootstrapped as this one.
    pure_path = stack.pg.root / "copy-pure.db"
    shutil.copyfile(copy_path, pure_path)
    memory = MemoryCopy()
    memory_state, _, _, _ = asyncio.run(follow_in_memory(stack.ns.url, memory, None, 0))
    stack.stop("replicator")

    from bench.replicator_drain import load

    started = time.monotonic()
    load(url, rows, per_tx)
    print(f"backlog: {rows:,} rows in {rows // per_tx:,} transactions of {per_tx:,}", flush=True)
    print(f"  loaded in {time.monotonic() - started:.1f} s", flush=True)

    # The replicator drains it into JetStream.
    proc = stack.start("replicator", ["replicator"], env)
    wait(lambda: last_seq(stack.ns.url) > 0, 60, "the replicator's first message", stack)
    first, cpu_first = time.monotonic(), cpu_times(proc.pid)
    # A message per row and a commit record per transaction.
    messages = rows + rows // per_tx
    wait(lambda: last_seq(stack.ns.url) >= messages, 600, "the replicator's drain", stack)
    drained = time.monotonic()
    drain_cpu = sum(cpu_times(proc.pid)) - sum(cpu_first)
    drain_rate = rows / (drained - first)
    print(
        f"  replicator → JetStream: {drain_rate:,.0f} events/s "
        f"({drain_cpu * 1e6 / rows:.1f} µs CPU/event)",
        flush=True,
    )

    # What nats-server delivers to a consumer that does nothing with it: the consumers' ceiling.
    bare_rate, bare_server_us = asyncio.run(bare_pull(stack, "bench", messages))
    print(
        f"  bare pull (the follower's filters, nothing applied): {bare_rate:,.0f} messages/s, "
        f"nats-server {bare_server_us:.1f} µs CPU/message; ratio to the replicator "
        f"{bare_rate / drain_rate:.2f}",
        flush=True,
    )

    # `bridge replica` applies it into SQLite, resuming from its bootstrap, on the hot path
    # this install runs and then on the pure-Python one.
    replica_rate, replica_cpu_us, replica_server_us = apply_backlog(
        stack, copy_path, replica_argv, env, rows
    )
    print(
        f"  bridge replica → SQLite ({HOT_PATH}): {replica_rate:,.0f} changes/s "
        f"({replica_cpu_us:.1f} µs CPU/change, nats-server {replica_server_us:.1f} µs "
        f"CPU/message); ratio to the replicator {replica_rate / drain_rate:.2f}, to the bare "
        f"pull {replica_rate / bare_rate:.2f}",
        flush=True,
    )
    pure_argv = [*replica_argv[:2], "--sqlite", str(pure_path), *replica_argv[4:]]
    pure_rate, pure_cpu_us, _ = apply_backlog(
        stack, pure_path, pure_argv, {**env, PURE_PYTHON_VARIABLE: "1"}, rows
    )
    print(
        f"  the same, pure-python: {pure_rate:,.0f} changes/s ({pure_cpu_us:.1f} µs "
        f"CPU/change); ratio to the replicator {pure_rate / drain_rate:.2f}",
        flush=True,
    )

    # The library's own loop into memory, in this process.
    _, seconds, applied, cpu = asyncio.run(
        follow_in_memory(stack.ns.url, memory, memory_state, messages)
    )
    library_rate = applied / seconds
    print(
        f"  TableFollower → MemoryCopy: {library_rate:,.0f} changes/s "
        f"({cpu * 1e6 / applied:.1f} µs CPU/change); "
        f"ratio to the replicator {library_rate / drain_rate:.2f}",
        flush=True,
    )
    stack.stop("replicator")
    stack.stop("snapshotter")
    return {
        "rows": rows,
        "rows_per_tx": per_tx,
        "replicator_events_per_s": round(drain_rate),
        "replicator_cpu_us_per_event": round(drain_cpu * 1e6 / rows, 1),
        "hot_path": HOT_PATH,
        "replica_changes_per_s": round(replica_rate),
        "replica_cpu_us_per_change": round(replica_cpu_us, 1),
        "replica_ratio": round(replica_rate / drain_rate, 2),
        "replica_server_cpu_us_per_message": round(replica_server_us, 1),
        "bare_pull_messages_per_s": round(bare_rate),
        "bare_pull_server_cpu_us_per_message": round(bare_server_us, 1),
        "bare_pull_ratio": round(bare_rate / drain_rate, 2),
        "replica_to_bare_pull": round(replica_rate / bare_rate, 2),
        "pure_python_replica_changes_per_s": round(pure_rate),
        "pure_python_replica_cpu_us_per_change": round(pure_cpu_us, 1),
        "pure_python_replica_ratio": round(pure_rate / drain_rate, 2),
        "library_changes_per_s": round(library_rate),
        "library_cpu_us_per_change": round(cpu * 1e6 / applied, 1),
        "library_ratio": round(library_rate / drain_rate, 2),
    }


def steady_load(stack: Stack, seconds: float, clients: int) -> dict[str, Any]:
    """pgbench for `seconds` while `bridge replica` follows its four tables."""
    url = stack.pg.url()
    pgbench = str(stack.pg.bindir / "pgbench")
    subprocess.run([pgbench, "-i", "-q", "-s", "1", url], check=True, capture_output=True)
    # pgbench_history has no primary key: its rows are identified whole.
    env = stack.env(
        PGBENCH_TABLES,
        BRIDGE_REPLICA_IDENTITY_FULL="true",
        BRIDGE_SLOT="pgbench_slot",
        BRIDGE_PUBLICATION="pgbench_pub",
    )
    stack.start("replicator-pgbench", ["replicator"], env)
    stack.start("snapshotter-pgbench", ["snapshotter"], {**env, "BRIDGE_PORT": "0"})
    copy_path = stack.pg.root / "pgbench.db"
    stack.start(
        "replica-pgbench",
        ["replica", *PGBENCH_TABLES.split(","), "--sqlite", str(copy_path)],
        env,
    )
    wait(lambda: _bootstrapped(copy_path), 180, "the pgbench copy's bootstrap", stack)
    base = last_seq(stack.ns.url)
    bench = subprocess.Popen(
        [pgbench, "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds)), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lags: list[int] = []
    while bench.poll() is None:
        time.sleep(1)
        lags.append(max(0, last_seq(stack.ns.url) - copy_position(copy_path)))
    output = bench.communicate()[0].decode()
    ended = time.monotonic()
    published = last_seq(stack.ns.url) - base
    tps = next(
        (line.split("=")[1].split()[0] for line in output.splitlines() if "tps =" in line), "?"
    )
    end_lag = max(0, last_seq(stack.ns.url) - copy_position(copy_path))
    wait(
        lambda: copy_position(copy_path) >= last_seq(stack.ns.url),
        600,
        "the copy's catch-up",
        stack,
    )
    catch_up = time.monotonic() - ended
    for name in ("replica-pgbench", "replicator-pgbench", "snapshotter-pgbench"):
        stack.stop(name)
    print(
        f"pgbench, {clients} clients, {seconds:g} s: {tps} tps, {published:,} events published "
        f"({published / seconds:,.0f}/s)\n"
        f"  bridge replica lag, events (sampled each second): median "
        f"{statistics.median(lags) if lags else 0:,.0f}, max {max(lags, default=0):,}, at the "
        f"end {end_lag:,}; caught up {catch_up:.1f} s after the load stopped",
        flush=True,
    )
    return {
        "clients": clients,
        "seconds": seconds,
        "tps": tps,
        "events_per_s": round(published / seconds),
        "lag_median": statistics.median(lags) if lags else 0,
        "lag_max": max(lags, default=0),
        "lag_at_end": end_lag,
        "catch_up_seconds": round(catch_up, 1),
    }


def measure(rows: int = 200_000, seconds: float = 20.0, clients: int = 4) -> dict[str, Any]:
    stack = Stack()
    try:
        return {
            "backlog": backlog(stack, rows, 1000),
            "steady_load": steady_load(stack, seconds, clients),
        }
    finally:
        stack.destroy()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    measure(args.rows, args.seconds, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
