"""The compiled NATS frames (shared/compiled/_frames.pyx) against the pure-Python path: a run
of HPUB frames byte for byte what the publisher joins from `hpub` calls, over generated runs
of messages, sequences, previous Msg-Ids (none too) and reply subjects; and a read of a pull
consumer's HMSG frames taken by `Puller._read` as its own loop takes it.

Where the module is not built these tests skip, unless BRIDGE_TEST_REQUIRE_COMPILED=1 (CI
sets it: there they must run)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_nats_bridge.pull import Puller, _Request
from services.replicator.events import Outgoing
from shared import compiled
from shared.nats_frames import hpub
from tests.harness.compiled import built

chain = built(compiled.frames).chain
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


# -- a pull consumer's deliveries in (Puller._read) ---------------------------------------------

_SID = b"7"


@st.composite
def reads(draw: st.DrawFn) -> bytes:
    """A read's bytes as nats-server sends a pull consumer: HMSGs of its subscription with
    JetStream ack replies (9 tokens, or 12 with domain and account), statuses (100, 404,
    408), another subscription's message, odd control lines and numbers, the last one cut."""
    frames = []
    for n in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["plain"] * 8 + ["domain", "status", "flow", "other", "odd"]))
        subject = draw(st.sampled_from([b"cdc.t.insert", b"cdc.~commit", b"cdc.u.delete"]))
        pending = draw(st.sampled_from([0, 1, 5, 10**6]))
        if kind == "domain":
            reply = b"$JS.ACK.hub.ACCHASH.CDC.c.1.%d.%d.1733580000000000000.%d.tok" % (
                n + 10, n + 1, pending,
            )  # fmt: skip
        else:
            reply = b"$JS.ACK.CDC.c.1.%d.%d.1733580000000000000.%d" % (n + 10, n + 1, pending)
        headers = b"NATS/1.0\r\nNats-Msg-Id: 0/1:%d\r\n\r\n" % n
        payload = draw(st.binary(max_size=40))
        sid = _SID
        if kind == "status":
            headers = draw(st.sampled_from([
                b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", b"NATS/1.0 404 No Messages\r\n\r\n",
                b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n",
            ]))  # fmt: skip
            payload, reply = b"", b""
        elif kind == "flow":  # a status with a reply (flow control; here one shaped as an ack)
            headers = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
            payload = b""
        elif kind == "other":
            sid = b"8"
        elif kind == "odd":
            reply = draw(st.sampled_from([
                b"", b"_INBOX.x", b"$JS.ACK.CDC.c.1.x.1.1.0", b"$JS.ACK.a.b.c.d.e.f.g.h.i.j",
                b"$JS.ACK.CDC.c.1.%d.%d.17.+5" % (n, n),
            ]))  # fmt: skip
        body = headers + payload
        fields = [subject, sid, reply, b"%d" % len(headers), b"%d" % len(body)]
        if not reply:
            del fields[2]
        if kind == "odd" and draw(st.booleans()):
            fields[-1] = draw(st.sampled_from([b"+%d" % len(body), b"x", b"99999999999999999999"]))
        frames.append(b"HMSG " + b" ".join(fields) + b"\r\n" + body + b"\r\n")
    read = b"".join(frames)
    if draw(st.booleans()):
        read = read[: draw(st.integers(0, len(read)))]
    return read


def _puller(on: bool, remaining: list[int]) -> Any:
    puller = Puller(None, "CDC", "c")  # type: ignore[arg-type]  # reads bytes only, no client
    if not on:
        puller.compiled = None
    puller.requests.extend(_Request(r, marker=f"m{i}") for i, r in enumerate(remaining))
    return puller


@given(read=reads(), remaining=st.lists(st.integers(1, 15), max_size=3))
def test_a_read_of_deliveries_is_taken_as_the_pure_path_takes_it(
    read: bytes, remaining: list[int]
) -> None:
    """The same deliveries, Idle markers, request counts, error and position, on and off."""
    said = []
    for on in (True, False):
        puller = _puller(on, remaining)
        taken = puller._read(read, 0, _SID)
        said.append((
            taken, list(puller.ready), [(r.remaining, r.delivered, r.marker) for r in
                                        puller.requests], repr(puller.error),
        ))  # fmt: skip
    assert said[0] == said[1]


def test_the_compiled_reader_takes_a_run_of_deliveries_in_one_step() -> None:
    """Not a vacuous equality: it reads plain deliveries itself, 9- and 12-token replies."""
    frames = b"".join(
        b"HMSG cdc.t.insert 7 %b 12 14\r\nNATS/1.0\r\n\r\nab\r\n" % reply
        for reply in (b"$JS.ACK.CDC.c.1.10.1.17.2", b"$JS.ACK.hub.H.CDC.c.1.11.2.17.1.tok")
    )
    entries, pos, quiet = compiled.frames.read_messages(frames, 0, _SID, {})  # type: ignore[union-attr]
    assert (entries, pos, quiet) == (
        [(b"cdc.t.insert", 10, 1, 2, b"ab"), (b"cdc.t.insert", 11, 2, 1, b"ab")],
        len(frames),
        True,
    )
