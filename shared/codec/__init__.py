"""The value codec of the wire contract (docs/wire-format.md, "Values").

One implementation for CDC events and snapshot rows: both hand it PostgreSQL's text output of
each column with the column's type OID, so a value reads the same whichever path it took.

`RowCodec` is built once per relation (its converters looked up once), then called per row.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Sequence
from typing import Any, Final

from shared.codec.binary import binary_converter
from shared.codec.errors import CodecError
from shared.codec.text import CONVERTER_KINDS, TextConverter, text_converter, typed_converter

__all__ = ["UNCHANGED_TOAST", "BinaryValue", "CodecError", "RowCodec", "ValueMode"]


class ValueMode(enum.StrEnum):
    TYPED = "typed"
    TEXT = "text"


class _UnchangedToast:
    """Marks a TOASTed column PostgreSQL did not send because the change left it as it was."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()


class BinaryValue(bytes):
    """A column value in PostgreSQL's binary send format rather than its text output."""

    __slots__ = ()


_ONLY_TEXT = frozenset({bytes})


class RowCodec:
    """Turns one relation's raw column values into a `{column: value}` map.

    Raw values are `None` (SQL NULL), `bytes` (text output), `BinaryValue` or `UNCHANGED_TOAST`;
    unchanged columns are left out of the map and listed apart, never reported as NULL.
    """

    __slots__ = ("_binary", "_columns", "_converters", "_names", "mode")

    def __init__(self, names: Sequence[str], type_oids: Sequence[int], mode: ValueMode) -> None:
        if len(names) != len(type_oids):
            raise ValueError("one type OID per column name")
        self.mode = ValueMode(mode)
        pick = typed_converter if self.mode is ValueMode.TYPED else text_converter
        self._columns: tuple[tuple[str, TextConverter], ...] = tuple(
            (name, pick(oid)) for name, oid in zip(names, type_oids, strict=True)
        )
        self._binary = tuple(binary_converter(oid) for oid in type_oids)
        self._names = tuple(names)
        self._converters = tuple(convert for _, convert in self._columns)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def kinds(self) -> bytes:
        """Each column's conversion as the compiled loops name it (shared/compiled)."""
        return bytes(CONVERTER_KINDS[convert] for convert in self._converters)

    @property
    def converters(self) -> tuple[TextConverter, ...]:
        """Each column's text-output converter, for callers that loop over millions of rows
        (snapshots) and cannot afford `decode`'s per-value checks."""
        return self._converters

    def decode(self, raw: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
        """Return the row map and the names of the unchanged-TOAST columns."""
        if len(raw) != len(self._columns):
            raise CodecError(f"row has {len(raw)} columns, the relation has {len(self._columns)}")
        if _ONLY_TEXT.issuperset(map(type, raw)):
            # Every column is text output (nearly every row): converted in one C-level pass.
            # A value a converter refuses is found again below, which names its column.
            try:
                values = map(operator.call, self._converters, raw)
                return dict(zip(self._names, values, strict=True)), []
            except (ValueError, UnicodeDecodeError):
                pass
        row: dict[str, Any] = {}
        unchanged: list[str] = []
        for (name, convert), value, i in zip(self._columns, raw, range(len(raw)), strict=True):
            if value is None:
                row[name] = None
            elif value is UNCHANGED_TOAST:
                unchanged.append(name)
            else:
                try:
                    if type(value) is BinaryValue:
                        if self.mode is ValueMode.TEXT:
                            raise CodecError(
                                "value mode 'text' needs PostgreSQL's text output, "
                                "the column arrived in binary format"
                            )
                        row[name] = self._binary[i](value)
                    else:
                        row[name] = convert(value)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise CodecError(f"column {name!r}: {exc}") from None
        return row, unchanged

    def decode_values(self, raw: Sequence[bytes | None]) -> dict[str, Any]:
        """A row with every column present (a snapshot row): just the map."""
        return self.decode(raw)[0]
