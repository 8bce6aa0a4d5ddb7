"""Fields of one line of `COPY … TO STDOUT` text output, the snapshot's input.

The format (PostgreSQL's COPY documentation): fields separated by tab, the line ended by a
newline, NULL written `\\N`, and inside a value a backslash escapes a backslash, a control
character (`\\b \\f \\n \\r \\t \\v`), an octal (`\\123`) or hex (`\\x7F`) byte; any other
escaped character stands for itself. A tab or newline inside a value is always escaped, so
splitting on the raw bytes is exact. Most lines hold no backslash at all and take the fast way.
"""

from __future__ import annotations

import re

_SIMPLE = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)


def _replace(match: re.Match[bytes]) -> bytes:
    octal, hexa, char = match.groups()
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexa is not None:
        return bytes([int(hexa, 16)])
    return _SIMPLE.get(char[0], char)


def split_line(line: bytes) -> list[bytes | None]:
    """The raw fields of one COPY text line (with or without its newline)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    fields: list[bytes | None] = list(line.split(b"\t"))
    if b"\\" not in line:
        return fields
    return [
        None if f == b"\\N" else _ESCAPE.sub(_replace, f) if f and b"\\" in f else f for f in fields
    ]
