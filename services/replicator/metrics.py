"""The replicator's Prometheus metrics (docs/services.md, "The replicator", lists them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.metrics import build_info, uptime_gauge

REGISTRY = CollectorRegistry()

uptime = uptime_gauge(REGISTRY, "replicator")
build = build_info(REGISTRY)
wal_messages = Counter(
    "bridge_wal_messages_received", "XLogData messages received from PostgreSQL", registry=REGISTRY
)
events_published = Counter(
    "bridge_cdc_events_published", "CDC messages acknowledged by JetStream", registry=REGISTRY
)
last_ack_lsn = Gauge(
    "bridge_last_ack_lsn", "Last LSN confirmed to PostgreSQL (as a number)", registry=REGISTRY
)
last_confirmed_at = Gauge(
    "bridge_slot_confirmed_timestamp_seconds",
    "Unix time the slot's confirmed position last advanced (the service's start before the "
    "first): the age of the slot's lag is now minus this",
    registry=REGISTRY,
)
last_confirmed_at.set_to_current_time()
connected = Gauge("bridge_connected", "1 while the pipeline streams", registry=REGISTRY)
tables_refused = Gauge(
    "bridge_tables_refused",
    "configured tables the replicator left out of the publication (/health says which and why)",
    registry=REGISTRY,
)
reconnects = Counter(
    "bridge_reconnects", "Pipeline restarts after a transient failure", registry=REGISTRY
)
processing_us = Gauge(
    "bridge_last_processing_time_us",
    "Decoding time of the last batch, microseconds per message",
    registry=REGISTRY,
)
slot_active = Gauge(
    "bridge_slot_active", "1 when the slot has an active walsender", registry=REGISTRY
)
wal_lag = Gauge(
    "bridge_wal_lag_bytes",
    "WAL bytes between the server's position and the slot's confirmed one",
    registry=REGISTRY,
)
in_flight_bytes = Gauge(
    "bridge_in_flight_bytes",
    "WAL bytes read and not yet acknowledged by JetStream",
    registry=REGISTRY,
)
publish_refusals = Counter(
    "bridge_publish_refusals",
    "Publishes JetStream refused or did not answer (each restarts the pipeline, which replays "
    "from the slot)",
    ["reason"],
    registry=REGISTRY,
)
for _reason in ("no_responders", "wrong_last_sequence", "refused", "ack_timeout"):
    publish_refusals.labels(_reason)  # at 0 from the start: increase() sees the first one
oversized_rows = Counter(
    "bridge_oversized_rows",
    "Rows larger than NATS max_payload sent to the dead-letter subject",
    registry=REGISTRY,
)
status_updates = Counter(
    "bridge_status_updates_sent", "Standby status updates sent to PostgreSQL", registry=REGISTRY
)
control_refused = Counter(
    "bridge_control_requests_refused",
    "Control requests over NATS refused (no or a wrong control token)",
    registry=REGISTRY,
)
