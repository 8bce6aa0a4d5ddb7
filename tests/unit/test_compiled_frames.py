"""The compiled run of HPUB frames (shared/compiled/_frames.pyx) is byte for byte what the
publisher joins from `hpub` calls (the pure-Python path): over generated runs of messages,
sequences, previous Msg-Ids (none too) and reply subjects.

Where the module is not built these tests skip, unless BRIDGE_TEST_REQUIRE_COMPILED=1 (CI
sets it: there they must run)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.replicator.events import Outgoing
from shared import compiled
from shared.nats_frames import hpub

if compiled.frames is None:
    if os.environ.get("BRIDGE_TEST_REQUIRE_COMPILED", "").strip() not in ("", "0"):
        raise RuntimeError(
            "the compiled hot path is not built (or BRIDGE_PURE_PYTHON is set) and "
            "BRIDGE_TEST_REQUIRE_COMPILED=1: make install builds it"
        )
    pytest.skip("the compiled hot path is not built here", allow_module_level=True)

chain = compiled.frames.chain
_TOKEN = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b" ", b"_"))


def reference(
    messages: list[Outgoing], start: int, end: int, expected: int, previous: bytes, reply: bytes
) -> bytes:
    """`Publisher._chain`'s pure-Python loop."""
    frames = []
    for message in messages[start : end - 1]:
        frames.append(hpub(message.subject, b"", message.msg_id, expected, message.payload,
                           previous))  # fmt: skip
        expected += 1
        previous = message.msg_id
    last = messages[end - 1]
    frames.append(hpub(last.subject, reply, last.msg_id, expected, last.payload, previous))
    return b"".join(frames)


@given(
    messages=st.lists(
        st.builds(Outgoing, _TOKEN, st.binary(max_size=3000), _TOKEN), min_size=1, max_size=30
    ),
    data=st.data(),
    expected=st.integers(0, (1 << 63) - 30) | st.sampled_from([0, 9, 10, 99, 100]),
    previous=st.just(b"") | _TOKEN,
    reply=st.just(b"") | _TOKEN,
)
def test_a_compiled_run_of_frames_is_the_reference_s(
    messages: list[Outgoing], data: st.DataObject, expected: int, previous: bytes, reply: bytes
) -> None:
    start = data.draw(st.integers(0, len(messages) - 1))
    end = data.draw(st.integers(start + 1, len(messages)))
    assert chain(messages, start, end, expected, previous, reply) == reference(
        messages, start, end, expected, previous, reply
    )


def test_an_empty_run_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        chain([Outgoing(b"s", b"p", b"i")], 1, 1, 0, b"", b"")
