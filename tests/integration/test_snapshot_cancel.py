"""A snapshot cancelled (the snapshotter stops) while PostgreSQL keeps it waiting ends at once
(shared/pg_cancel.py): its blocking work runs in threads, which only a cancelled query lets go.
Real PostgreSQL and nats-server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from services.snapshotter import exported_read, snapshot
from services.snapshotter.publishing import PipelinedPublisher
from shared.codec import ValueMode
from tests.harness.postgres import Database

_WAITING = "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND NOT granted"


def test_a_snapshot_cancelled_while_its_read_waits_for_a_lock_ends(
    table: Database, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the export a session reads `t` in a transaction it keeps open, and an
    ALTER TABLE queues behind it: the snapshot's read queues behind the ALTER. Cancelled, the
    snapshot ends within seconds, its backend waits no more, and the slot is gone; the ALTER
    is left to the session it waits for."""
    export = exported_read.export_snapshot
    reading = table.connect(autocommit=False)
    altering: list[BaseException | None] = []

    def alter() -> None:
        try:
            with table.connect() as conn:
                conn.execute("ALTER TABLE t ALTER COLUMN n TYPE bigint")
            altering.append(None)
        except BaseException as exc:
            altering.append(exc)

    alter_thread = threading.Thread(target=alter)

    def export_then_queue_an_alter(*args: Any, **kwargs: Any) -> Any:
        exported = export(*args, **kwargs)
        reading.execute("SELECT count(*) FROM t")  # ACCESS SHARE until it commits
        alter_thread.start()
        while table.execute(_WAITING) != [(1,)]:
            time.sleep(0.01)
        return exported

    monkeypatch.setattr(exported_read, "export_snapshot", export_then_queue_an_alter)

    async def run() -> float:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="INIT", subjects=["init.>"]))
            async with PipelinedPublisher(nc, "INIT") as publisher:
                context = snapshot.SnapshotContext(table.url, "p", ValueMode.TYPED, nc.max_payload)
                taking = snapshot.take_snapshot(
                    context, "public", "t", snapshot.SnapshotOptions(100), publisher
                )
                task = asyncio.ensure_future(taking)
                while table.execute(_WAITING) != [(2,)]:  # the ALTER, and the snapshot's read
                    assert not task.done(), task
                    await asyncio.sleep(0.01)
                task.cancel()
                if not (await asyncio.wait({task}, timeout=20))[0]:
                    reading.rollback()  # lets the ALTER, then the read, go: the test can end
                    await asyncio.wait({task})
                    raise AssertionError("the cancelled snapshot waited on in PostgreSQL")
                assert task.cancelled()
        finally:
            await nc.close()

    try:
        asyncio.run(run())
        assert table.execute(_WAITING) == [(1,)]  # the ALTER alone
        assert table.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bridge_snap_%'"
        ) == [(0,)]
    finally:
        reading.rollback()
        reading.close()
        alter_thread.join(30)
    assert altering == [None]
