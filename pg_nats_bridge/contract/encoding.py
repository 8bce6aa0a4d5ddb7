"""MessagePack as the bridge writes and reads it, in one place: `bytes` travel as the bin
type (bytea stays binary, text stays str), and a reader accepts any map key (a row of a table
whose column is named "1" is still a row)."""

from __future__ import annotations

from typing import Any

import msgpack

PACK_OPTIONS: dict[str, Any] = {"use_bin_type": True}
UNPACK_OPTIONS: dict[str, Any] = {"raw": False, "strict_map_key": False}


def pack(payload: Any) -> bytes:
    return msgpack.packb(payload, **PACK_OPTIONS)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, **UNPACK_OPTIONS)


def packer() -> msgpack.Packer:
    """A reusable packer with the same options (hot paths pack piece by piece)."""
    return msgpack.Packer(**PACK_OPTIONS)
