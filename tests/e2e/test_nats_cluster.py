"""The bridge on a 3-node JetStream cluster with R3 streams, losing servers under load.

Under a steady load the CDC stream's leader is killed -9 and restarted, then a non-leader;
during a snapshot of a large table the INIT stream's leader is killed. Every change arrives
once, in commit order; the snapshot completes (chunks whose PubAck the dead leader took with
it are sent again); the replicator's /health tells what happened meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import nats
import psycopg
import pytest

from shared.wire import unpack
from tests.harness.nats_cluster import NatsCluster
from tests.harness.postgres import Database
from tests.harness.services import Service, wait_for

BIG_ROWS = 400_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster.create() as nats_cluster:
        yield nats_cluster


class Load:
    """Single-row transactions into `t` at a steady pace, from a thread."""

    def __init__(self, url: str, per_second: float = 200) -> None:
        self.url, self.pause = url, 1 / per_second
        self.written = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute("INSERT INTO t VALUES (%s)", (self.written + 1,))
                self.written += 1
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


class HealthLog:
    """The replicator's /health every 0.2 s, from a thread."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health"
        self.seen: list[tuple[int, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                reply = httpx.get(self.url, timeout=2)
                self.seen.append((reply.status_code, reply.json()))
            except (httpx.HTTPError, ValueError):
                self.seen.append((0, {}))

    def __enter__(self) -> HealthLog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


class LeaderWatch:
    """How long the CDC stream leaves info requests unanswered (it has no leader), asked
    every 0.1 s from a thread on its own connection: JetStream's share of a stall."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self.gaps: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        servers = self.cluster.url.split(",")
        nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=-1)
        js = nc.jetstream(timeout=0.5)
        since: float | None = None
        while not self.stop.is_set():
            try:
                await js.stream_info("CDC")
                if since is not None:
                    self.gaps.append(time.monotonic() - since)
                    since = None
            except Exception:
                since = since or time.monotonic()
            await asyncio.sleep(0.1)
        await nc.close()

    def __enter__(self) -> LeaderWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def cdc_events(cluster: NatsCluster, subject: str) -> list[tuple[str, float, dict[str, Any]]]:
    """(Msg-Id, stored at, event) of every message on `subject`, in stream order."""

    async def fetch() -> list[tuple[str, float, dict[str, Any]]]:
        nc = await nats.connect(cluster.live_urls(), connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.stream_info("CDC", subjects_filter=subject)
            total = sum((info.state.subjects or {}).values())
            out: list[tuple[str, float, dict[str, Any]]] = []
            if total:
                sub = await js.subscribe(subject, stream="CDC", ordered_consumer=True)
                while len(out) < total:
                    msg = await sub.next_msg(timeout=10)
                    stored = msg.metadata.timestamp.timestamp()
                    out.append((msg.headers["Nats-Msg-Id"], stored, unpack(msg.data)))
                await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(fetch())


def snapshot_until_complete(cluster: NatsCluster, table: str) -> tuple[dict[str, Any], int]:
    """Ask for a snapshot until one completes (a failure has a reason and is retried)."""
    tries = 0
    while True:
        tries += 1

        async def ask() -> dict[str, Any]:
            nc = await nats.connect(cluster.live_urls(), connect_timeout=5)
            try:
                reply = await nc.request(f"bridge.snapshot.{table}", b"", timeout=180)
                return dict(json.loads(reply.data))
            finally:
                await nc.close()

        try:
            reply = asyncio.run(ask())
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            reply = {"error": repr(exc), "reason": "request"}
        if "error" not in reply:
            return reply, tries
        assert reply.get("reason") in ("publish_failed", "request"), reply
        assert tries < 5, reply


def chunk_count(cluster: NatsCluster, table: str, snapshot_id: str) -> int:
    async def count() -> int:
        nc = await nats.connect(cluster.live_urls(), connect_timeout=5)
        try:
            info = await nc.jetstream(timeout=10).stream_info(
                "INIT", subjects_filter=f"init.snap.{table}.{snapshot_id}.*"
            )
            return len(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(count())


def test_leader_and_replica_losses_under_load_lose_and_duplicate_nothing(
    cluster: NatsCluster, pg: Database, services: Callable[..., Service]
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    pg.execute(f"INSERT INTO big SELECT g, repeat('p', 50) FROM generate_series(1, {BIG_ROWS}) g")
    settings = {"table": "t,big", "stream_replicas": 3}
    replicator = services("replicator", pg, cluster.url, **settings).wait_healthy(60)
    snapshotter = services("snapshotter", pg, cluster.url, **settings).wait_healthy(60)
    assert sorted(cluster.replicas_of("CDC")) == ["n1", "n2", "n3"]  # R3, as configured

    with HealthLog(replicator.port) as health, LeaderWatch(cluster) as watch, Load(pg.url) as load:
        # Load runs throughout; each pause lets it meet the cluster in its new state.
        time.sleep(2)
        leader = cluster.leader_of("CDC")
        cluster.kill(leader)  # kill -9 the CDC stream's leader
        time.sleep(4)
        cluster.start_node(leader)
        cluster.wait_ready()
        time.sleep(2)
        follower = next(n for n in cluster.replicas_of("CDC") if n != cluster.leader_of("CDC"))
        cluster.kill(follower)  # a non-leader
        time.sleep(2)
        cluster.start_node(follower)
        cluster.wait_ready()

        init_leader = cluster.leader_of("INIT")
        killer = threading.Timer(0.3, cluster.kill, (init_leader,))
        killer.start()  # the INIT leader dies while the snapshot's chunks go out
        meta, tries = snapshot_until_complete(cluster, "big")
        killer.join()
        cluster.start_node(init_leader)
        cluster.wait_ready()
        time.sleep(2)

    written = load.written
    events = wait_for(
        lambda: (found := cdc_events(cluster, "cdc.t.insert")) and len(found) >= written and found,
        120,
        f"{written} CDC events",
        replicator,
    )
    ids = [event["data"]["id"] for _, _, event in events]
    assert ids == list(range(1, written + 1)), "lost, duplicated or out of order"
    assert len({msg_id for msg_id, _, _ in events}) == len(events)

    assert meta["row_count"] == BIG_ROWS
    assert chunk_count(cluster, "big", meta["snapshot_id"]) == meta["batch_count"]

    stalls = [
        stored - datetime.fromisoformat(event["commit_time"].replace("Z", "+00:00")).timestamp()
        for _, stored, event in events
    ]
    codes = {code for code, _ in health.seen}
    replicator.wait_healthy(60)
    last = httpx.get(f"http://127.0.0.1:{replicator.port}/health", timeout=5).json()
    print(
        f"\n{written} changes through 3 node losses; longest commit→stored {max(stalls):.1f} s "
        f"(the CDC stream itself unanswered for {', '.join(f'{g:.1f}' for g in watch.gaps)} s); "
        f"snapshot of {BIG_ROWS} rows in {tries} request(s); replicator restarts "
        f"{last.get('restarts')}, /health codes seen {sorted(codes)}, last error "
        f"{last.get('last_error')}"
    )
    # /health says what happened: restarts counted and the last reason kept after recovery.
    if last["restarts"]:
        assert last["last_error"] and last["last_error"]["error"]
    assert "Traceback" not in replicator.output() + snapshotter.output()
