import math

import pytest

from shared.codec import UNCHANGED_TOAST, BinaryValue, CodecError, RowCodec, ValueMode, oids
from shared.codec.text import as_bytea

TYPED_CASES = [
    (oids.INT2, b"-32768", -32768),
    (oids.INT4, b"42", 42),
    (oids.INT8, b"9223372036854775807", 2**63 - 1),
    (oids.OID, b"4294967295", 2**32 - 1),
    (oids.FLOAT4, b"1.5", 1.5),
    (oids.FLOAT8, b"-Infinity", -math.inf),
    (oids.BOOL, b"t", True),
    (oids.BOOL, b"f", False),
    (oids.NUMERIC, b"12345678901234567890.000000000001", "12345678901234567890.000000000001"),
    (oids.TEXT, "héllo".encode(), "héllo"),
    (oids.VARCHAR, b"v", "v"),
    (oids.BPCHAR, b"ab  ", "ab  "),
    (oids.BYTEA, b"\\x00ff10", b"\x00\xff\x10"),
    (oids.JSON, b'{"a": 1}', '{"a": 1}'),
    (oids.JSONB, b'{"a": 1}', '{"a": 1}'),
    (1114, b"2026-11-24 16:13:49.123456", "2026-11-24 16:13:49.123456"),  # timestamp
    (2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
]


@pytest.mark.parametrize(("oid", "raw", "expected"), TYPED_CASES)
def test_typed_mode(oid: int, raw: bytes, expected: object) -> None:
    row, unchanged = RowCodec(["c"], [oid], ValueMode.TYPED).decode([raw])
    assert row == {"c": expected} and type(row["c"]) is type(expected)
    assert unchanged == []


@pytest.mark.parametrize(("oid", "raw", "expected"), TYPED_CASES)
def test_text_mode_keeps_postgres_text_output(oid: int, raw: bytes, expected: object) -> None:
    row = RowCodec(["c"], [oid], ValueMode.TEXT).decode_values([raw])
    assert row == {"c": raw.decode()}


def test_nan_stays_nan() -> None:
    assert math.isnan(RowCodec(["c"], [oids.FLOAT8], "typed").decode_values([b"NaN"])["c"])


def test_null_is_nil_and_unchanged_toast_is_absent_not_null() -> None:
    codec = RowCodec(["id", "big", "note"], [oids.INT4, oids.TEXT, oids.TEXT], ValueMode.TYPED)
    row, unchanged = codec.decode([b"1", UNCHANGED_TOAST, None])
    assert row == {"id": 1, "note": None}
    assert "big" not in row
    assert unchanged == ["big"]


def test_escape_format_bytea() -> None:
    assert as_bytea(b"a\\\\b\\000\\377") == b"a\\b\x00\xff"
    with pytest.raises(CodecError):
        as_bytea(b"\\9")


def test_binary_values() -> None:
    codec = RowCodec(
        ["a", "b", "c", "d"], [oids.INT4, oids.FLOAT8, oids.BOOL, oids.JSONB], ValueMode.TYPED
    )
    row = codec.decode_values(
        [
            BinaryValue(b"\x00\x00\x01\x00"),
            BinaryValue(b"?\xf8\x00\x00\x00\x00\x00\x00"),
            BinaryValue(b"\x01"),
            BinaryValue(b'\x01{"k": 2}'),
        ]
    )
    assert row == {"a": 256, "b": 1.5, "c": True, "d": '{"k": 2}'}


@pytest.mark.parametrize(
    ("oid", "raw", "message"),
    [
        (oids.INT4, b"4x", "column 'c'"),
        (oids.BOOL, b"yes", "'t' or 'f'"),
        (oids.BYTEA, b"\\xZZ", "hex bytea"),
        (oids.TEXT, b"\xff\xfe", "column 'c'"),
    ],
)
def test_values_that_do_not_read_as_their_type_raise_codec_error(
    oid: int, raw: bytes, message: str
) -> None:
    with pytest.raises(CodecError, match=message):
        RowCodec(["c"], [oid], ValueMode.TYPED).decode([raw])


def test_binary_value_of_unsupported_type_names_it() -> None:
    with pytest.raises(CodecError, match="type OID 1114"):
        RowCodec(["c"], [1114], ValueMode.TYPED).decode([BinaryValue(b"12345678")])
    with pytest.raises(CodecError, match="text output"):
        RowCodec(["c"], [oids.INT4], ValueMode.TEXT).decode([BinaryValue(b"\x00\x00\x00\x01")])


def test_column_count_mismatch_is_an_error() -> None:
    with pytest.raises(CodecError, match="2 columns"):
        RowCodec(["a"], [oids.INT4], ValueMode.TYPED).decode([b"1", b"2"])
