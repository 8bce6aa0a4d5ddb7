"""Malformed input never escapes as anything but `DecodeError`: every truncation of every real
message, and random mutations of them (hypothesis)."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.replicator import pgoutput as po
from services.replicator.wire_reader import DecodeError
from tests.integration.capture import Captured

pytestmark = pytest.mark.realbytes


def with_state(corpus: list[Captured]) -> list[tuple[bool, bytes]]:
    """Each message with the decoder's streaming state just before it."""
    decoder = po.PgOutputDecoder()
    out = []
    for c in corpus:
        out.append((decoder.in_stream, c.data))
        decoder.decode(c.data)
    return out


def decoder_in(state: bool) -> po.PgOutputDecoder:
    decoder = po.PgOutputDecoder()
    decoder.in_stream = state
    return decoder


def test_corpus_holds_every_message_type(real_corpus: list[Captured]) -> None:
    seen = Counter(po.MESSAGE_NAMES[chr(c.data[0])] for c in real_corpus)
    assert set(seen) == set(po.MESSAGE_NAMES.values()), (
        f"missing: {set(po.MESSAGE_NAMES.values()) - set(seen)}"
    )


def test_every_truncation_of_every_message_raises_decode_error(
    real_corpus: list[Captured],
) -> None:
    checked = 0
    seen_kinds: set[str] = set()
    for state, data in with_state(real_corpus):
        kind = chr(data[0])
        if kind in "IUD" and kind in seen_kinds and len(data) > 64:
            continue  # one large row change per kind is enough; thousands are alike
        seen_kinds.add(kind)
        for cut in range(len(data)):
            prefix = data[:cut]
            if kind == "A" and cut == 9:
                # Stream Abort without protocol 4's LSN and time is itself the older form.
                assert isinstance(decoder_in(state).decode(prefix), po.StreamAbort)
                continue
            with pytest.raises(DecodeError) as info:
                decoder_in(state).decode(prefix)
            assert info.value.offset <= cut
            checked += 1
    assert checked > 1000


@pytest.fixture(scope="module")
def seeds(real_corpus: list[Captured]) -> list[tuple[bool, bytes]]:
    """Up to five messages of each type, with their decoder state."""
    per_kind: Counter[int] = Counter()
    chosen = []
    for state, data in with_state(real_corpus):
        per_kind[data[0]] += 1
        if per_kind[data[0]] <= 5:
            chosen.append((state, data))
    return chosen


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_messages_raise_only_decode_error(
    seeds: list[tuple[bool, bytes]], data: st.DataObject
) -> None:
    state, message = data.draw(st.sampled_from(seeds))
    raw = bytearray(message)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            del raw[at : at + data.draw(st.integers(1, 8))]
    with contextlib.suppress(DecodeError):
        decoder_in(state).decode(bytes(raw))
