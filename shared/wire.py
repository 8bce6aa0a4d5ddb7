"""Serialisation of the two planes: MessagePack for data, JSON for control."""

from __future__ import annotations

import json
from typing import Any

from pg_nats_bridge.contract.encoding import pack, unpack

__all__ = ["from_json", "pack", "to_json", "unpack"]


def to_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def from_json(data: bytes) -> Any:
    return json.loads(data) if data.strip() else {}
