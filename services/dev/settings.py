"""Settings of `bridge dev` and `bridge run`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import BridgeSettings


class DevSettings(BridgeSettings):
    data_dir: Path = Field(
        Path(".bridge"), description="bridge dev: where the embedded servers keep their data"
    )
    replicator_port: int = Field(
        9090, ge=0, le=65535, description="bridge dev/run: replicator HTTP port"
    )
    snapshotter_port: int = Field(
        9091, ge=0, le=65535, description="bridge dev/run: snapshotter HTTP port"
    )
    pg_port: int = Field(54329, ge=1, le=65535, description="bridge dev: embedded PostgreSQL port")
    nats_port: int = Field(
        42229, ge=1, le=65535, description="bridge dev: embedded nats-server port"
    )
