"""The puller's own parsing of nats-py's read buffer and its accounting of pull requests: every
message reaches its handler once, in order, however the reads cut the bytes; other
subscriptions' messages and protocol lines reach nats-py as before."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.parser import Parser

from pg_nats_bridge.pull import REQUEST_BYTES, Idle, Puller, PullError, _Hooks, _Request

OURS, OTHER = 7, 3


def hmsg(sid: int, seq: int, pending: int, payload: bytes, status: bytes = b"") -> bytes:
    headers = (
        b"NATS/1.0 " + status + b"\r\n\r\n"
        if status
        else b"NATS/1.0\r\nNats-Msg-Id: x\r\nNats-Expected-Last-Sequence: 1\r\n\r\n"
    )
    reply = b"" if status else f"$JS.ACK.CDC.c.1.{seq}.{seq}.1700000000000000000.{pending}".encode()
    subject = b"_INBOX.x" if status else b"cdc.t.insert"
    line = b"HMSG %b %d %b%d %d\r\n" % (
        subject,
        sid,
        reply + b" " if reply else b"",
        len(headers),
        len(headers) + len(payload),
    )
    return line + headers + payload + b"\r\n"


class FakeClient:
    """What the hooks touch of a nats-py client: its message handler and its parser."""

    def __init__(self) -> None:
        self.others: list[tuple[int, bytes, bytes]] = []
        self.pongs = 0
        self._ps = Parser(self)
        self.published: list[dict[str, Any]] = []

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.published.append(json.loads(payload))

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.others.append((sid, subject, data))

    async def _process_ping(self) -> None:
        self.pongs += 1

    async def _process_pong(self) -> None:
        pass


def stream_of(n: int) -> tuple[bytes, list[bytes], int]:
    """Our messages interleaved with another subscription's, a PING and statuses."""
    out = b""
    ours = []
    for i in range(1, n + 1):
        payload = b"row %d " % i * (i % 5)
        out += hmsg(OURS, i, n - i, payload)
        ours.append(payload)
        if i % 4 == 0:
            out += hmsg(OTHER, 1000 + i, 0, b"theirs")
        if i % 7 == 0:
            out += b"PING\r\n"
        if i % 5 == 0:  # a request ended: a status message without a reply subject
            out += hmsg(OURS, 0, 0, b"", status=b"408 Request Timeout")
    return out, ours, n // 4


async def feed(client: FakeClient, data: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    for a, b in itertools.pairwise(edges):
        await client._ps.parse(data[a:b])


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_every_message_reaches_its_handler_once_in_order_however_reads_cut_it(
    n: int, cuts: list[int]
) -> None:
    client = FakeClient()
    puller = make_puller(client)
    hooks = _Hooks.of(client)
    hooks.attach(OURS, puller)
    data, ours, theirs = stream_of(n)
    asyncio.run(feed(client, data, cuts))
    assert puller.error is None
    assert [entry[4] for entry in puller.ready] == ours
    assert [entry[1] for entry in puller.ready] == list(range(1, n + 1))
    assert [d for _, _, d in client.others] == [b"theirs"] * theirs
    assert client.pongs == n // 7
    hooks.detach(OURS)
    assert "parse" not in vars(client._ps) and not hasattr(client, "_pnb_pull_hooks")


def test_pullers_on_one_client_attach_and_detach_in_any_order() -> None:
    client = FakeClient()
    original = client._process_msg
    first, second = _Hooks.of(client), _Hooks.of(client)
    assert first is second
    a, b = make_puller(client), make_puller(client)
    first.attach(1, a)
    first.attach(2, b)
    first.detach(1)
    asyncio.run(client._ps.parse(hmsg(2, 1, 0, b"two") + hmsg(1, 1, 0, b"one")))
    assert not a.ready and [entry[4] for entry in b.ready] == [b"two"]
    assert client.others[-1][2] == b"one"
    first.detach(2)
    assert client._process_msg == original


def make_puller(client: FakeClient | None = None) -> Puller:
    return Puller(client or FakeClient(), "CDC", "c", batch=3)  # type: ignore[arg-type]


def deliver(puller: Puller, seq: int, pending: int) -> None:
    reply = f"$JS.ACK.CDC.c.1.{seq}.{seq}.1700000000000000000.{pending}".encode()
    puller._on_message(b"cdc.t.insert", reply, b"x", None)


def status(puller: Puller, line: bytes) -> None:
    puller._on_message(b"_INBOX.x", b"", b"", b"NATS/1.0 " + line + b"\r\n\r\n")


def entries(puller: Puller) -> list[Any]:
    out = list(puller.ready)
    puller.ready.clear()
    return [e if isinstance(e, Idle) else e[1] for e in out]


def test_idle_follows_the_message_after_which_nothing_is_pending() -> None:
    puller = make_puller()
    puller.requests.extend([_Request(3, "m1"), _Request(3, "m2")])
    deliver(puller, 1, 1)
    deliver(puller, 2, 0)
    assert entries(puller) == [1, 2, Idle("m1")]
    status(puller, b"408 Request Timeout")  # the first request expires: reported once
    assert entries(puller) == []
    status(puller, b"408 Request Timeout")  # the second received nothing in its life
    assert entries(puller) == [Idle("m2")]


def test_a_request_that_ended_with_messages_pending_is_not_idle() -> None:
    puller = make_puller()
    puller.requests.extend([_Request(3, "m1"), _Request(3, "m2")])
    for seq, pending in ((1, 5), (2, 4), (3, 3)):  # fills the first request
        deliver(puller, seq, pending)
    deliver(puller, 4, 2)
    status(puller, b"408 Request Timeout")  # the second one expired after a message
    assert entries(puller) == [1, 2, 3, 4]
    assert not puller.requests


def test_a_request_whose_bytes_are_used_up_ends_without_idle_or_error() -> None:
    puller = make_puller()
    limit = puller.max_bytes
    puller.requests.extend([_Request(3, "m1"), _Request(3, "m2")])
    deliver(puller, 1, 5)
    status(puller, b"409 Message Size Exceeds MaxBytes")  # the first request ends there
    deliver(puller, 2, 0)  # the second one's: nothing pending after it
    assert entries(puller) == [1, 2, Idle("m2")]
    assert len(puller.requests) == 1 and puller.max_bytes == limit
    asyncio.run(puller.take(0.01))  # no error


def test_a_request_with_a_byte_limit_that_got_all_its_messages_is_counted_out_once() -> None:
    puller = make_puller()
    puller.requests.extend([_Request(2, "m1"), _Request(3, "m2")])
    deliver(puller, 1, 5)
    deliver(puller, 2, 4)  # the first request's last
    status(puller, b"409 Batch Completed")  # the server says so, for a request with max_bytes
    assert [r.marker for r in puller.requests] == ["m2"]
    asyncio.run(puller.take(0.01))  # no error


def test_a_message_larger_than_a_requests_bytes_lifts_the_limit() -> None:
    puller = make_puller()
    limit = puller.max_bytes
    puller.requests.extend([_Request(3, "m1"), _Request(3, "m2")])
    deliver(puller, 1, 5)  # the server deals messages out in turn: each request had one
    deliver(puller, 2, 4)
    puller.requests.append(_Request(3, "m3", received_before=2))
    for _ in range(2):  # both used up
        status(puller, b"409 Message Size Exceeds MaxBytes")
    assert puller.max_bytes == limit and len(puller.requests) == 1
    status(puller, b"409 Message Size Exceeds MaxBytes")  # nothing since it was sent
    assert puller.max_bytes is None and not puller.requests


def test_a_request_asks_for_at_most_its_bytes_and_more_than_any_message() -> None:
    class Client:
        max_payload = 64 << 20  # the largest max_payload a server takes

    assert Puller(Client(), "CDC", "c").max_bytes == (64 << 20) + (64 << 10)  # type: ignore[arg-type]
    assert make_puller().max_bytes == REQUEST_BYTES


def test_a_request_asks_for_its_batch_at_most_the_pullers() -> None:
    client = FakeClient()
    puller = make_puller(client)  # batch=3

    async def ask() -> None:
        await puller.request("m1", 2)
        await puller.request("m2", 50)
        await puller.request()

    asyncio.run(ask())
    assert [body["batch"] for body in client.published] == [2, 3, 3]
    assert [r.remaining for r in puller.requests] == [2, 3, 3]
    assert all(body["max_bytes"] == REQUEST_BYTES for body in client.published)


def test_metadata_with_domain_and_account_tokens() -> None:
    puller = make_puller()
    reply = b"$JS.ACK._.ACCOUNTHASH.CDC.c.1.42.17.1700000000000000000.0.rnd"
    puller._on_message(b"cdc.t.insert", reply, b"x", None)
    assert list(puller.ready) == [(b"cdc.t.insert", 42, 17, 0, b"x")]


@pytest.mark.parametrize(
    ("reply", "line"),
    [
        (b"not.a.js.reply", None),
        (b"", b"409 Consumer Deleted"),
        (b"", b"409 Leadership Change"),
    ],
)
def test_anything_else_ends_the_pulling_with_a_clear_error(
    reply: bytes, line: bytes | None
) -> None:
    puller = make_puller()
    if line is None:
        puller._on_message(b"cdc.t.insert", reply, b"x", None)
    else:
        status(puller, line)
    with pytest.raises(PullError) as raised:
        asyncio.run(puller.take(0.01))
    assert (line or b"metadata").decode().split()[-1] in str(raised.value)


def test_a_payload_that_arrives_in_many_reads_is_taken_whole() -> None:
    client = FakeClient()
    puller = make_puller(client)
    _Hooks.of(client).attach(OURS, puller)
    payload = bytes(range(256)) * 4096  # 1 MiB, holding CR LF and "HMSG " bytes
    data = hmsg(OURS, 1, 0, payload) + hmsg(OURS, 2, 0, b"after")
    asyncio.run(feed(client, data, list(range(7, len(data), 65536))))
    assert [entry[4] for entry in puller.ready] == [payload, b"after"]


def test_a_malformed_size_goes_to_nats_py_instead_of_raising() -> None:
    client = FakeClient()
    puller = make_puller(client)
    _Hooks.of(client).attach(OURS, puller)
    bad = b"HMSG cdc.t.insert %d $JS.ACK.CDC.c.1.2.2.1.0 x1 y2\r\n" % OURS
    with pytest.raises(nats.errors.ProtocolError):  # nats-py's parser rejects it, as without us
        asyncio.run(client._ps.parse(hmsg(OURS, 1, 0, b"one") + bad))
    assert [entry[4] for entry in puller.ready] == [b"one"]
