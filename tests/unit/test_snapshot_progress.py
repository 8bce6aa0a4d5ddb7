"""A running snapshot's progress figures (services/snapshotter/progress.py) and how the tools
show them (services/tools/console.py), hostile chunk messages included."""

from __future__ import annotations

import time

import msgpack
import pytest

from services.snapshotter import metrics
from services.snapshotter.chunk_packing import ChunkBuilder
from services.snapshotter.progress import SnapshotProgress
from services.tools.console import ChunkCount, describe_progress
from shared.wire import unpack


def test_rate_and_time_left_follow_the_rows_and_the_estimate() -> None:
    progress = SnapshotProgress("public.t", started=time.monotonic() - 10)  # 10 s ago
    assert progress.seconds_left() is None  # no rows yet
    progress.estimated(1_000)
    progress.add(250)
    left = progress.seconds_left()
    assert progress.rate() == pytest.approx(25, rel=0.05)
    assert left is not None and left == pytest.approx(30, rel=0.05)
    progress.add(1_000)  # past a low estimate: nothing left, not negative
    assert progress.seconds_left() == 0
    assert progress.as_dict()["rows_done"] == 1_250
    assert (
        metrics.REGISTRY.get_sample_value("bridge_snapshot_progress_rows", {"table": "public.t"})
        == 1_250
    )
    progress.finish()
    assert (
        metrics.REGISTRY.get_sample_value("bridge_snapshot_progress_rows", {"table": "public.t"})
        is None
    )


def test_without_an_estimate_there_is_no_time_left() -> None:
    progress = SnapshotProgress("public.u")
    progress.add(10)
    assert progress.seconds_left() is None and progress.as_dict()["rows_estimated"] is None
    progress.finish()


def test_chunks_carry_the_estimate_only_when_known() -> None:
    builder = ChunkBuilder(10, 1 << 20)
    builder.add_many([msgpack.packb({"id": 1})], ["id"])
    first = builder.finish()
    assert first is not None and unpack(first.payload) == {"chunk": 0, "data": [{"id": 1}]}
    builder.estimated_rows = 42
    builder.add_many([msgpack.packb({"id": 2})], ["id"])
    second = builder.finish()
    assert second is not None
    assert unpack(second.payload) == {"chunk": 1, "estimated_rows": 42, "data": [{"id": 2}]}


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"data": 5}), msgpack.packb({"chunk": 0})],
)
def test_a_message_that_is_not_a_chunk_counts_nothing(payload: bytes) -> None:
    seen = ChunkCount()
    seen.add(payload)
    assert seen.rows == 0 and seen.estimated is None


def test_the_progress_line() -> None:
    seen = ChunkCount()
    seen.add(msgpack.packb({"chunk": 0, "estimated_rows": 200, "data": [{}] * 50}))
    seen.add(msgpack.packb({"chunk": 1, "estimated_rows": True, "data": [{}] * 50}))
    assert seen.rows == 100 and seen.estimated == 200  # a boolean is no estimate
    assert str(seen).startswith("100 rows of ~200 (50%), ")
    line = describe_progress(
        {"rows_done": 1500, "rows_estimated": None, "rows_per_second": 20, "seconds_left": None}
    )
    assert line == "1,500 rows, 20 rows/s"
