"""Benchmark: the replicator following live traffic of single-row transactions.

pgbench commits single-row INSERT transactions at a steady rate (`--rate`, several
connections, `synchronous_commit = on`, as applications run); the replicator streams them.
(pgbench, in C, rather than a Python writer: on two cores a Python writer spent the CPU the
10,000 tx/s run needed and reached 6,200 tx/s.)
Latency is JetStream's store timestamp of each message minus the event's `commit_time` (same
machine, same clock); CPU per event is the replicator's CPU time over the run divided by the
events. Prints figures; asserts nothing.

    python -m bench.live_latency [--rates 1000,5000] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import psycopg

from bench.replicator_drain import replicator_env, stream_count
from pg_nats_bridge import contract
from shared.compiled import HOT_PATH, PURE_PYTHON_VARIABLE
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.processes import cpu_times

_SCRIPT = "INSERT INTO live (writer, n, note) VALUES (:client_id, 0, 'x');\n"


def write(pg: PostgresServer, rate: float, seconds: float, connections: int) -> tuple[int, float]:
    """pgbench at `rate` tx/s for `seconds`: the transactions committed and the seconds taken."""
    script = pg.root / "live.sql"
    script.write_text(_SCRIPT)
    started = time.monotonic()
    done = subprocess.run(
        [
            str(pg.bindir / "pgbench"), "--no-vacuum", "--client", str(connections),
            "--jobs", "2", "--rate", str(rate), "--time", str(round(seconds)),
            "--file", str(script), pg.url(),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    took = time.monotonic() - started
    found = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    if found is None:
        raise SystemExit(f"pgbench said nothing of its transactions:\n{done.stdout}")
    return int(found.group(1)), took


def _commit_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


async def latencies(url: str, expected: int) -> list[float]:
    """Store time minus commit time of every message on CDC, in seconds."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(contract.cdc_filter(), ordered_consumer=True)
        out: list[float] = []
        commits = contract.commit_subject()
        while len(out) < expected:
            msg = await sub.next_msg(timeout=30)
            if msg.subject == commits or contract.is_schema_change(msg.subject):
                continue  # the changes' latency (not the records', nor a table's shape)
            event = msgpack.unpackb(msg.data)
            stored = msg.metadata.timestamp.timestamp()
            out.append(stored - _commit_time(event["commit_time"]))
        return out
    finally:
        await nc.close()


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_rate(rate: float, seconds: float, connections: int, pure: bool = False) -> dict[str, Any]:
    with PostgresServer.create() as pg, NatsServer.create() as ns:
        url = pg.url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE live (id bigserial PRIMARY KEY, writer int, n int, note text,"
                " at timestamptz DEFAULT now())"
            )
        env = replicator_env(url, ns.url, "live", **({PURE_PYTHON_VARIABLE: "1"} if pure else {}))
        bridge = str(Path(sys.executable).parent / "bridge")
        with open(pg.root / "replicator.log", "wb") as log:
            proc = subprocess.Popen([bridge, "replicator"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not healthy(int(env["BRIDGE_PORT"])):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((pg.root / "replicator.log").read_text()[-2000:])
                time.sleep(0.05)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO live (writer, n) VALUES (-1, 0)")  # warm-up event
            while stream_count(ns.url) < 1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((pg.root / "replicator.log").read_text()[-2000:])
                time.sleep(0.05)
            cpu_before = cpu_times(proc.pid)
            written, took = write(pg, rate, seconds, connections)
            total = written + 1
            deadline = time.monotonic() + 300
            while stream_count(ns.url) < total:
                if time.monotonic() > deadline:
                    raise SystemExit("the replicator fell behind for 5 minutes")
                time.sleep(0.05)
            user, system = (b - a for a, b in zip(cpu_before, cpu_times(proc.pid), strict=True))
            cpu = user + system
        finally:
            proc.terminate()
            proc.wait(30)
        lat = asyncio.run(latencies(ns.url, total))[1:]
    achieved = written / took
    return {
        "target_tx_per_s": rate,
        "achieved_tx_per_s": round(achieved),
        "events": written,
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1),
        "cpu_us_per_event": round(cpu / written * 1e6, 1),
        "kernel_cpu_us_per_event": round(system / written * 1e6, 2),
        "cpu_share_of_a_core": round(cpu / took, 2),
    }


def measure(
    rates: list[float], seconds: float, connections: int, rounds: int = 3, pure: bool = False
) -> list[dict[str, Any]]:
    """Each rate `rounds` times (the runs' CPU per event spread by a fifth on this machine):
    the medians of each figure, the worst max, and every run. `pure`: the replicator on the
    pure-Python hot path."""
    results = []
    for rate in rates:
        runs = [run_rate(rate, seconds, connections, pure) for _ in range(rounds)]
        r = dict(runs[0])
        for key in ("achieved_tx_per_s", "events", "p50_ms", "p99_ms", "cpu_us_per_event",
                    "kernel_cpu_us_per_event", "cpu_share_of_a_core"):  # fmt: skip
            r[key] = statistics.median(run[key] for run in runs)
        r["max_ms"] = max(run["max_ms"] for run in runs)
        r["runs"] = runs
        cpus = sorted(run["cpu_us_per_event"] for run in runs)
        p99s = sorted(run["p99_ms"] for run in runs)
        print(
            f"live {r['target_tx_per_s']:>6,.0f} tx/s{' pure-python' if pure else ''} "
            f"(achieved {r['achieved_tx_per_s']:,}), "
            f"median of {rounds}: commit → stored p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms "
            f"[{p99s[0]} to {p99s[-1]}], max {r['max_ms']} ms; CPU {r['cpu_us_per_event']} "
            f"µs/event [{cpus[0]} to {cpus[-1]}], {r['kernel_cpu_us_per_event']} of it in the "
            f"kernel ({r['cpu_share_of_a_core']:.0%} of a core)",
            flush=True,
        )
        r["hot_path"] = "pure-python" if pure else HOT_PATH
        results.append(r)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(json.dumps(measure(rates, args.seconds, args.connections, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
