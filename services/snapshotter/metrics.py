"""The snapshotter's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pg_nats_bridge.contract import REFUSALS
from shared.metrics import build_info, uptime_gauge

REGISTRY = CollectorRegistry()

uptime = uptime_gauge(REGISTRY, "snapshotter")
build = build_info(REGISTRY)
rows = Counter(
    "bridge_snapshot_rows_published", "Snapshot rows published to INIT", registry=REGISTRY
)
chunks = Counter(
    "bridge_snapshot_chunks_published",
    "Snapshot chunks acknowledged by JetStream",
    registry=REGISTRY,
)
in_progress = Gauge("bridge_snapshots_in_progress", "Snapshots running now", registry=REGISTRY)
duration = Histogram(
    "bridge_snapshot_duration_seconds",
    "Duration of completed snapshots",
    registry=REGISTRY,
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
)
errors = Counter(
    "bridge_snapshot_errors",
    "Snapshot requests answered with an error",
    ["reason"],
    registry=REGISTRY,
)
for _reason in sorted(REFUSALS):
    errors.labels(_reason)  # at 0 from the start: increase() sees the first one
schemas = Counter(
    "bridge_schema_documents_published",
    "Schema documents published to KV and INIT",
    registry=REGISTRY,
)
foreign_values = Counter(
    "bridge_schema_foreign_values",
    "KV values in the schemas bucket that were not schema documents, replaced",
    registry=REGISTRY,
)
control_refused = Counter(
    "bridge_control_requests_refused",
    "Control requests over NATS refused (no or a wrong control token)",
    registry=REGISTRY,
)
# A running snapshot's progress, by table (services/snapshotter/progress.py); a table's series
# exist while it is snapshotted.
progress_rows = Gauge(
    "bridge_snapshot_progress_rows",
    "Rows a running snapshot has published so far",
    ["table"],
    registry=REGISTRY,
)
progress_estimated = Gauge(
    "bridge_snapshot_progress_estimated_rows",
    "PostgreSQL's row estimate of the table a running snapshot reads (absent when unknown)",
    ["table"],
    registry=REGISTRY,
)
progress_rate = Gauge(
    "bridge_snapshot_progress_rows_per_second",
    "Rows per second of a running snapshot since it began",
    ["table"],
    registry=REGISTRY,
)
progress_seconds_left = Gauge(
    "bridge_snapshot_progress_seconds_left",
    "Seconds until a running snapshot reaches the estimate at its rate so far",
    ["table"],
    registry=REGISTRY,
)
