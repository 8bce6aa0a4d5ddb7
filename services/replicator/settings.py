"""The replicator's settings: the shared ones plus the knobs of its data path."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.settings import BridgeSettings, CommaList, _split_commas
from shared.tables import TableName, TableNameError


class ReplicatorSettings(BridgeSettings):
    port: int = Field(9090, ge=0, le=65535, description="HTTP port for /health and /metrics")
    replica_identity_full: CommaList = Field(
        default_factory=list,
        description="Configured tables without a primary key to set REPLICA IDENTITY FULL on, "
        "comma-separated (otherwise they are refused); `all` for every such table. Each is "
        "logged by name",
    )

    _split_identity = field_validator("replica_identity_full", mode="before")(_split_commas)

    @model_validator(mode="after")
    def _identity_names(self) -> ReplicatorSettings:
        self.replica_identity_full_for()  # a name that is not one is a settings error
        return self

    def replica_identity_full_for(self) -> frozenset[TableName] | None:
        """The tables named, or None for `all` (`true`, as earlier releases took it)."""
        words = [w.strip() for w in self.replica_identity_full if w.strip()]
        if [w.lower() for w in words] in (["all"], ["true"]):
            return None
        if [w.lower() for w in words] in ([], ["false"]):
            return frozenset()
        try:
            return frozenset(map(TableName.parse, words))
        except TableNameError as exc:
            raise ValueError(f"--replica-identity-full: {exc}") from None

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
