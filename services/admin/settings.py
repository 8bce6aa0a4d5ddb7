"""The admin service's settings."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import BridgeSettings


class AdminSettings(BridgeSettings):
    port: int = Field(8080, ge=0, le=65535, description="HTTP port of the admin API")
    host: str = Field("0.0.0.0", description="Address the admin API listens on")
    replicator_url: str = Field(
        "http://localhost:9090", description="Base URL of the replicator's /health and /metrics"
    )
    snapshotter_url: str = Field(
        "http://localhost:9091", description="Base URL of the snapshotter's /health and /metrics"
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for mutating endpoints; unset: they answer 403"
    )
    probe_timeout_seconds: float = Field(
        2.0, gt=0, description="Timeout of each health probe and metrics fetch"
    )
