"""Values in PostgreSQL's binary send format (pgoutput with `binary 'true'`).

The bridge asks for text format; this covers the types whose binary form is simple so a
binary-mode stream of ordinary tables still decodes, and names the type where it cannot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from shared.codec import oids
from shared.codec.errors import CodecError

BinaryConverter = Callable[[bytes], Any]


def _struct(fmt: str) -> BinaryConverter:
    unpack = struct.Struct(fmt).unpack

    def convert(raw: bytes) -> Any:
        try:
            return unpack(raw)[0]
        except struct.error:
            raise CodecError(f"binary value of {len(raw)} bytes does not fit {fmt!r}") from None

    return convert


def _jsonb(raw: bytes) -> str:
    if raw[:1] != b"\x01":
        raise CodecError("jsonb binary value does not start with format version 1")
    return raw[1:].decode()


_TYPED: dict[int, BinaryConverter] = {
    oids.INT2: _struct("!h"),
    oids.INT4: _struct("!i"),
    oids.INT8: _struct("!q"),
    oids.OID: _struct("!I"),
    oids.FLOAT4: _struct("!f"),
    oids.FLOAT8: _struct("!d"),
    oids.BOOL: lambda raw: raw == b"\x01",
    oids.BYTEA: bytes,
    oids.JSON: lambda raw: raw.decode(),
    oids.JSONB: _jsonb,
    **{oid: (lambda raw: raw.decode()) for oid in oids.TEXTS},
}


def binary_converter(type_oid: int) -> BinaryConverter:
    try:
        return _TYPED[type_oid]
    except KeyError:
        pass

    def unsupported(raw: bytes) -> Any:
        raise CodecError(
            f"type OID {type_oid} arrived in binary format, which the bridge does not decode; "
            "stream with binary 'false' (the bridge's default)"
        )

    return unsupported
