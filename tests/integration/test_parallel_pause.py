"""A chunked snapshot read by several reader processes, paused by an operator mid-way and
continued (services/snapshotter/parallel.py): the readers stop after their current range, the
record holds each segment, and the continuation sends every row not yet sent, once. Real
PostgreSQL and nats-server, `take_snapshot` called as the snapshotter does."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from services.snapshotter import snapshot
from services.snapshotter.errors import SnapshotError
from services.snapshotter.key_ranges import Operator
from services.snapshotter.publishing import PipelinedPublisher
from services.snapshotter.resume import change_state
from shared.codec import ValueMode
from shared.wire import unpack
from tests.harness.postgres import Database

ROWS = 30_000


def test_a_paused_parallel_chunked_snapshot_continues_with_every_row_once(
    pg: Database, nats_url: str
) -> None:
    pg.execute(
        "CREATE TABLE t (id int PRIMARY KEY, n text);"
        f"INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, {ROWS}) g;"
        "ANALYZE t; CREATE PUBLICATION p FOR TABLE t"
    )
    options = snapshot.SnapshotOptions(
        200, "chunked", transaction_seconds=0.01, readers=3, rows_per_reader=5_000
    )

    async def run() -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await js.add_stream(StreamConfig(name="INIT", subjects=["init.>"]))
            operator = Operator()

            async def take() -> dict[str, Any]:
                async with PipelinedPublisher(nc, "INIT") as publisher:
                    context = snapshot.SnapshotContext(
                        pg.url, "p", ValueMode.TYPED, nc.max_payload, js=js, owner="test"
                    )
                    return await snapshot.take_snapshot(
                        context, "public", "t", options, publisher, operator=operator
                    )

            # Asked before the first range ends: every reader stops after its first range (of
            # 1,000 rows; each segment holds 10,000).
            operator.action = "pause"
            with pytest.raises(SnapshotError) as paused:
                await take()
            assert paused.value.reason == "paused", paused.value
            record = await change_state(js, "INIT", "t", ("paused",), "stopped")  # a resume
            assert record is not None and record.segments, record
            operator.action = None
            meta = await take()
            sub = await js.subscribe("init.snap.t.>", ordered_consumer=True)
            chunks = []
            for _ in range(meta["batch_count"]):
                msg = await sub.next_msg(timeout=10)
                chunks.append(unpack(msg.data))
            return str(paused.value), meta, chunks
        finally:
            await nc.close()

    said, meta, chunks = asyncio.run(run())
    print(f"\n{said}; continued: {meta['row_count']} rows in {meta['batch_count']} chunks")
    assert meta["resumed"] is True and meta["row_count"] == ROWS, meta
    assert [c["chunk"] for c in chunks] == list(range(meta["batch_count"]))
    ids = sorted(r["id"] for c in chunks for r in c["data"])
    assert ids == list(range(1, ROWS + 1)), "a row missing or sent twice"
