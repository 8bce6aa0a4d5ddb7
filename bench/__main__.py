"""`make bench`: every figure of the performance table in one run, each beside its ceiling
where it has one, printed and written to a JSON file so the next change can be compared.

    python -m bench [--out bench-results.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import (
    atomic_batches,
    cold_factor,
    consumer_backlog,
    fast_batch,
    live_latency,
    replicator_drain,
    schema_watch,
    snapshot_modes,
    snapshot_vs_copy,
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    started = time.time()
    print("--- backlog drain: 200k single-row transactions", flush=True)
    drain = replicator_drain.measure(200_000 // scale, 1)
    print("--- live load: single-row transactions at steady rates", flush=True)
    live = live_latency.measure(
        [1000.0, 5000.0, 10000.0], 10 / scale, 8, rounds=1 if args.quick else 3
    )
    live_pure = live_latency.measure(
        [10000.0], 10 / scale, 8, rounds=1 if args.quick else 3, pure=True
    )
    print("--- the machine: the same decoding back to back and after 10 ms asleep", flush=True)
    cold = cold_factor.measure(30_000 // scale)
    print("--- snapshot beside COPY", flush=True)
    snapshot = snapshot_vs_copy.measure(200_000 // scale)
    print("--- snapshot modes: rows/s and the longest transaction held", flush=True)
    modes = snapshot_modes.measure([200_000 // scale, 2_000_000 // scale])
    print("--- one 1M-row transaction: drain and peak RSS", flush=True)
    big = replicator_drain.measure(1_000_000 // scale, 1_000_000 // scale)
    print("--- consumers: a backlog beside the replicator's drain; pgbench", flush=True)
    consumers = consumer_backlog.measure(400_000 // scale, 20.0 / (4 if args.quick else 1))
    print("--- the schema watcher's poll: 10 and 1,000 tables", flush=True)
    watch = schema_watch.measure([10, 1000 // scale])
    print("--- transactions: JetStream atomic batches beside commit records", flush=True)
    atomic = atomic_batches.measure(5_000 // scale)
    print("--- publishing: JetStream fast batch beside the replicator's chained runs", flush=True)
    fast = fast_batch.measure(200_000 // scale, 1 if args.quick else 3)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "drain": drain,
        "live": live,
        "live_pure_python": live_pure,
        "cold_factor": cold,
        "snapshot": snapshot,
        "snapshot_modes": modes,
        "big_transaction": big,
        "consumers": consumers,
        "schema_watch": watch,
        "atomic_batches": atomic,
        "fast_batch": fast,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("--- summary")
    print(
        f"drain ratio replicator / pg_recvlogical: {drain['ratio']:.2f}, "
        f"{drain['cpu_us_per_event']} µs CPU/event ({drain['hot_path']}); pure-python "
        f"{drain['pure_python_ratio']:.2f}, {drain['pure_python_cpu_us_per_event']} µs CPU/event"
    )
    drain_user = drain["cpu_us_per_event"] - drain["kernel_cpu_us_per_event"]
    for r in live:
        user = r["cpu_us_per_event"] - r["kernel_cpu_us_per_event"]
        print(
            f"live {r['target_tx_per_s']:,.0f} tx/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"{r['cpu_us_per_event']} µs CPU/event "
            f"({r['cpu_us_per_event'] / drain['cpu_us_per_event']:.1f}x the drain's); outside "
            f"the kernel {user:.1f} µs ({user / drain_user:.1f}x the drain's {drain_user:.1f})"
        )
    for r in live_pure:
        print(
            f"live {r['target_tx_per_s']:,.0f} tx/s, pure-python: p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, {r['cpu_us_per_event']} µs CPU/event"
        )
    print(
        f"the same decoding after 10 ms asleep costs {cold['factor']:.2f}x as much as back to "
        'back on this machine (the floor under "x the drain\'s" at a 10 ms linger)'
    )
    print(
        f"snapshot ratio snapshot / COPY: {snapshot['ratio']:.2f} ({snapshot['hot_path']}), "
        f"{snapshot['pure_python_ratio']:.2f} (pure-python)"
    )
    for size in modes:
        for readers in snapshot_modes.READERS:
            exported, chunked = size[f"exported_{readers}"], size[f"chunked_{readers}"]
            print(
                f"snapshot modes, {size['rows']:,} rows, {readers} reader(s): exported "
                f"{exported['rows_per_s']:,} rows/s holding one transaction "
                f"{exported['longest_transaction_s']} s; chunked {chunked['rows_per_s']:,} "
                f"rows/s, longest transaction {chunked['longest_transaction_s']} s"
            )
    print(
        f"1M-row transaction: ratio replicator / pg_recvlogical {big['ratio']:.2f}, "
        f"{big['cpu_us_per_event']} µs CPU/event, peak RSS {big['peak_rss_mb']} MB; "
        f"pure-python {big['pure_python_ratio']:.2f}, {big['pure_python_cpu_us_per_event']} "
        f"µs CPU/event, peak RSS {big['pure_python_peak_rss_mb']} MB"
    )
    backlog, steady = consumers["backlog"], consumers["steady_load"]
    print(
        f"consumers: bridge replica {backlog['replica_changes_per_s']:,} changes/s, ratio "
        f"{backlog['replica_ratio']:.2f} to the replicator's drain (pure-python "
        f"{backlog['pure_python_replica_changes_per_s']:,}, "
        f"{backlog['pure_python_replica_ratio']:.2f}), {backlog['replica_to_bare_pull']:.2f} "
        f"of a bare pull ({backlog['bare_pull_messages_per_s']:,}/s, nats-server "
        f"{backlog['bare_pull_server_cpu_us_per_message']} µs CPU/message; "
        f"{backlog['replica_server_cpu_us_per_message']} while the replica applies); "
        f"TableFollower + MemoryCopy "
        f"ratio {backlog['library_ratio']:.2f}; under pgbench ({steady['events_per_s']:,} "
        f"events/s) the replica's lag is at most {steady['lag_max']:,} events"
    )
    for w in watch:
        print(
            f"schema watcher, {w['tables']:,} tables: {w['poll_ms']} ms a poll, "
            f"{100 * w['watcher_core_share']:.1f}% of a core for the watcher and "
            f"{100 * w['postgres_core_share']:.1f}% for PostgreSQL at one poll every 2 s"
        )
    print(
        f"publishing 200,000 messages: chained runs {fast['chained']['messages_per_s']:,}/s "
        f"({fast['chained']['server_cpu_us']} µs nats-server CPU each), fast batch "
        f"{fast['fast_batch']['messages_per_s']:,}/s ({fast['fast_batch']['server_cpu_us']} µs)"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
