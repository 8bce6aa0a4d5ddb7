"""PostgreSQL log sequence numbers.

An LSN is a 64-bit byte position in the WAL. PostgreSQL prints it as two 32-bit hex halves,
`X/Y`; the wire contract uses that text form. `Lsn` is an `int`, so LSNs order, hash and
subtract like the byte positions they are: `b - a` is the number of WAL bytes between them.
"""

from __future__ import annotations

_MAX = (1 << 64) - 1


class LsnError(ValueError):
    """Text or a number that is not a valid LSN."""


class Lsn(int):
    """A WAL position (0 … 2**64-1), printed as PostgreSQL prints it (`16/B374D848`)."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX:
            raise LsnError(f"LSN {value} is outside 0 … 2**64-1")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Read PostgreSQL's `X/Y` form (case-insensitive hex, each half at most 8 digits)."""
        high, sep, low = text.strip().partition("/")
        if not sep or not (0 < len(high) <= 8) or not (0 < len(low) <= 8):
            raise LsnError(f"{text!r} is not an LSN: expected two hex numbers as in '16/B374D848'")
        try:
            return cls((int(high, 16) << 32) | int(low, 16))
        except ValueError:
            raise LsnError(f"{text!r} is not an LSN: {high!r}/{low!r} are not hex") from None

    def __str__(self) -> str:
        return lsn_text(self)

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __add__(self, other: int) -> Lsn:  # type: ignore[override]
        return Lsn(int(self) + int(other))

    def __sub__(self, other: int) -> int:  # type: ignore[override]
        """Bytes between two LSNs (an `int`, negative when `other` is later)."""
        return int(self) - int(other)


def lsn_text(value: int) -> str:
    """PostgreSQL's `X/Y` text of a position, without making an `Lsn` first (the replicator
    prints one per change)."""
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)  # noqa: UP031 (faster than f-string)


def lsn_from_u64(value: int) -> Lsn:
    """An Lsn from a value read as an unsigned 64-bit integer, so in range by construction:
    no check (the decoder makes several per transaction)."""
    return int.__new__(Lsn, value)


ZERO = Lsn(0)
