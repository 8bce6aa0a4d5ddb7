"""The replicator's JSON-free reading of a chained PubAck agrees with a JSON parse: it says
"stored at N" only when the PubAck does, and leaves every other answer to the parse."""

from __future__ import annotations

import json

import pytest

from services.replicator.publisher import _stored_at

ANSWERS = [
    b'{"stream":"CDC","seq":5}',
    b'{"stream":"CDC","seq":50}',
    b'{"stream":"CDC","seq":5,"duplicate":true}',
    b'{"stream":"CDC","seq":5,"domain":"hub"}',
    b'{"stream":"CDC","domain":"hub","seq":5}',
    b'{"stream": "CDC", "seq": 5}',
    b'{"stream":"CDC","seq":15}',
    b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},'
    b'"stream":"CDC","seq":0}',
    b'{"error":{"code":503,"description":"unavailable"},"stream":"CDC","seq":5}',
]


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("seq", [5, 15, 50])
def test_stored_at_only_when_the_json_says_so(answer: bytes, seq: int) -> None:
    ack = json.loads(answer)
    stored = ack.get("seq") == seq and not ack.get("duplicate") and "error" not in ack
    if _stored_at(answer, seq):
        assert stored
    # A False is "unsure": the caller parses, so only a wrong True would be a fault. The
    # compact form nats-server sends is always read without the parse:
    if stored and b" " not in answer:
        assert _stored_at(answer, seq)
