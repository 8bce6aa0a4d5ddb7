"""Benchmark: the two snapshot modes on the same table, beside a plain `COPY … TO STDOUT`.

For each size, one table; the COPY's rate is the ceiling of reading its rows. Then a snapshot
in each mode (`exported`: one transaction under one exported snapshot; `chunked`: primary-key
ranges of about a second each), its rate, and the longest transaction the snapshotter held
open, measured from outside: `pg_stat_activity` sampled every 20 ms (the age of the oldest
open transaction of a client backend other than this one) is how long the database's xmin
horizon was held back. One reader each: parallel reading is not built.

Prints figures; asserts nothing.

    python -m bench.snapshot_modes [--rows 200000 2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

import nats
import psycopg

from bench.snapshot_vs_copy import copy_rate, snapshot_stack

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


async def request(nats_url: str, mode: str) -> tuple[dict[str, Any], float]:
    nc = await nats.connect(nats_url)
    try:
        started = time.monotonic()
        body = json.dumps({"mode": mode}).encode()
        reply = await nc.request("bridge.snapshot.bench", body, timeout=1800)
        return json.loads(reply.data), time.monotonic() - started
    finally:
        await nc.close()


def measure_size(rows: int) -> dict[str, Any]:
    with snapshot_stack(rows) as (url, nats_url, _):
        ceiling = copy_rate(url, rows)
        out: dict[str, Any] = {"rows": rows, "copy_rows_per_s": round(ceiling)}
        print(f"{rows:,} rows: COPY … TO STDOUT (ceiling) {ceiling:,.0f} rows/s", flush=True)
        for mode in ("exported", "chunked"):
            with LongestTransaction(url) as held:
                meta, seconds = asyncio.run(request(nats_url, mode))
            if "error" in meta:
                raise SystemExit(f"{mode} snapshot failed: {meta['error']}")
            rate = rows / seconds
            out[mode] = {
                "rows_per_s": round(rate),
                "ratio_to_copy": round(rate / ceiling, 3),
                "seconds": round(seconds, 2),
                "longest_transaction_s": round(held.longest, 2),
                "readers": 1,
            }
            print(
                f"  {mode:>8}, 1 reader: {rate:>9,.0f} rows/s ({rate / ceiling:.2f} of COPY, "
                f"{seconds:.1f} s); longest transaction held {held.longest:.2f} s",
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
