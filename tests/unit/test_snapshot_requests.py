"""The snapshot request handler's answers to bodies that are not requests, through FastStream's
test broker: each gets a `bad_request` reply at once naming what is wrong (FastStream's own
decoding left some unanswered), and a request for a table not configured gets
`unknown_table`. Valid requests, which need the servers, are in tests/e2e."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from faststream.nats import TestNatsBroker

from services.snapshotter.app import build_app
from services.snapshotter.settings import SnapshotterSettings


def ask_all(bodies: list[bytes], subject: str = "bridge.snapshot.users") -> list[dict[str, Any]]:
    app, _ = build_app(SnapshotterSettings(table=["users"]))

    async def ask() -> list[dict[str, Any]]:
        async with TestNatsBroker(app.broker) as broker:
            replies = []
            for body in bodies:
                reply = await broker.request(body, subject, timeout=5)
                replies.append(json.loads(reply.body))
            return replies

    return asyncio.run(ask())


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000, "4096 bytes"),  # was RecursionError: no reply
        (b"[" * 2_000, "nested too deeply"),
        (b"1" * 5_000, "4096 bytes"),  # was Python's int-string limit: no reply
        (b"1" * 4_400, "4096 bytes"),
        (b'{"chunk_size": ' + b"9" * 4_300 + b"}", "4096 bytes"),
        (b'{"chunk_size": 1' + b"0" * 4_000 + b"}", "less than or equal to 10000 (got 1000"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"{", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'"chunk_size"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"chunk_size": "5"}', "chunk_size: Input should be a valid integer"),
        (b'{"chunk_size": 5.0}', "chunk_size: Input should be a valid integer"),
        (b'{"chunk_size": true}', "chunk_size: Input should be a valid integer"),
        (b'{"chunk_size": 0}', "chunk_size: Input should be greater than or equal to 1"),
        (b'{"chunk_size": 10001}', "chunk_size: Input should be less than or equal to 10000"),
        (b'{"chunk_size": NaN}', "chunk_size"),
        (b'{"chunk_size": 1e999}', "chunk_size"),
        (b'{"table": "pg_authid"}', "table: Extra inputs are not permitted"),
        (b'{"__proto__": {}}', "__proto__: Extra inputs are not permitted"),
    ],
)
def test_a_body_that_is_no_request_is_answered_bad_request(body: bytes, says: str) -> None:
    (reply,) = ask_all([body])
    assert reply["reason"] == "bad_request", reply
    assert says in reply["error"], reply
    assert len(reply["error"]) < 600  # the body is never echoed whole


def test_every_bad_body_of_a_burst_is_answered() -> None:
    bodies = [b"[" * 100_000, b"1" * 5_000, b"\x00" * 10, b"{}x"] * 25
    replies = ask_all(bodies)
    assert [r["reason"] for r in replies] == ["bad_request"] * len(bodies)


def test_a_table_not_configured_is_refused_by_name() -> None:
    (reply,) = ask_all([b""], subject="bridge.snapshot.pg_catalog~pg_authid")
    assert reply["reason"] == "unknown_table"
    assert (
        "'pg_catalog~pg_authid' is not configured here (configured: public.users)"
        in (reply["error"])
    )


def test_a_burst_of_bad_requests_is_logged_once_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anyone can send them: each is answered and counted, the log gets one line per 10 s."""
    ask_all([b"{"] * 30)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines
