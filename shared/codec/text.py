"""Values from PostgreSQL's text output (what pgoutput sends and `COPY … TO` prints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.codec import oids
from shared.codec.errors import CodecError

TextConverter = Callable[[bytes], Any]


# UTF-8, strict: the method itself, not a function around it (one call less per value, which
# a snapshot of millions of values notices).
as_str: TextConverter = bytes.decode


def as_bool(raw: bytes) -> bool:
    if raw == b"t":
        return True
    if raw == b"f":
        return False
    raise CodecError(f"boolean text output must be 't' or 'f', got {raw[:20]!r}")


def as_bytea(raw: bytes) -> bytes:
    """Both `bytea_output` settings: `hex` (`\\x0a0b`, the default) and `escape`."""
    if raw.startswith(b"\\x"):
        try:
            return bytes.fromhex(raw[2:].decode("ascii"))
        except ValueError:
            raise CodecError(f"bad hex bytea text output {raw[:20]!r}") from None
    return _unescape_bytea(raw)


def _unescape_bytea(raw: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:  # backslash
            out.append(c)
            i += 1
        elif raw[i + 1 : i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        else:
            octal = raw[i + 1 : i + 4]
            if len(octal) != 3 or any(d not in b"01234567" for d in octal):
                raise CodecError(f"bad escape-format bytea text output at byte {i}")
            out.append(int(octal, 8))
            i += 4
    return bytes(out)


# float() and int() take ASCII bytes directly, including 'NaN', 'Infinity' and '-Infinity'.
_TYPED: dict[int, TextConverter] = {
    **dict.fromkeys(oids.INTEGERS, int),
    **dict.fromkeys(oids.FLOATS, float),
    oids.BOOL: as_bool,
    oids.BYTEA: as_bytea,
}


# Each converter as the compiled loops name it (KIND_* of shared/compiled/_rows.pyx, which
# converts the same text the same way without building the value).
CONVERTER_KINDS: dict[TextConverter, int] = {as_str: 0, int: 1, float: 2, as_bool: 3, as_bytea: 4}


def typed_converter(type_oid: int) -> TextConverter:
    """The `typed` mode: numbers, booleans and bytea become native values, the rest `str`."""
    return _TYPED.get(type_oid, as_str)


def text_converter(type_oid: int) -> TextConverter:
    """The `text` mode: PostgreSQL's text output, as `str`, for every type."""
    return as_str
