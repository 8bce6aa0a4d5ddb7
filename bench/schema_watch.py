"""Benchmark: what the snapshotter's schema watcher costs per poll, for 10 and 1,000 tables.

The watcher polls every `--schema-poll-seconds` (2 s). For each table count, a database with
that many tables of a few columns each (one with its primary key, one key-less in ten), NATS,
and the watcher's steady state: the first poll publishes every document; then the median of
later polls, when nothing changed: wall time, the CPU seconds of this process (the
watcher's Python) and of the PostgreSQL backend serving it (from /proc), and what they make at
one poll every 2 s, as a share of one core. The ceiling: a poll that does nothing costs 0.

Prints figures; asserts nothing.

    python -m bench.schema_watch [--tables 10 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import nats
import psycopg

from services.snapshotter.schema_watch import SchemaWatcher
from shared import provisioning
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer

POLL_SECONDS = 2.0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (PostgreSQL runs on this machine)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(url: str, nats_url: str, tables: int, polls: int) -> dict[str, Any]:
    names = [("public", f"t{i}") for i in range(tables)]
    watcher = SchemaWatcher(names, "schemas", "bridge_pub")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await provisioning.ensure_kv(js, "schemas", history=10)
        await js.add_stream(name="INIT", subjects=["init.>"])
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            backend = row[0]
            first = time.perf_counter()
            await watcher.check(conn, js)
            first = time.perf_counter() - first
            walls, own, server = [], [], []
            for _ in range(polls):
                w, c, s = time.perf_counter(), time.process_time(), _cpu_seconds(backend)
                await watcher.check(conn, js)
                walls.append(time.perf_counter() - w)
                own.append(time.process_time() - c)
                server.append(_cpu_seconds(backend) - s)
    finally:
        await nc.close()
    wall, cpu, pg = (statistics.median(x) for x in (walls, own, server))
    return {
        "tables": tables,
        "first_poll_s": round(first, 3),
        "poll_ms": round(wall * 1000, 1),
        "watcher_cpu_ms": round(cpu * 1000, 1),
        "postgres_cpu_ms": round(pg * 1000, 1),
        "watcher_core_share": round(cpu / POLL_SECONDS, 4),
        "postgres_core_share": round(pg / POLL_SECONDS, 4),
    }


def measure(counts: list[int], polls: int = 7) -> list[dict[str, Any]]:
    results = []
    for count in counts:
        pg, ns = PostgresServer.create(), NatsServer.create()
        try:
            url = pg.url()
            with psycopg.connect(url, autocommit=True) as conn:
                for i in range(count):
                    key = "" if i % 10 == 9 else " PRIMARY KEY"
                    conn.execute(
                        f"CREATE TABLE t{i} (id int{key}, name text, amount numeric, at date)"
                    )
                conn.execute("CREATE PUBLICATION bridge_pub FOR ALL TABLES")
            found = asyncio.run(_measure(url, ns.url, count, polls))
        finally:
            pg.destroy()
            ns.destroy()
        print(
            f"{count:>5} tables: a poll {found['poll_ms']} ms, watcher CPU "
            f"{found['watcher_cpu_ms']} ms ({100 * found['watcher_core_share']:.1f}% of a core "
            f"at one poll per {POLL_SECONDS:.0f} s), PostgreSQL CPU {found['postgres_cpu_ms']} ms "
            f"({100 * found['postgres_core_share']:.1f}%); first poll {found['first_poll_s']} s",
            flush=True,
        )
        results.append(found)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.schema_watch")
    parser.add_argument("--tables", type=int, nargs="+", default=[10, 1000])
    measure(parser.parse_args().tables)
