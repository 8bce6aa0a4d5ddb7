"""psycopg loaders that turn `COPY … TO STDOUT` text into exactly the values the value codec
gives CDC events (shared/codec/text.py), but in C: a snapshot decodes millions of values and
psycopg's C loaders (used automatically with psycopg[binary]) do each in a fraction of what a
Python converter call costs.

The correspondence, per value mode: `typed` — integers → int, floats → float (NaN and
±Infinity included), boolean → bool, bytea → bytes, every other type → str (PostgreSQL's text
output); `text` — str for every type. A test decodes the same rows both ways and compares.

bytea keeps the codec's own Python conversion: psycopg's C bytea loader misreads an empty
value in `bytea_output = escape` (it returns the rest of the COPY line), which that test found.
"""

from __future__ import annotations

from typing import Any

from psycopg.adapt import Loader
from psycopg.types.bool import BoolLoader
from psycopg.types.numeric import FloatLoader, IntLoader
from psycopg.types.string import TextLoader

from shared.codec import ValueMode, oids
from shared.codec.text import as_bytea


class _ByteaLoader(Loader):
    def load(self, data: Any) -> bytes:
        return as_bytea(bytes(data))


_TYPED: dict[int, type[Loader]] = {
    **dict.fromkeys(oids.INTEGERS, IntLoader),
    **dict.fromkeys(oids.FLOATS, FloatLoader),
    oids.BOOL: BoolLoader,
    oids.BYTEA: _ByteaLoader,
}


def copy_loaders(type_oids: list[int], mode: ValueMode) -> dict[int, type[Loader]]:
    """The loader to register for each type OID of a COPY (the connection must use UTF-8)."""
    if ValueMode(mode) is ValueMode.TEXT:
        return dict.fromkeys(type_oids, TextLoader)
    return {oid: _TYPED.get(oid, TextLoader) for oid in type_oids}
