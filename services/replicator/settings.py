"""The replicator's settings: the shared ones plus the knobs of its data path."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import BridgeSettings


class ReplicatorSettings(BridgeSettings):
    port: int = Field(9090, ge=0, le=65535, description="HTTP port for /health and /metrics")
    replica_identity_full: bool = Field(
        False,
        description="Set REPLICA IDENTITY FULL on configured tables that have no primary key "
        "(otherwise they are refused)",
    )
    oversized_policy: Literal["dead-letter", "stop"] = Field(
        "dead-letter",
        description="A row larger than NATS max_payload: publish a marker on "
        "cdc.~oversized.<table> (dead-letter) or stop with an error (stop)",
    )
    max_in_flight_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="memory held by changes read but not yet acknowledged by JetStream (their "
        "WAL bytes plus ~320 bytes each for the decoded event) before reading pauses",
    )
    max_in_flight_messages: int = Field(
        20_000, gt=0, description="messages published and awaiting their PubAck"
    )
    batch_linger_seconds: float = Field(
        0.01,
        ge=0,
        le=1,
        description="how long a batch gathers changes once PostgreSQL has sent all it had: "
        "at high rates longer batches cost less CPU per change; a change waits at most this long",
    )
    ack_timeout_seconds: float = Field(
        10.0, gt=0, description="a PubAck later than this restarts the pipeline"
    )
    status_interval_seconds: float = Field(
        10.0, gt=0, le=60, description="most seconds between standby status updates"
    )
    shutdown_drain_seconds: float = Field(
        10.0, ge=0, description="time to finish in-flight publishes at shutdown"
    )
    failover_slot: bool = Field(
        True,
        description="On PostgreSQL 17+, the slot is a failover slot (a standby with slot "
        "synchronization keeps it; see High availability); ignored before 17",
    )
    slot_check_seconds: float = Field(
        30.0, gt=0, description="interval of the slot lag and activity check"
    )
    metrics_log_seconds: float = Field(
        15.0, gt=0, description="Seconds between logfmt METRICS lines on stdout"
    )
