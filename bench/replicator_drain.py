"""Benchmark: drain a backlog through the replicator and through pg_recvlogical.

Both read the same WAL (two pgoutput slots created before the load) in the same run, so the
ratio compares the replicator (decode, encode, publish to JetStream, wait for PubAcks) with
the ceiling of just receiving the bytes. Prints figures; asserts nothing.

    python -m bench.replicator_drain [--rows 200000] [--rows-per-tx 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.processes import cpu_seconds, free_port, peak_rss_mb


def load(url: str, rows: int, per_tx: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if per_tx == 1:
            with conn.pipeline(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bench (id, name, amount) VALUES (%s, %s, %s)",
                    [(i, f"name {i}", i * 1.5) for i in range(rows)],
                )
        else:
            for start in range(0, rows, per_tx):
                conn.execute(
                    "INSERT INTO bench SELECT g, 'name ' || g, g * 1.5"
                    " FROM generate_series(%s::int, %s::int) g",
                    (start, min(start + per_tx, rows) - 1),
                )


def stream_count(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info("CDC")).state.messages)
        except Exception:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def measure(rows: int, rows_per_tx: int) -> dict[str, Any]:
    """Drain `rows` rows through pg_recvlogical and the replicator; the figures."""
    args = argparse.Namespace(rows=rows, rows_per_tx=rows_per_tx)
    pg, ns = PostgresServer.create(), NatsServer.create()
    try:
        url = pg.url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id int PRIMARY KEY, name text, amount float8)")
            conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
            for slot in ("bench_bridge", "bench_recv"):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        started = time.monotonic()
        load(url, args.rows, args.rows_per_tx)
        with psycopg.connect(url) as conn:
            (end_lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
            (wal_bytes,) = conn.execute(  # type: ignore[misc]
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = 'bench_recv'"
            ).fetchone()
        print(
            f"backlog: {args.rows:,} rows in {args.rows // args.rows_per_tx:,} transactions, "
            f"{wal_bytes / 1e6:.0f} MB of WAL (loaded in {time.monotonic() - started:.1f} s)"
        )

        recv = [
            str(pg.bindir / "pg_recvlogical"),
            "-d",
            url,
            "--slot",
            "bench_recv",
            "--start",
            "--endpos",
            end_lsn,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
            "-f",
            "/dev/null",
            "--no-loop",
        ]
        t0 = time.monotonic()
        subprocess.run(recv, check=True)
        recv_seconds = time.monotonic() - t0
        recv_rate = args.rows / recv_seconds

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DATABASE_URL=url,
            BRIDGE_NATS_URL=ns.url,
            BRIDGE_TABLE="bench",
            BRIDGE_SLOT="bench_bridge",
            BRIDGE_PUBLICATION="bench_pub",
            BRIDGE_PORT=str(port),
            BRIDGE_CDC_MAX_AGE_SECONDS="3600",
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_METRICS_LOG_SECONDS="3600",
        )
        bridge = str(Path(sys.executable).parent / "bridge")
        log = open(pg.root / "replicator.log", "wb")  # noqa: SIM115
        launched = time.monotonic()
        proc = subprocess.Popen(
            [bridge, "replicator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            while stream_count(ns.url) == 0:
                if proc.poll() is not None or time.monotonic() - launched > 60:
                    tail = (pg.root / "replicator.log").read_text()[-2000:]
                    raise SystemExit(f"replicator did not start: {tail}")
                time.sleep(0.02)
            first = time.monotonic()
            cpu_first = cpu_seconds(proc.pid)
            while (count := stream_count(ns.url)) < args.rows:
                if time.monotonic() - first > 600:
                    raise SystemExit(f"replicator stalled at {count} messages")
                time.sleep(0.05)
            done = time.monotonic()
            cpu_us = (cpu_seconds(proc.pid) - cpu_first) * 1e6 / args.rows
            peak_mb = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
        bridge_rate = args.rows / (done - first)
        print(f"pg_recvlogical (ceiling): {recv_rate:>10,.0f} rows/s  ({recv_seconds:.2f} s)")
        print(
            f"replicator → JetStream:   {bridge_rate:>10,.0f} rows/s  ({done - first:.2f} s from "
            f"first message; {first - launched:.2f} s start-up; {cpu_us:.1f} µs CPU/event; "
            f"peak RSS {peak_mb:.0f} MB)"
        )
        print(f"ratio replicator / pg_recvlogical: {bridge_rate / recv_rate:.2f}", flush=True)
    finally:
        pg.destroy()
        ns.destroy()
    return {
        "rows": rows,
        "rows_per_tx": rows_per_tx,
        "pg_recvlogical_rows_per_s": round(recv_rate),
        "replicator_rows_per_s": round(bridge_rate),
        "ratio": round(bridge_rate / recv_rate, 3),
        "cpu_us_per_event": round(cpu_us, 1),
        "peak_rss_mb": round(peak_mb),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-tx", type=int, default=1)
    args = parser.parse_args()
    measure(args.rows, args.rows_per_tx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
