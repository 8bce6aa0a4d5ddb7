"""The snapshotter's settings: the shared ones plus snapshot and schema knobs."""

from __future__ import annotations

from pydantic import Field

from pg_nats_bridge.contract import MAX_CHUNK_SIZE
from shared.settings import BridgeSettings


class SnapshotterSettings(BridgeSettings):
    port: int = Field(9091, ge=0, le=65535, description="HTTP port for /health and /metrics")
    queue_group: str = Field(
        "bridge-snapshotters", description="NATS queue group shared by all snapshotters"
    )
    chunk_size: int = Field(
        1000,
        ge=1,
        le=MAX_CHUNK_SIZE,
        description="Rows per snapshot chunk (requests may ask for 1 to 10000)",
    )
    snapshot_on_start: bool = Field(
        False, description="At start, snapshot every table that has no snapshot in INIT yet"
    )
    schema_poll_seconds: float = Field(
        2.0, gt=0, description="How often the catalog is checked for schema changes"
    )
    max_concurrent_snapshots: int = Field(
        4, ge=1, le=64, description="Snapshots one snapshotter runs at once"
    )
    snapshot_transaction_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Chunked snapshots: about how long one reading transaction lasts (the "
        "xmin horizon is held no longer); the rows per transaction adapt to it",
    )
    snapshot_readers: int = Field(
        1,
        ge=1,
        le=16,
        description="Reader processes per snapshot, each reading a primary-key segment (both "
        "modes); 1 reads in the snapshotter itself",
    )
    snapshot_rows_per_reader: int = Field(
        500_000,
        ge=1,
        description="The fewest rows (the planner's estimate) worth another reader: a reader "
        "process costs about 0.3 s to start, so a smaller table gets fewer readers",
    )
    snapshot_takeover_seconds: float = Field(
        60.0,
        ge=10,
        le=3600,
        description="Chunked snapshots: a snapshot whose reader recorded no progress for this "
        "long is continued by the next request for it (the reader died)",
    )
