"""Benchmark: drain a backlog through the replicator and through pg_recvlogical.

Both read the same WAL (pgoutput slots created before the load) in the same run, in
alternating rounds, so the ratio compares the replicator (decode, encode, publish to
JetStream, wait for PubAcks) with the ceiling of just receiving the bytes. Each round runs
the replicator twice, with its compiled hot path and with the pure-Python one
(BRIDGE_PURE_PYTHON=1, shared/compiled): before and after, in the same run.
Prints figures; asserts nothing.

    python -m bench.replicator_drain [--rows 200000] [--rows-per-tx 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg

from pg_nats_bridge import contract
from shared.compiled import HOT_PATH, PURE_PYTHON_VARIABLE
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.processes import cpu_times, free_port, peak_rss_mb

_LOAD = """
CREATE PROCEDURE bench_load(total int, per_tx int) LANGUAGE plpgsql AS $$
BEGIN
    FOR start IN 0 .. total - 1 BY per_tx LOOP
        INSERT INTO bench SELECT g, 'name ' || g, g * 1.5
            FROM generate_series(start, least(start + per_tx, total) - 1) g;
        COMMIT;
    END LOOP;
END $$
"""


def load(url: str, rows: int, per_tx: int) -> None:
    """`rows` rows in transactions of `per_tx` rows, each committed on its own (a procedure
    that commits in its loop: a client's pipelined `executemany` would be one implicit
    transaction). The load's own commits need not wait for the disk: the backlog, not the
    load, is measured."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_LOAD)
        conn.execute("SET synchronous_commit = off")
        conn.execute("CALL bench_load(%s, %s)", (rows, per_tx))
        # Decoding reads only flushed WAL: wait for the WAL writer to flush the last commits.
        while conn.execute(
            "SELECT pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn()"
        ).fetchone() != (False,):
            time.sleep(0.05)


def transactions(url: str, slot: str, end_lsn: str) -> int:
    """Transactions on `slot` up to `end_lsn` (peeked: the slot does not move)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL,"
            " 'proto_version', '1', 'publication_names', 'bench_pub')"
            " WHERE substr(data, 1, 1) = 'C'::bytea",
            (slot, end_lsn),
        ).fetchone()
    assert row is not None
    return int(row[0])


def cdc_state(url: str) -> tuple[int, int]:
    """The CDC stream's message count and last sequence ((0, 0) while it does not exist)."""

    async def read() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            state = (await nc.jetstream().stream_info(contract.CDC_STREAM)).state
            return int(state.messages), int(state.last_seq)
        except Exception:
            return 0, 0
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_count(url: str) -> int:
    return cdc_state(url)[0]


def delete_stream(url: str) -> None:
    """A fresh CDC stream for the next round (its duplicate window would drop a replay)."""

    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(contract.CDC_STREAM)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(delete())


def recvlogical_rate(pg: PostgresServer, slot: str, end_lsn: str, rows: int) -> float:
    """pg_recvlogical draining `slot` to `end_lsn`, rows/s from its first byte of output (the
    replicator's rate is taken from its first message, so neither counts its start-up)."""
    recv = [
        str(pg.bindir / "pg_recvlogical"),
        "-d",
        pg.url(),
        "--slot",
        slot,
        "--start",
        "--endpos",
        end_lsn,
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=bench_pub",
        "-f",
        "-",
        "--no-loop",
    ]
    proc = subprocess.Popen(recv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.monotonic()
    while proc.stdout.read(1 << 20):
        pass
    if proc.wait() != 0:
        raise SystemExit(f"pg_recvlogical exited with {proc.returncode}")
    return rows / (time.monotonic() - first)


def replicator_env(database_url: str, nats_url: str, table: str, **more: str) -> dict[str, str]:
    """The environment a benchmark runs `bridge replicator` in: this process's, less any
    BRIDGE_* setting, plus the servers, the table, a free port, quiet logs and an hour of CDC
    retention (a run must not age out of the stream)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_NATS_URL=nats_url,
        BRIDGE_TABLE=table,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_CDC_MAX_AGE_SECONDS="3600",
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_METRICS_LOG_SECONDS="3600",
        **more,
    )
    return env


def replicator_run(
    pg: PostgresServer, ns: NatsServer, slot: str, rows: int, transactions: int, pure: bool
) -> dict[str, float]:
    """The replicator draining `slot` into a fresh CDC stream (a message per row, a commit
    record per transaction, the table's schema change): rows/s from its first message, CPU
    per event and peak RSS. `pure`: on the pure-Python hot path."""
    delete_stream(ns.url)
    env = replicator_env(
        pg.url(), ns.url, "bench", BRIDGE_SLOT=slot, BRIDGE_PUBLICATION="bench_pub",
        **({PURE_PYTHON_VARIABLE: "1"} if pure else {}),
    )  # fmt: skip
    bridge = str(Path(sys.executable).parent / "bridge")
    log_path = pg.root / f"replicator-{slot}.log"
    log = open(log_path, "wb")  # noqa: SIM115
    launched = time.monotonic()
    proc = subprocess.Popen([bridge, "replicator"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while stream_count(ns.url) == 0:
            if proc.poll() is not None or time.monotonic() - launched > 60:
                raise SystemExit(f"replicator did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        first = time.monotonic()
        cpu_first = cpu_times(proc.pid)
        # The stream's last sequence: it keeps at most 1,000,000 messages (the seed's limit),
        # and the 1M-row transaction's commit record is its 1,000,001st. Besides the rows and
        # the records, the table's shape before its first change (a schema change).
        while (count := cdc_state(ns.url)[1]) < rows + transactions + 1:
            if time.monotonic() - first > 600:
                raise SystemExit(f"replicator stalled at {count} messages")
            time.sleep(0.05)
        done = time.monotonic()
        user, system = (b - a for a, b in zip(cpu_first, cpu_times(proc.pid), strict=True))
        cpu_us, kernel_us = (user + system) * 1e6 / rows, system * 1e6 / rows
        peak_mb = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    rate = rows / (done - first)
    return {"rate": rate, "cpu_us": cpu_us, "kernel_us": kernel_us, "peak_mb": peak_mb}


def measure(rows: int, rows_per_tx: int, rounds: int = 3) -> dict[str, Any]:
    """Drain `rows` rows through pg_recvlogical and the replicator, `rounds` times each,
    alternating (one slot per run, all on the same backlog); the median figures.

    pg_recvlogical's rate on this kind of machine varies by a factor of two or more between
    runs of the same backlog (one run: 180k to 520k rows/s), so one run of each says little:
    the ratio is that of the medians, and both spreads are printed beside it."""
    pg, ns = PostgresServer.create(), NatsServer.create()
    try:
        url = pg.url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id int PRIMARY KEY, name text, amount float8)")
            conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
            for i in range(rounds):
                for slot in (f"bench_bridge_{i}", f"bench_pure_{i}", f"bench_recv_{i}"):
                    conn.execute(
                        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
                    )
        started = time.monotonic()
        load(url, rows, rows_per_tx)
        with psycopg.connect(url) as conn:
            (end_lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
            (wal_bytes,) = conn.execute(  # type: ignore[misc]
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = 'bench_recv_0'"
            ).fetchone()
        txs = transactions(url, "bench_recv_0", end_lsn)
        if txs != -(-rows // rows_per_tx):
            raise SystemExit(f"the backlog has {txs} transactions, not {-(-rows // rows_per_tx)}")
        print(
            f"backlog: {rows:,} rows in {txs:,} transactions, "
            f"{wal_bytes / 1e6:.0f} MB of WAL (loaded in {time.monotonic() - started:.1f} s)"
        )
        recv_rates: list[float] = []
        runs: list[dict[str, float]] = []
        pure_runs: list[dict[str, float]] = []
        for i in range(rounds):
            recv_rates.append(recvlogical_rate(pg, f"bench_recv_{i}", end_lsn, rows))
            runs.append(replicator_run(pg, ns, f"bench_bridge_{i}", rows, txs, pure=False))
            pure_runs.append(replicator_run(pg, ns, f"bench_pure_{i}", rows, txs, pure=True))
            print(
                f"round {i + 1}: pg_recvlogical {recv_rates[-1]:>9,.0f} rows/s, "
                f"replicator ({HOT_PATH}) {runs[-1]['rate']:>9,.0f} rows/s "
                f"({runs[-1]['cpu_us']:.1f} µs CPU/event, peak RSS {runs[-1]['peak_mb']:.0f} MB), "
                f"pure-python {pure_runs[-1]['rate']:>9,.0f} rows/s "
                f"({pure_runs[-1]['cpu_us']:.1f} µs CPU/event)",
                flush=True,
            )
    finally:
        pg.destroy()
        ns.destroy()
    recv_rate = statistics.median(recv_rates)
    bridge_rate = statistics.median(r["rate"] for r in runs)
    cpu_us = statistics.median(r["cpu_us"] for r in runs)
    kernel_us = statistics.median(r["kernel_us"] for r in runs)
    peak_mb = max(r["peak_mb"] for r in runs)
    bridge_rates = [r["rate"] for r in runs]
    pure_rate = statistics.median(r["rate"] for r in pure_runs)
    pure_cpu_us = statistics.median(r["cpu_us"] for r in pure_runs)
    print(
        f"median of {rounds}: pg_recvlogical (ceiling) {recv_rate:,.0f} rows/s "
        f"[{min(recv_rates):,.0f} to {max(recv_rates):,.0f}], replicator → JetStream "
        f"{bridge_rate:,.0f} rows/s [{min(bridge_rates):,.0f} to {max(bridge_rates):,.0f}], "
        f"{cpu_us:.1f} µs CPU/event ({kernel_us:.1f} in the kernel), peak RSS {peak_mb:.0f} MB"
    )
    print(f"pure-python hot path (before): {pure_rate:,.0f} rows/s, {pure_cpu_us:.1f} µs CPU/event")
    print(
        f"ratio replicator / pg_recvlogical: {bridge_rate / recv_rate:.2f} ({HOT_PATH}), "
        f"{pure_rate / recv_rate:.2f} (pure-python)",
        flush=True,
    )
    return {
        "hot_path": HOT_PATH,
        "rows": rows,
        "rows_per_tx": rows_per_tx,
        "rounds": rounds,
        "pg_recvlogical_rows_per_s": round(recv_rate),
        "pg_recvlogical_runs": [round(r) for r in recv_rates],
        "replicator_rows_per_s": round(bridge_rate),
        "replicator_runs": [round(r["rate"]) for r in runs],
        "ratio": round(bridge_rate / recv_rate, 3),
        "cpu_us_per_event": round(cpu_us, 1),
        "kernel_cpu_us_per_event": round(kernel_us, 2),
        "peak_rss_mb": round(peak_mb),
        "pure_python_rows_per_s": round(pure_rate),
        "pure_python_runs": [round(r["rate"]) for r in pure_runs],
        "pure_python_ratio": round(pure_rate / recv_rate, 3),
        "pure_python_cpu_us_per_event": round(pure_cpu_us, 1),
        "pure_python_peak_rss_mb": round(max(r["peak_mb"] for r in pure_runs)),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-tx", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measure(args.rows, args.rows_per_tx, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
