"""Operator control over NATS (`<control_prefix>.<service>.<action>`, docs/operations.md): a
service's shutdown, and a chunked snapshot's pause, resume and cancel. Every request carries
the control token (`Authorization: Bearer <token>`); the answers are JSON, a refusal the
same `{"error", "reason"}` a snapshot request gets."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AUTHORIZATION = "Authorization"
CONTROL_ACTIONS = ("pause", "resume", "cancel")


class SnapshotControl(BaseModel):
    """`<control_prefix>.snapshotter.snapshot`: what to do with a table's chunked snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Literal["pause", "resume", "cancel"]
    table: str = Field(min_length=1, max_length=200)  # `schema.table`, a name or a token


class ControlReply(BaseModel):
    """What a control request that was obeyed is answered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str  # `shutting down`, `resumed`, `cancelled`, `pause requested: …`
    snapshot_id: str | None = None

    def encode(self) -> bytes:
        return json.dumps(self.model_dump(exclude_none=True)).encode()


class SnapshotRunning(BaseModel):
    """An interim message to a snapshot requester that asked for them (`Bridge-Heartbeat`):
    its snapshotter is alive and on it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["running"] = "running"

    def encode(self) -> bytes:
        return json.dumps(self.model_dump()).encode()
