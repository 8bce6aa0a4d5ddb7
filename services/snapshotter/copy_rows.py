"""Rows of `COPY … TO STDOUT` text output, decoded a block of lines at a time.

Per row, splitting the line, converting each field and building the map cost about as much as
everything else in a snapshot. A block of lines without a backslash (no NULL, no escape: most
rows of most tables) is split in one call and converted a column at a time with `map`, which
runs the converter loop in C; a block with a backslash, a line with another field count or
a value that does not convert is decoded line by line, which names the line's fault exactly.

The fast way builds no dict per row either: a row is packed as the flat array `[name, value,
name, value, …]`, whose bytes after the array header are exactly a map's entries, and gets
the map header instead (a third less time per row than packing a dict).

Where the compiled loop is built (shared/compiled), it packs a block first, in one call over
the bytes with no value object; anything it leaves (it returns None) goes the ways above,
which are the reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any

from pg_nats_bridge.contract import packer
from shared import compiled
from shared.codec import RowCodec
from shared.codec.copy_text import split_line


class CopyRowPacker:
    """COPY text lines in, each row's packed `{column: value}` map out."""

    def __init__(self, codec: RowCodec) -> None:
        self.codec = codec
        self.names = codec.names
        self.converters = codec.converters
        rows_packer = packer()
        self.pack: Callable[[Any], bytes] = rows_packer.pack
        width = len(self.names)
        self.map_header = rows_packer.pack_map_header(width)
        self.array_header_size = len(rows_packer.pack_array_header(2 * width))
        self.compiled = compiled.rows  # None: the pure-Python ways only (a test sets it so)
        self.shape = (
            None if self.compiled is None else self.compiled.RowShape(self.names, codec.kinds)
        )

    def pack_block(self, lines: list[bytes]) -> list[bytes]:
        """One packed row per line (each line ends with its newline)."""
        if self.compiled is not None:
            packed: list[bytes] | None = self.compiled.pack_copy_lines(lines, self.shape)
            if packed is not None:
                return packed
        packed = self._fast(lines)
        return packed if packed is not None else [self.pack(self.row(line)) for line in lines]

    def _fast(self, lines: list[bytes]) -> list[bytes] | None:
        width = len(self.converters)
        block = b"".join(lines)
        if not width or b"\\" in block:
            return None
        if set(map(bytes.count, lines, repeat(b"\t"))) != {width - 1}:
            return None
        fields = block[:-1].replace(b"\n", b"\t").split(b"\t")
        count, step = len(lines), 2 * width
        flat: list[Any] = [None] * (step * count)
        try:
            for i, convert in enumerate(self.converters):
                flat[2 * i :: step] = [self.names[i]] * count
                flat[2 * i + 1 :: step] = list(map(convert, fields[i::width]))
        except (ValueError, UnicodeDecodeError):
            return None  # the careful way says which value
        pack, head, skip = self.pack, self.map_header, self.array_header_size
        return [head + pack(flat[j : j + step])[skip:] for j in range(0, len(flat), step)]

    def row(self, line: bytes) -> dict[str, Any]:
        """One line, the careful way: NULLs, escapes, and errors naming the column."""
        converters = self.converters
        if not converters:  # a table whose columns were all dropped: its rows are empty lines
            return {}
        try:
            # zip(strict=True): a field count that differs raises, like a bad value.
            raw = zip(converters, split_line(line), strict=True)
            values = [None if f is None else c(f) for c, f in raw]
        except (ValueError, UnicodeDecodeError):
            self.codec.decode_values(split_line(line))  # raises, naming the column
            raise
        return dict(zip(self.names, values, strict=True))
