"""Pull requests with a byte limit, against a real nats-server: a request ends when its bytes
are used up (the server's 409 with the next message undelivered) and the next one goes on from
there; a message larger than the limit lifts it. Nothing is lost or repeated either way.

The limit here is 3,000 bytes (the puller's own is 8 MiB or more) so that 1,000-byte messages
use a request up after two; with its own limit, a request of 5 messages ends by its count."""

from __future__ import annotations

import asyncio
import logging

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pg_nats_bridge.pull import Idle, Puller


async def _pull_all(
    url: str, payloads: list[bytes], batch: int = 100, max_bytes: int | None = 3000
) -> tuple[list[tuple[int, bytes]], Puller]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        for i, payload in enumerate(payloads):
            await js.publish("s.x", payload, headers={"Nats-Msg-Id": f"m{i}"})
        config = ConsumerConfig(
            name="c", ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL
        )
        await js.add_consumer("S", config)
        puller = Puller(nc, "S", "c", batch=batch, expires=5.0)
        if max_bytes is not None:
            puller.max_bytes = max_bytes
        await puller.start()
        got: list[tuple[int, bytes]] = []
        try:
            async with asyncio.timeout(30):
                while len(got) < len(payloads):
                    while puller.wants_request():
                        await puller.request()
                    got += [(e[1], e[4]) for e in await puller.take(1.0) if not isinstance(e, Idle)]
        finally:
            await puller.stop()
        return got, puller
    finally:
        await nc.close()


def test_requests_that_use_up_their_bytes_deliver_every_message_once_in_order(
    nats_url: str,
) -> None:
    payloads = [bytes([i]) * 1000 for i in range(40)]
    got, puller = asyncio.run(_pull_all(nats_url, payloads))
    assert got == list(enumerate(payloads, 1))
    assert puller.max_bytes == 3000  # every message fit: the limit stayed


def test_requests_with_a_byte_limit_filled_by_their_count_go_on(nats_url: str) -> None:
    """The server says `409 Batch Completed` when such a request got all its messages."""
    payloads = [b"%d" % i for i in range(40)]
    got, puller = asyncio.run(_pull_all(nats_url, payloads, batch=5, max_bytes=None))
    assert got == list(enumerate(payloads, 1))
    assert puller.max_bytes is not None


def test_a_message_larger_than_the_limit_lifts_it(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = [bytes([i]) * 1000 for i in range(10)]
    payloads[6] = b"L" * 5000
    with caplog.at_level(logging.WARNING, "pg_nats_bridge.pull"):
        got, puller = asyncio.run(_pull_all(nats_url, payloads))
    assert got == list(enumerate(payloads, 1))
    assert puller.max_bytes is None
    assert "larger than a pull request's 3000 bytes" in caplog.text
