"""The snapshot's block decoding of COPY lines (fast, columnar) equals the careful per-line
decoding, for any width (map header sizes change at 16 columns) and any mix of lines that
force the careful way (NULLs, escapes, bad values, wrong field counts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.snapshotter.copy_rows import CopyRowPacker
from shared.codec import CodecError, RowCodec, ValueMode
from shared.codec.oids import BOOL, FLOAT8, INT4, TEXT
from shared.wire import unpack

_VALUES = {
    INT4: st.integers(-(2**31), 2**31 - 1).map(lambda v: str(v).encode()),
    FLOAT8: st.floats(allow_nan=False).map(lambda v: repr(v).encode()),
    BOOL: st.sampled_from([b"t", b"f"]),
    TEXT: st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\\\t\n\r"), max_size=12
    ).map(str.encode),
}


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[int], list[bytes]]:
    oids = draw(st.lists(st.sampled_from(sorted(_VALUES)), min_size=1, max_size=20))
    lines = []
    for _ in range(draw(st.integers(1, 30))):
        fields = [draw(_VALUES[oid]) for oid in oids]
        if draw(st.integers(0, 9)) == 0:  # a NULL now and then: the careful way
            fields[draw(st.integers(0, len(fields) - 1))] = b"\\N"
        lines.append(b"\t".join(fields) + b"\n")
    return oids, lines


def _packer(oids: list[int]) -> CopyRowPacker:
    names = [f"c{i}" for i in range(len(oids))]
    return CopyRowPacker(RowCodec(names, oids, ValueMode.TYPED))


@given(tables())
def test_block_equals_line_by_line(table: tuple[list[int], list[bytes]]) -> None:
    oids, lines = table
    packer = _packer(oids)
    assert [unpack(p) for p in packer.pack_block(lines)] == [packer.row(line) for line in lines]


def test_a_bad_value_in_a_block_names_its_column() -> None:
    packer = _packer([INT4, BOOL])
    with pytest.raises(CodecError, match="'c1'"):
        packer.pack_block([b"1\tt\n", b"2\tx\n"])


def test_a_short_line_in_a_block_is_an_error() -> None:
    packer = _packer([INT4, INT4])
    with pytest.raises(ValueError):
        packer.pack_block([b"1\t2\n", b"3\n", b"4\t5\t6\n"])
