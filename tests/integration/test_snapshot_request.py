"""Asking again for a snapshot (pg_nats_bridge/snapshot_request.py), against a real
nats-server with no snapshotter: a requester that saw chunks of a snapshot, and finds that
snapshot's meta published when it is about to ask again, takes it (as `joined`) rather than
asking for another; another snapshot's meta is no reason to stop asking, and a backfill or a
request for a fresh snapshot takes none."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from pg_nats_bridge import contract
from pg_nats_bridge.snapshot_request import ask_for_snapshot

META = {
    "batch_count": 1, "lsn": "0/16B3748", "row_count": 1, "schema": "public",
    "snapshot_id": "snap-1-aa", "table": "t", "timestamp": 1, "mode": "chunked",
    "resumed": True,
}  # fmt: skip


async def _ask_while(
    url: str, publish: list[tuple[str, dict[str, Any]]], request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`ask_for_snapshot` for `t` while `publish` goes to INIT, a message at a time, a moment
    apart (nobody answers the requests: no snapshotter runs)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=contract.INIT_STREAM, subjects=["init.>"])
        asking = asyncio.ensure_future(
            ask_for_snapshot(nc, js, "t", request or {"mode": "chunked"}, table="public.t")
        )
        for subject, body in publish:
            await asyncio.sleep(0.3)
            await js.publish(subject, contract.pack(body))
        return await asyncio.wait_for(asking, 10)
    finally:
        await nc.close()


def test_a_snapshot_whose_chunks_were_seen_is_taken_once_its_meta_is_published(
    nats_url: str,
) -> None:
    chunk = {"chunk": 0, "rows": []}
    meta = asyncio.run(
        _ask_while(nats_url, [("init.snap.t.snap-1-aa.0", chunk), ("init.meta.t", META)])
    )
    assert meta == {**META, "joined": True}


def test_another_snapshots_meta_is_not_taken(nats_url: str) -> None:
    other = {**META, "snapshot_id": "snap-2-bb"}
    with pytest.raises(TimeoutError):
        asyncio.run(_ask_while(nats_url, [("init.snap.t.snap-1-aa.0", {}), ("init.meta.t", other)]))


@pytest.mark.parametrize(
    "request_body",
    [
        {"mode": "chunked", "where": [{"column": "id", "op": ">", "value": 1}]},  # a backfill
        {"mode": "chunked", "fresh": True},
    ],
)
def test_a_backfill_or_a_fresh_request_takes_no_other_snapshot(
    nats_url: str, request_body: dict[str, Any]
) -> None:
    publish = [("init.snap.t.snap-1-aa.0", {}), ("init.meta.t", META)]
    with pytest.raises(TimeoutError):
        asyncio.run(_ask_while(nats_url, publish, request_body))
