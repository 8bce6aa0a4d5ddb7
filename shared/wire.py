"""Serialisation of the two planes: MessagePack for data, JSON for control."""

from __future__ import annotations

import json
from typing import Any

import msgpack


def pack(payload: Any) -> bytes:
    """MessagePack with the bin type for `bytes`, so bytea stays binary and text stays str."""
    return msgpack.packb(payload, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def to_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def from_json(data: bytes) -> Any:
    return json.loads(data) if data.strip() else {}
