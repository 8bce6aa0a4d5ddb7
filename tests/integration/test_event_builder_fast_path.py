"""The event builder's in-place reading of Begin, Commit and row changes agrees with the
decoder on bytes a real PostgreSQL sent: the same messages for every frame, the same error for
every truncation and byte flip of them.

The fast path is only a shortcut: the decoder stays the one reading of pgoutput. Here each
frame goes through two builders, one of which has its shortcut switched off, and everything
they produce (messages, errors) must be identical. The protocol layer's reading of where a
batch leaves the transaction stream agrees with the decoder too.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from services.replicator import pgoutput as po
from services.replicator.events import EventBuilder, Outgoing
from services.replicator.pgoutput import transaction_boundary
from shared.codec import ValueMode
from tests.integration.capture import Captured

pytestmark = pytest.mark.realbytes

_CHANGE_KINDS = b"BCIUD"


def frame(c: Captured) -> bytes:
    """The XLogData CopyData message a walsender wraps around a pgoutput message."""
    return b"w" + struct.pack("!QQq", c.lsn, c.lsn, 0) + c.data


def builders(mode: ValueMode = ValueMode.TYPED) -> tuple[EventBuilder, EventBuilder]:
    fast = EventBuilder(mode, 1 << 20)
    slow = EventBuilder(mode, 1 << 20)
    slow.read_fast = lambda raw: None
    return fast, slow


def outcome(builder: EventBuilder, raw: bytes) -> tuple[Any, ...]:
    out: list[Outgoing] = []
    try:
        builder.feed(raw, out)
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", [(o.subject, o.payload, o.msg_id) for o in out], builder._xid)


@pytest.mark.parametrize("mode", list(ValueMode))
def test_every_real_frame_gives_what_the_decoder_gives(
    real_corpus: list[Captured], mode: ValueMode
) -> None:
    fast, slow = builders(mode)
    published = 0
    for c in real_corpus:
        raw = frame(c)
        got = outcome(fast, raw)
        assert got == outcome(slow, raw), f"{chr(c.data[0])} at {c.lsn}"
        if got[0] == "ok":
            published += len(got[1])
    assert published > 1000  # the corpus's changes were events, not errors


def test_every_cut_and_flipped_change_frame_gives_what_the_decoder_gives(
    real_corpus: list[Captured],
) -> None:
    relations = [frame(c) for c in real_corpus if c.data[:1] == b"R"]
    begin = next(frame(c) for c in real_corpus if c.data[:1] == b"B")
    samples: dict[bytes, list[bytes]] = {}
    for c in real_corpus:
        kind = c.data[:1]
        if kind in _CHANGE_KINDS and len(samples.setdefault(kind, [])) < 3:
            samples[kind].append(frame(c))
    assert set(samples) == set(bytes([k]) for k in _CHANGE_KINDS)
    checked = 0
    for originals in samples.values():
        for raw in originals:
            variants = [raw[:n] for n in range(25, len(raw))]
            flips = range(25, len(raw))
            variants += [raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :] for i in flips]
            variants += [raw + b"\x00"]
            for variant in variants:
                fast, slow = builders()
                for primer in (*relations, begin):
                    outcome(fast, primer)
                    outcome(slow, primer)
                assert outcome(fast, variant) == outcome(slow, variant), variant.hex()
                checked += 1
    assert checked > 500


def test_transaction_ends_read_from_bytes_agree_with_the_decoder(
    real_corpus: list[Captured],
) -> None:
    """`transaction_boundary` (what Progress confirms) on every real frame, one at a time and
    as one batch: a Commit's end LSN as the decoder reads it, a Begin opening a transaction."""
    decoder = po.PgOutputDecoder()
    frames, commits, expected_open, last_end = [], 0, None, None
    for c in real_corpus:
        raw = frame(c)
        message = decoder.decode(c.data)
        in_transaction, end = transaction_boundary([raw])
        if isinstance(message, po.Commit):
            commits += 1
            assert (in_transaction, end) == (False, message.end_lsn)
            expected_open, last_end = False, message.end_lsn
        elif isinstance(message, po.Begin):
            assert (in_transaction, end) == (True, None)
            expected_open = True
        else:
            assert (in_transaction, end) == (None, None)
        frames.append(raw)
    assert commits > 10
    assert transaction_boundary(frames) == (expected_open, last_end)
