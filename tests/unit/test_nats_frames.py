"""`hpub`: the replicator's hand-built HPUB frames are what the NATS protocol says, with and
without a reply subject and an expected last Msg-Id (a wrong header length would make
nats-server drop the connection, or store a message with a corrupt payload)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.nats_frames import hpub

_TOKEN = st.binary(min_size=1, max_size=40).map(lambda b: b.hex().encode())


@given(
    subject=_TOKEN,
    reply=st.one_of(st.just(b""), _TOKEN),
    msg_id=_TOKEN,
    expected_last=st.integers(min_value=0, max_value=2**63),
    payload=st.binary(max_size=300),
    expected_last_id=st.one_of(st.just(b""), _TOKEN),
)
def test_frame_layout(
    subject: bytes,
    reply: bytes,
    msg_id: bytes,
    expected_last: int,
    payload: bytes,
    expected_last_id: bytes,
) -> None:
    frame = hpub(subject, reply, msg_id, expected_last, payload, expected_last_id)
    line, _, body = frame.partition(b"\r\n")
    parts = line.split(b" ")
    assert parts[:2] == [b"HPUB", subject]
    assert parts[2:-2] == ([reply] if reply else [])
    hlen, total = int(parts[-2]), int(parts[-1])
    assert len(body) == total + 2 and body.endswith(b"\r\n")
    head, got_payload = body[:hlen], body[hlen:total]
    assert got_payload == payload
    assert head.startswith(b"NATS/1.0\r\n") and head.endswith(b"\r\n\r\n")
    headers = dict(h.split(b": ", 1) for h in head[:-4].split(b"\r\n")[1:])
    expected = {
        b"Nats-Msg-Id": msg_id,
        b"Nats-Expected-Last-Sequence": b"%d" % expected_last,
    }
    if expected_last_id:
        expected[b"Nats-Expected-Last-Msg-Id"] = expected_last_id
    assert headers == expected
