"""Benchmark: the two snapshot modes on the same table, beside a plain `COPY … TO STDOUT`.

For each size, one table; the COPY's rate is the ceiling of reading its rows. Then a snapshot
in each mode (`exported`: one transaction under one exported snapshot; `chunked`: primary-key
ranges of about a second each), its rate, and the longest transaction the snapshotter held
open, measured from outside: `pg_stat_activity` sampled every 20 ms (the age of the oldest
open transaction of a client backend other than this one) is how long the database's xmin
horizon was held back. Each with 1, 2 and 4 reader processes (`--snapshot-readers`), and
the CPU seconds the snapshotter (with its readers), PostgreSQL and NATS spent: on a machine
with fewer cores than that work wants, readers cannot go faster than the cores allow.

Prints figures; asserts nothing.

    python -m bench.snapshot_modes [--rows 200000 2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.snapshot_vs_copy import bench_servers, copy_rate, running_snapshotter
from pg_nats_bridge.snapshot_request import ask_for_snapshot

OLDEST_TRANSACTION = (
    "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    " AND xact_start IS NOT NULL"
)


class LongestTransaction:
    """The oldest open transaction's age, sampled every 20 ms while running."""

    def __init__(self, url: str) -> None:
        self.url, self.longest = url, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.02):
                (age,) = conn.execute(OLDEST_TRANSACTION).fetchone() or (0,)
                self.longest = max(self.longest, float(age))

    def __enter__(self) -> LongestTransaction:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


READERS = (1, 2, 4)


async def request(nats_url: str, mode: str) -> tuple[dict[str, Any], float]:
    nc = await nats.connect(nats_url)
    try:
        started = time.monotonic()
        js = nc.jetstream()
        # As the library and `bridge snapshot` ask (pg_nats_bridge/snapshot_request.py).
        meta = await ask_for_snapshot(nc, js, "bench", {"mode": mode}, table="public.bench")
        seconds = time.monotonic() - started
        await js.purge_stream("INIT")  # room for the next one
        return meta, seconds
    finally:
        await nc.close()


def cpu_seconds(pids: list[int], own: bool = True, children: bool = True) -> float:
    """User + system CPU seconds of these processes (`own`) and of their reaped children."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # Fields 14-17 of proc(5): utime stime cutime cstime.
            times = [int(f) for f in fields[11:15]]
            total += (sum(times[:2]) * own + sum(times[2:]) * children) / tick
    return total


def server_pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def measure_size(rows: int) -> dict[str, Any]:
    with bench_servers(rows) as (url, nats_url):
        ceiling = copy_rate(url, rows)
        out: dict[str, Any] = {"rows": rows, "copy_rows_per_s": round(ceiling)}
        print(f"{rows:,} rows: COPY … TO STDOUT (ceiling) {ceiling:,.0f} rows/s", flush=True)
        others = server_pids("postgres|nats-server")
        for readers in READERS:
            # Every reader asked for is used (by default a table gets one per 500,000 rows).
            with running_snapshotter(
                url, nats_url, snapshot_readers=str(readers), snapshot_rows_per_reader="1"
            ) as proc:
                for mode in ("exported", "chunked"):
                    before = (
                        cpu_seconds([proc.pid], children=False),
                        cpu_seconds([proc.pid], own=False),
                        cpu_seconds(others),
                    )
                    with LongestTransaction(url) as held:
                        meta, seconds = asyncio.run(request(nats_url, mode))
                    if "error" in meta:
                        raise SystemExit(f"{mode} snapshot failed: {meta['error']}")
                    main_cpu = cpu_seconds([proc.pid], children=False) - before[0]
                    readers_cpu = cpu_seconds([proc.pid], own=False) - before[1]
                    bridge_cpu = main_cpu + readers_cpu
                    servers_cpu = cpu_seconds(others) - before[2]
                    rate = rows / seconds
                    out[f"{mode}_{readers}"] = {
                        "mode": mode,
                        "readers": readers,
                        "rows_per_s": round(rate),
                        "ratio_to_copy": round(rate / ceiling, 3),
                        "seconds": round(seconds, 2),
                        "longest_transaction_s": round(held.longest, 2),
                        "snapshotter_cpu_s": round(bridge_cpu, 2),
                        "snapshotter_main_cpu_s": round(main_cpu, 2),
                        "servers_cpu_s": round(servers_cpu, 2),
                    }
                    print(
                        f"  {mode:>8}, {readers} reader{'s' if readers > 1 else ' '}: "
                        f"{rate:>9,.0f} rows/s ({rate / ceiling:.2f} of COPY, {seconds:.1f} s); "
                        f"longest transaction {held.longest:.2f} s; CPU: snapshotter "
                        f"{bridge_cpu:.1f} s (its main process {main_cpu:.1f} s), "
                        f"PostgreSQL+NATS {servers_cpu:.1f} s",
                        flush=True,
                    )
    return out


def measure(sizes: list[int]) -> list[dict[str, Any]]:
    return [measure_size(rows) for rows in sizes]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    args = parser.parse_args()
    measure(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
