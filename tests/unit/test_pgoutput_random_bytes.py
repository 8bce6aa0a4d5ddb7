"""Random bytes, with and without a valid message-type byte, give `DecodeError` or a message."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from services.replicator import pgoutput as po
from services.replicator.protocol import parse_copy_data
from services.replicator.wire_reader import DecodeError

TYPE_BYTES = st.sampled_from([k.encode() for k in po.MESSAGE_NAMES])


@settings(max_examples=2000, deadline=200)
@given(type_byte=TYPE_BYTES, body=st.binary(max_size=200), in_stream=st.booleans())
def test_random_body_after_a_real_type_byte(type_byte: bytes, body: bytes, in_stream: bool) -> None:
    decoder = po.PgOutputDecoder()
    decoder.in_stream = in_stream
    try:
        decoder.decode(type_byte + body)
    except DecodeError as exc:
        assert exc.message_type in (*po.MESSAGE_NAMES.values(), "pgoutput")


@settings(max_examples=1000, deadline=200)
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        po.PgOutputDecoder().decode(raw)


@settings(max_examples=1000, deadline=200)
@given(st.sampled_from([b"w", b"k", b"r", b""]), st.binary(max_size=60))
def test_random_copy_data_frames(head: bytes, body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_copy_data(head + body)


def test_huge_column_count_with_no_bytes_fails_fast() -> None:
    # 32767 columns announced, none present: an error at once, not a loop over missing data.
    msg = b"I" + (1).to_bytes(4, "big") + b"N" + (32767).to_bytes(2, "big")
    try:
        po.PgOutputDecoder().decode(msg)
    except DecodeError as exc:
        assert "column 0 of 32767" in str(exc)
    else:
        raise AssertionError("decoded a tuple with no column data")
