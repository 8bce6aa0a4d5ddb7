"""Benchmark: a snapshot through the snapshotter beside a plain `COPY … TO STDOUT`.

Same table, same run. The COPY is the ceiling of reading the rows; the snapshot also decodes
every value, encodes MessagePack chunks and waits for JetStream's PubAck of each.

    python -m bench.snapshot_vs_copy [--rows 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg

from pg_nats_bridge.snapshot_request import ask_for_snapshot
from shared.compiled import HOT_PATH
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.processes import free_port, peak_rss_mb


def copy_rate(url: str, rows: int) -> float:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.monotonic()
        with cur.copy("COPY bench TO STDOUT") as copy:
            for _ in copy:
                pass
        return rows / (time.monotonic() - started)


async def snapshot(url: str) -> tuple[dict[str, object], float]:
    nc = await nats.connect(url)
    try:
        started = time.monotonic()
        # As the library and `bridge snapshot` ask (pg_nats_bridge/snapshot_request.py).
        meta = await ask_for_snapshot(nc, nc.jetstream(), "bench", {}, table="public.bench")
        return meta, time.monotonic() - started
    finally:
        await nc.close()


@contextlib.contextmanager
def bench_servers(rows: int) -> Iterator[tuple[str, str]]:
    """PostgreSQL with a `rows`-row table `bench` (analyzed) and NATS: their URLs."""
    pg, ns = PostgresServer.create(), NatsServer.create()
    try:
        url = pg.url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE bench (id int PRIMARY KEY, name text, amount numeric, ok bool,"
                " at timestamptz)"
            )
            conn.execute(
                "INSERT INTO bench SELECT g, 'name ' || g, g * 1.25, g %% 2 = 0, now()"
                " FROM generate_series(1, %s) g",
                (rows,),
            )
            conn.execute("VACUUM ANALYZE bench")
        yield url, ns.url
    finally:
        pg.destroy()
        ns.destroy()


@contextlib.contextmanager
def running_snapshotter(
    url: str, nats_url: str, **settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A snapshotter serving `bench` (settings as BRIDGE_ variables), healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_DATABASE_URL=url,
        BRIDGE_NATS_URL=nats_url,
        BRIDGE_TABLE="bench",
        BRIDGE_PORT=str(port),
        BRIDGE_LOG_LEVEL="WARNING",
        **{f"BRIDGE_{k.upper()}": v for k, v in settings.items()},
    )
    bridge = str(Path(sys.executable).parent / "bridge")
    proc = subprocess.Popen(
        [bridge, "snapshotter"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("snapshotter did not become healthy")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def snapshot_stack(rows: int) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """`bench_servers` and a snapshotter serving the table: (the database URL, the NATS URL,
    the snapshotter's process)."""
    with bench_servers(rows) as (url, nats_url), running_snapshotter(url, nats_url) as proc:
        yield url, nats_url, proc


def measure(rows: int) -> dict[str, Any]:
    """Snapshot a `rows`-row table beside a plain COPY of it, on the snapshotter's hot path
    and then on the pure-Python one (BRIDGE_PURE_PYTHON=1, the before); the figures."""
    with snapshot_stack(rows) as (url, nats_url, proc):
        ceiling = copy_rate(url, rows)
        meta, seconds = asyncio.run(snapshot(nats_url))
        rate = rows / seconds
        peak_mb = peak_rss_mb(proc.pid)
        print(f"snapshot table: {rows:,} rows, {meta['batch_count']} chunks")
        print(f"COPY … TO STDOUT (ceiling): {ceiling:>10,.0f} rows/s")
        print(
            f"snapshot → JetStream INIT:  {rate:>10,.0f} rows/s  ({seconds:.2f} s; "
            f"peak RSS {peak_mb:.0f} MB; {HOT_PATH})"
        )
        with running_snapshotter(url, nats_url, pure_python="1"):
            _, pure_seconds = asyncio.run(snapshot(nats_url))
        pure_rate = rows / pure_seconds
        print(f"the same, pure-python:      {pure_rate:>10,.0f} rows/s  ({pure_seconds:.2f} s)")
        print(
            f"ratio snapshot / COPY: {rate / ceiling:.2f} ({HOT_PATH}), "
            f"{pure_rate / ceiling:.2f} (pure-python)",
            flush=True,
        )
    return {
        "rows": rows,
        "hot_path": HOT_PATH,
        "copy_rows_per_s": round(ceiling),
        "snapshot_rows_per_s": round(rate),
        "ratio": round(rate / ceiling, 3),
        "peak_rss_mb": round(peak_mb),
        "pure_python_rows_per_s": round(pure_rate),
        "pure_python_ratio": round(pure_rate / ceiling, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    measure(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
