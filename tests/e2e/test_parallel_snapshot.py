"""Snapshots read by several reader processes (`--snapshot-readers`; docs/services.md): the
same rows as one reader in both modes, each once; a chunked one killed mid-way is continued
segment by segment without a row twice; a copy loaded under writes verifies equal.

The table is 60,000 rows, analyzed so that the planner's estimate asks for four readers
(`--snapshot-rows-per-reader` 10,000; the default would give it one); the transactions of
the chunked mode are cut to about 20 ms so that each segment takes many ranges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_nats_bridge.sqlite import stored_value
from tests.harness.copies import (
    Writer,
    assert_loaded_the_continued_snapshot,
    bridge,
    chunked_copy,
    make_tables,
)
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for
from tests.harness.streams import request

ROWS = 60_000


def big_items(pg: Database) -> None:
    make_tables(pg)
    pg.execute(
        "INSERT INTO items SELECT g, g / 3.0, repeat('c', 20 + g % 2 * 4000), g % 3 = 0"
        f" FROM generate_series(3002, {ROWS}) g; ANALYZE items"
    )


def snapshot_rows(nats_url: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    prefix = f"init.snap.items.{meta['snapshot_id']}."
    chunks = [(s, c) for s, _, c in stream_messages(nats_url, "INIT") if s.startswith(prefix)]
    numbers = [c["chunk"] for _, c in chunks]
    assert numbers == list(range(meta["batch_count"])), "chunks out of order, missing or twice"
    # NaN as the copy stores it, so that equal rows compare equal.
    return [{k: stored_value(v) for k, v in r.items()} for _, c in chunks for r in c["data"]]


def last_meta(nats_url: str) -> dict[str, Any]:
    return [m for s, _, m in stream_messages(nats_url, "INIT") if s == "init.meta.items"][-1]


def test_four_readers_read_the_rows_one_reader_does_in_both_modes(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    big_items(pg)
    services("replicator", pg, nats_url, table="items").wait_healthy()
    one = services("snapshotter", pg, nats_url, table="items").wait_healthy()
    result = bridge("snapshot", "items", env=one.env)
    assert result.returncode == 0, result.stdout
    expected = sorted(snapshot_rows(nats_url, last_meta(nats_url)), key=lambda r: r["id"])
    assert len(expected) == ROWS
    one.stop()
    four = services(
        "snapshotter", pg, nats_url, table="items", snapshot_readers=4,
        snapshot_rows_per_reader=10_000,
        snapshot_transaction_seconds=0.02,
    ).wait_healthy()  # fmt: skip
    for mode in ("exported", "chunked"):
        result = bridge("snapshot", "items", "--snapshot-mode", mode, env=four.env)
        assert result.returncode == 0, result.stdout
        meta = last_meta(nats_url)
        assert meta.get("mode", "exported") == mode and meta["row_count"] == ROWS, meta
        rows = snapshot_rows(nats_url, meta)
        assert sorted(rows, key=lambda r: r["id"]) == expected, mode
    said = four.output()
    assert "by 4 readers" in said, said[-2000:]


def test_a_parallel_chunked_snapshot_killed_mid_way_is_continued_and_the_copy_is_equal(
    pg: Database,
    nats_url: str,
    services: Callable[..., Service],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first snapshotter (four readers) dies after its 30th chunk, under writes; the copy
    asks again once the progress record says so, and a second snapshotter continues every
    segment from its recorded key; each chunk is in INIT once, the copy loads that snapshot
    and verifies equal."""
    big_items(pg)
    settings = {
        "table": "items",
        "snapshot_readers": 4,
        "snapshot_rows_per_reader": 10_000,
        "snapshot_transaction_seconds": 0.02,
        "snapshot_takeover_seconds": 10,
        "chunk_size": 1000,
    }
    replicator = services("replicator", pg, nats_url, table="items").wait_healthy()
    doomed = services(
        "snapshotter", pg, nats_url, failpoints="snapshot.after_chunk=exit@30", **settings
    ).wait_healthy()
    path = tmp_path / "copy.db"
    with chunked_copy(nats_url, path) as copy:
        with Writer(pg.url, seed=31) as writer:
            assert doomed.wait(120) != 0  # the failpoint's exit, mid-snapshot
            second = services("snapshotter", pg, nats_url, **settings).wait_healthy()
            wait_for(copy.loaded.is_set, 120, "the copy to load and catch up", second)
            before = writer.transactions
            wait_for(lambda: writer.transactions > before + 200, 60, "writes after the load")
        copy.catch_up(pg)
    result = bridge("verify", "items", "--sqlite", str(path), env=replicator.env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr

    line = next(x for x in second.output().splitlines() if "continuing the chunked" in x)
    print("\n" + line.split("INFO ")[-1])
    meta = last_meta(nats_url)
    assert meta["resumed"] is True, meta
    rows = snapshot_rows(nats_url, meta)  # numbers 0..n-1, each once
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == meta["row_count"], "a row in two chunks"
    assert_loaded_the_continued_snapshot(meta, [path], [caplog.text])


@pytest.mark.parametrize("blocked", ["sampling", "readers"])
def test_readers_locked_out_by_a_queued_alter_table_export_again(
    pg: Database, nats_url: str, services: Callable[..., Service], blocked: str
) -> None:
    """A transaction holds the table; an ALTER TABLE queues behind it; the snapshot's lock
    requests queue behind the ALTER. One reader alone would wait with them; several could
    wait on one another for good (the first holds its lock while the snapshotter waits for
    the rest), so the key's sampling and each reader give up after 5 s and the snapshot is
    tried again once the way is clear: it comes, after the ALTER, with its column. The ALTER
    queues before the request (the sampling meets it), or once the snapshot was exported and
    the readers are about to start (a failpoint holds them 3 s)."""
    make_tables(pg)
    pg.execute("ANALYZE items")
    services("replicator", pg, nats_url, table="items").wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, table="items", snapshot_readers=3,
        snapshot_rows_per_reader=1000,
        failpoints="snapshot.before_readers=sleep:3" if blocked == "readers" else None,
    ).wait_healthy()  # fmt: skip
    holder = psycopg.connect(pg.url)
    alter = threading.Thread(
        target=lambda: pg.execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7"),
        daemon=True,
    )

    def block() -> None:
        holder.execute("SELECT FROM items LIMIT 0")  # its transaction holds ACCESS SHARE
        alter.start()

    if blocked == "sampling":
        block()
    replies: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: replies.append(request(nats_url, "items")))
    asking.start()
    if blocked == "readers":
        wait_for(lambda: "Received" in snapshotter.output(), 10, "the request")
        time.sleep(1)  # exported by now; the readers start in 2 s
        block()
    wait_for(lambda: "waited 5 s for the table's lock" in snapshotter.output(), 30, "a lock wait")
    holder.commit()  # the ALTER goes through, then the snapshot
    holder.close()
    asking.join(60)
    alter.join(10)
    (meta,) = replies
    assert meta.get("row_count") == 3001, meta
    rows = snapshot_rows(nats_url, meta)
    assert {r["extra"] for r in rows} == {7}, "read before the ALTER"
