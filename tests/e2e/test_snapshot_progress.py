"""A running snapshot's progress, where an operator looks: the admin's /status and status
page, `bridge status`, the snapshotter's metrics and /health; gone once it finished.

The snapshotter stalls 8 s after its third chunk (a failpoint) so that the test reads the
progress of a snapshot that is surely still running, instead of racing a fast one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx

from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, wait_for

ROWS, CHUNK = 50_000, 5_000


def test_a_running_snapshot_shows_rows_estimate_rate_and_time_left(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg.execute(f"INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g")
    pg.execute("ANALYZE t")  # the estimate comes from pg_class.reltuples
    replicator = services("replicator", pg, nats_url, table="t").wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, table="t", failpoints="snapshot.after_chunk=sleep:8@3"
    ).wait_healthy()
    front = services(
        "admin",
        pg,
        nats_url,
        replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}",
    )
    wait_for(lambda: front.health() == 200, 30, "admin healthy", front)
    request = subprocess.Popen(
        [BRIDGE, "snapshot", "t", "--chunk-size", str(CHUNK)],
        env=snapshotter.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    admin = f"http://127.0.0.1:{front.port}"

    def running() -> list[dict[str, Any]]:
        status = httpx.get(f"{admin}/status", timeout=10).json()
        found: list[dict[str, Any]] = status["snapshotter"]["running"]
        return found

    progress = wait_for(
        lambda: (r := running()) and r[0]["rows_done"] >= 3 * CHUNK and r,
        30,
        "the snapshot's progress in /status",
        snapshotter,
    )
    (shown,) = progress
    assert shown["table"] == "public.t"
    assert shown["rows_done"] == 3 * CHUNK, shown  # stalled after its third chunk
    assert abs(shown["rows_estimated"] - ROWS) <= ROWS // 10, shown
    assert shown["rows_per_second"] > 0 and shown["seconds_left"] > 0, shown
    health = httpx.get(f"http://127.0.0.1:{snapshotter.port}/health", timeout=10).json()
    assert [s["table"] for s in health["snapshots"]] == ["public.t"], health
    metrics = snapshotter.metrics()
    assert 'bridge_snapshot_progress_rows{table="public.t"} 15000.0' in metrics
    assert 'bridge_snapshot_progress_estimated_rows{table="public.t"}' in metrics
    assert 'bridge_snapshot_progress_seconds_left{table="public.t"}' in metrics
    said = subprocess.run(
        [BRIDGE, "status", "--admin-url", admin], capture_output=True, text=True, timeout=60
    )
    assert "snapshot of public.t" in said.stdout and "15,000 rows of ~" in said.stdout, said

    out, _ = request.communicate(timeout=120)
    assert request.returncode == 0, out
    assert str(ROWS) in out  # the reply's row_count
    wait_for(lambda: running() == [], 10, "the finished snapshot to leave /status")
    assert "bridge_snapshot_progress_rows{" not in snapshotter.metrics()
