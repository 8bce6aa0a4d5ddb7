"""The compiled loops (shared/compiled/_rows.pyx) give the pure-Python path's bytes, or leave
the input to it: over generated pgoutput row changes and COPY text lines of every column kind
the codec knows, well-formed, odd (escapes, NULLs, unchanged TOAST, 19-digit integers,
non-UTF-8 text, binary values) and broken (cut, flipped), the event builder and the row packer
give the same messages, or the same error, with the compiled loop on and off.

Where the module is not built these tests skip, unless BRIDGE_TEST_REQUIRE_COMPILED=1 (CI
sets it: there they must run)."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.replicator.events import EventBuilder, Outgoing
from services.snapshotter.copy_rows import CopyRowPacker
from shared import compiled
from shared.codec import RowCodec, ValueMode
from shared.codec import oids as o
from shared.postgres import _take_lines
from tests.harness.compiled import built

rows: Any = built(compiled.rows)

# A type of each conversion, and two the codec passes as text.
TYPES = [o.INT2, o.INT4, o.INT8, o.OID, o.FLOAT4, o.FLOAT8, o.BOOL, o.BYTEA, o.TEXT, o.NUMERIC,
         o.JSONB]  # fmt: skip
RELID = 16384
# Around every width MessagePack has for an integer.
INTEGER_EDGES = [e + d for b in (5, 7, 8, 15, 16, 31, 32, 63) for e in (1 << b, -(1 << b))
                 for d in (-1, 0, 1)]  # fmt: skip


def _texts(oid: int, clean: bool = False) -> st.SearchStrategy[bytes]:
    """PostgreSQL's text output for `oid`, and (unless `clean`) text it would never print."""
    odd = st.binary(max_size=12) | st.sampled_from(
        [b"", b" 1", b"1_0", b"+1", b"-", b"0x10", b"1e5", b".5", b"5.", b"nan", b"inf",
         b"-NaN", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\\x0", b"\\xzz", b"\\001",
         b"99999999999999999999", b"-9223372036854775808", b"9223372036854775807"]
    )  # fmt: skip
    if oid in (o.INT2, o.INT4, o.INT8, o.OID):
        good = (st.sampled_from(INTEGER_EDGES) | st.integers(-(1 << 63), (1 << 64) - 1)).map(
            lambda i: str(i).encode()
        )
    elif oid in (o.FLOAT4, o.FLOAT8):
        good = st.floats(allow_nan=True).map(
            lambda f: b"NaN" if f != f else b"Infinity" if f == float("inf")
            else b"-Infinity" if f == float("-inf") else repr(f).encode().replace(b"e", b"e+", 1)
            if "e" in repr(f) and "e-" not in repr(f) else repr(f).encode()
        )  # fmt: skip
    elif oid == o.BOOL:
        good = st.sampled_from([b"t", b"f"])
    elif oid == o.BYTEA:
        good = st.binary(max_size=300).map(lambda b: b"\\x" + b.hex().encode())
    else:
        good = st.text(st.characters() | st.sampled_from("\\\b\f\n\r\t\v"), max_size=300).map(
            lambda s: s.encode("utf-8", "surrogatepass")
        )
    return good if clean else st.one_of(good, good, good, odd)


@st.composite
def relations(draw: st.DrawFn) -> tuple[list[int], list[bool], ValueMode]:
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=6))
    keys = draw(st.lists(st.booleans(), min_size=len(types), max_size=len(types)))
    return types, keys, draw(st.sampled_from(list(ValueMode)))


def _xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + payload


def _relation(types: list[int], keys: list[bool]) -> bytes:
    columns = b"".join(
        bytes([key]) + f"c{i} é".encode() + b"\x00" + struct.pack("!Ii", oid, -1)
        for i, (oid, key) in enumerate(zip(types, keys, strict=True))
    )
    return (
        b"R"
        + struct.pack("!I", RELID)
        + b"public\x00t\x00d"
        + struct.pack("!H", len(types))
        + columns
    )


@st.composite
def tuples(draw: st.DrawFn, types: list[int], clean: bool) -> bytes:
    count = len(types) + (0 if clean else draw(st.sampled_from([0] * 12 + [-1, 1])))
    out = struct.pack("!H", max(count, 0))
    for i in range(max(count, 0)):
        oid = types[i % len(types)]
        kind = draw(st.sampled_from("tttttnnu" if clean else "tttttnnub"))
        if kind in "nu":
            out += kind.encode()
        else:
            value = draw(_texts(oid, clean))
            out += kind.encode() + struct.pack("!I", len(value)) + value
    return out


@st.composite
def changes(draw: st.DrawFn, types: list[int]) -> bytes:
    """A row change; half of them as PostgreSQL sends them, the rest odd or broken."""
    clean = draw(st.booleans())
    kind = draw(st.sampled_from("IIIUUUDD" if clean else "IIIUUUDDX"))
    new, old = draw(tuples(types, clean)), draw(tuples(types, clean))
    marker = draw(st.sampled_from("NNKO"))
    head = kind.encode() + struct.pack("!I", draw(st.sampled_from([RELID] * 9 + [RELID + 1])))
    if kind == "U" and marker != "N":
        body = marker.encode() + old + b"N" + new
    else:
        body = marker.encode() + (new if marker == "N" else old)
    frame = _xlog(draw(st.integers(0, (1 << 64) - 1)), head + body)
    damage = draw(st.sampled_from(["none"] if clean else ["none"] * 5 + ["cut", "flip", "extra"]))
    if damage == "cut":
        frame = frame[: draw(st.integers(0, len(frame) - 1))]
    elif damage == "flip":
        at = draw(st.integers(25, len(frame) - 1))
        frame = frame[:at] + bytes([frame[at] ^ draw(st.integers(1, 255))]) + frame[at + 1 :]
    elif damage == "extra":
        frame += b"\x00"
    return frame


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), relation=relations(), max_payload=st.sampled_from([1 << 20, 700]))
def test_row_changes_packed_compiled_equal_the_pure_path(
    data: st.DataObject, relation: tuple[list[int], list[bool], ValueMode], max_payload: int
) -> None:
    types, keys, mode = relation
    frames = [
        _xlog(0x100, b"B" + struct.pack("!QqI", 0x1_0000_0200, 8 * 10**14 + 5, 7)),
        _xlog(0x110, _relation(types, keys)),
        *data.draw(st.lists(changes(types), min_size=1, max_size=4)),
        _xlog(0x200, b"C\x00" + struct.pack("!QQq", 0x1_0000_0200, 0x208, 8 * 10**14)),
    ]
    assert _events(frames, True, max_payload, mode) == _events(frames, False, max_payload, mode)


def _events(frames: list[bytes], compiled_on: bool, max_payload: int, mode: ValueMode) -> Any:
    builder = EventBuilder(mode, max_payload)
    if not compiled_on:
        builder.compiled = None
    out: list[Outgoing] = []
    try:
        builder.feed_all(frames, out)  # as the decoder feeds a read's frames
    except Exception as exc:  # the same error both ways is the point
        return ("error", type(exc).__name__, str(exc), [(m.subject, m.payload) for m in out])
    return [(m.subject, m.payload, m.msg_id) for m in out]


def test_the_compiled_loop_takes_every_kind_of_change_and_value() -> None:
    """Not a vacuous equality: the loop itself packs an insert, an update with its old key and
    one with its old row, and a delete, of a row with a value of every conversion."""
    types = [o.INT8, o.FLOAT8, o.BOOL, o.BYTEA, o.TEXT, o.NUMERIC, o.INT4]
    values = [b"-9223372036854775", b"-1.5e+300", b"t", b"\\x00ff", "zoë".encode(), b"1.50", None]
    keys = [True, False, False, False, False, False, False]
    new = struct.pack("!H", len(types)) + b"".join(
        b"n" if v is None else b"t" + struct.pack("!I", len(v)) + v for v in values
    )
    key = struct.pack("!H", len(types)) + b"t\x00\x00\x00\x011" + b"n" * (len(types) - 1)
    toasted = new[:-1] + b"u"
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    out: list[Outgoing] = []
    builder.feed(_xlog(0x100, b"B" + struct.pack("!QqI", 0x200, 8 * 10**14, 7)), out)
    builder.feed(_xlog(0x110, _relation(types, keys)), out)
    head = struct.pack("!I", RELID)
    frames = [
        b"I" + head + b"N" + new,
        b"U" + head + b"K" + key + b"N" + toasted,
        b"U" + head + b"O" + new + b"N" + new,
        b"D" + head + b"K" + key,
    ]
    for frame in frames:
        taken = rows.encode_changes(
            [_xlog(0x120, frame)], 0, builder._shapes, builder._tx_middle, builder._tx_time, 3,
            b"0/1:", {}, 1 << 20, [], Outgoing,
        )  # fmt: skip
        assert taken == (1, 4), frame  # the loop itself took the frame
        builder.feed(_xlog(0x120, frame), out)
    names = [f"c{i} é" for i in range(len(types))]
    update = msgpack.unpackb(out[-3].payload, raw=False)
    assert update["data"] == dict(
        zip(
            names[:-1], [-9223372036854775, -1.5e300, True, b"\x00\xff", "zoë", "1.50"], strict=True
        )
    )
    assert update["old"] == {names[0]: 1}
    assert update["unchanged"] == [names[-1]]
    assert msgpack.unpackb(out[-1].payload, raw=False)["data"] is None


# COPY's text format as PostgreSQL writes it (CopyAttributeOutText), and escapes it never
# writes but reads (octal, hex, any other character for itself, a trailing backslash).
_COPY_ESCAPES = {ord(c): b"\\" + e for c, e in
                 (("\\", b"\\"), ("\b", b"b"), ("\f", b"f"), ("\n", b"n"), ("\r", b"r"),
                  ("\t", b"t"), ("\v", b"v"))}  # fmt: skip
_READ_ONLY_ESCAPES = [b"\\0", b"\\12", b"\\141", b"\\777", b"\\x4", b"\\x41", b"\\xg",
                      b"\\q", b"\\N", b"\\\xc3\xa9", b"\\"]  # fmt: skip


def _copy_text(value: bytes) -> bytes:
    return b"".join(_COPY_ESCAPES.get(c, bytes((c,))) for c in value)


@st.composite
def copy_blocks(draw: st.DrawFn) -> tuple[list[int], ValueMode, list[bytes]]:
    """A third of the blocks as PostgreSQL prints them, a third with escapes it reads but never
    writes, the rest odd or broken."""
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=5))
    noise = draw(st.sampled_from(["clean", "escapes", "odd"]))
    clean = noise != "odd"
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        count = len(types) + (0 if clean else draw(st.sampled_from([0] * 12 + [-1, 1])))
        fields = []
        for i in range(max(count, 1)):
            oid = types[i % len(types)]
            value = _copy_text(draw(_texts(oid, clean)))
            if draw(st.integers(0, 5)) == 0:
                fields.append(b"\\N")
            elif noise != "clean" and draw(st.booleans()):
                escape = draw(st.sampled_from([*_COPY_ESCAPES.values(), *_READ_ONLY_ESCAPES]))
                cut = draw(st.integers(0, len(value)))
                fields.append(value[:cut] + escape + value[cut:])
            else:
                fields.append(value)
        lines.append(b"\t".join(fields) + b"\n")
    return types, draw(st.sampled_from(list(ValueMode))), lines


def _pack_block(packer: CopyRowPacker, lines: list[bytes]) -> Any:
    try:
        return packer.pack_block(lines)
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(block=copy_blocks())
def test_copy_rows_packed_compiled_equal_the_pure_path(
    block: tuple[list[int], ValueMode, list[bytes]],
) -> None:
    types, mode, lines = block
    codec = RowCodec([f"c{i}" for i in range(len(types))], types, mode)
    on, off = CopyRowPacker(codec), CopyRowPacker(codec)
    off.compiled = None
    assert _pack_block(on, lines) == _pack_block(off, lines)


def test_the_compiled_loop_packs_copy_lines_with_nulls_and_escapes() -> None:
    codec = RowCodec(["id", "note", "raw"], [o.INT4, o.TEXT, o.BYTEA], ValueMode.TYPED)
    shape = CopyRowPacker(codec).shape
    lines = [b"1\ta\\tb\\\\c\t\\\\x0a0b\n", b"-2\t\\N\t\\N\n"]
    packed = rows.pack_copy_lines(lines, shape)
    assert packed is not None
    assert [msgpack.unpackb(p, raw=False) for p in packed] == [
        {"id": 1, "note": "a\tb\\c", "raw": b"\n\x0b"},
        {"id": -2, "note": None, "raw": None},
    ]


@pytest.mark.parametrize(
    ("oid", "text"),
    [(o.INT8, str(i).encode()) for i in INTEGER_EDGES]
    + [(o.FLOAT8, t) for t in (b"NaN", b"Infinity", b"-Infinity", b"0", b"-0", b"1e+308",
                               b"2.2250738585072014e-308", b"5e-324", b"1.7976931348623157e+308",
                               b"0.1", b"-123.456e-7")]
    + [(o.TEXT, t) for t in (b"", b"a" * 31, b"a" * 32, b"a" * 255, b"a" * 256, b"a" * 65535,
                             b"a" * 65536, "\U0010ffff".encode(), "\ud7ff".encode())]
    + [(o.BYTEA, b"\\x" + b"ab" * n) for n in (0, 255, 256, 65535, 65536)],
)  # fmt: skip
def test_every_width_of_a_value_is_msgpacks(oid: int, text: bytes) -> None:
    """Each length and number header MessagePack has, at its edges, as msgpack packs it."""
    codec = RowCodec(["v"], [oid], ValueMode.TYPED)
    line = text.replace(b"\\", b"\\\\") + b"\n"
    value = codec.decode_values([text])["v"]
    expected = None if isinstance(value, int) and value < -(1 << 63) else [
        msgpack.packb({"v": value}, use_bin_type=True)  # past 64 bits: the reference's
    ]  # fmt: skip
    assert rows.pack_copy_lines([line], CopyRowPacker(codec).shape) == expected


@given(
    answers=st.lists(
        st.tuples(st.integers(-2, 40), st.binary(max_size=8)).map(
            lambda a: (a[0], memoryview(a[1])) if a[0] > 0 else (a[0], b"")
        ),
        max_size=20,
    ),
    limit=st.integers(1, 8),
    held=st.integers(0, 3),
)
def test_copy_lines_are_taken_from_libpq_as_the_pure_loop_takes_them(
    answers: list[tuple[int, Any]], limit: int, held: int
) -> None:
    """`take_copy_lines` and `shared.postgres._take_lines` over the same answers of libpq's
    `get_copy_data` (lines, 0 for none now, -1 the end, -2 an error): the same lines taken,
    the same count returned, the same answers left."""
    said = []
    for take in (rows.take_copy_lines, _take_lines):
        queue = [*answers, (-1, b"")]
        block = [b"x"] * held
        nbytes = take(lambda _, queue=queue: queue.pop(0), block, limit)
        said.append((nbytes, block, len(queue)))
    assert said[0] == said[1]


def test_the_compiled_loops_leave_what_is_not_bytes_to_the_reference() -> None:
    """A line or a frame of another type (the reader and COPY give bytes) is declined, never
    read as if it were bytes."""
    codec = RowCodec(["v"], [o.TEXT], ValueMode.TYPED)
    assert rows.pack_copy_lines([b"a\n", bytearray(b"b\n")], CopyRowPacker(codec).shape) is None
    out: list[Outgoing] = []
    frame = bytearray(_xlog(0x120, b"I" + struct.pack("!I", RELID) + b"N\x00\x00"))
    assert rows.encode_changes(
        [frame], 0, {}, b"", b"", 0, b"0/1:", {}, 1 << 20, out, Outgoing
    ) == (0, 0)
    assert out == []
