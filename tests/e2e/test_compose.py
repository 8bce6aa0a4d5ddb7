"""`docker compose up` with the project's compose.yaml, unchanged, whenever a Docker engine
answers: the way most users first run the bridge.

Where no engine answers the test is skipped with the reason in the summary; with
`BRIDGE_TEST_REQUIRE_DOCKER=1` (CI, which starts one) that is a failure instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import psycopg
import pytest
from nats.js.api import DeliverPolicy

from tests.harness.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"no Docker engine answers (`docker info`: {info.stderr.strip()[:200]})"
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        return "the Docker engine has no compose plugin (`docker compose version` failed)"
    return None


@dataclass
class Stack:
    project: str
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ("compose.yaml",)

    @property
    def base(self) -> list[str]:
        return [
            "docker",
            "compose",
            "-p",
            self.project,
            *(a for f in self.files for a in ("-f", f)),
        ]

    def compose(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{self.logs()}"
            )
        return done.stdout

    def logs(self) -> str:
        done = subprocess.run(
            [*self.base, "logs", "--no-color", "--tail", "40"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout[-6000:]

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports['NATS_HOST_PORT']}"

    @property
    def database_url(self) -> str:
        return (
            f"postgresql://postgres:postgres@127.0.0.1:{self.ports['POSTGRES_HOST_PORT']}/postgres"
        )

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['ADMIN_HOST_PORT']}"


@pytest.fixture
def stack() -> Iterator[Stack]:
    yield from _stack(("compose.yaml",))


@pytest.fixture
def cluster_stack() -> Iterator[Stack]:
    yield from _stack(("compose.yaml", "compose.cluster.yaml"))


def _stack(files: tuple[str, ...]) -> Iterator[Stack]:
    problem = _engine_problem()
    if problem:
        if os.environ.get("BRIDGE_TEST_REQUIRE_DOCKER") == "1":
            pytest.fail(f"BRIDGE_TEST_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(f"compose test not run: {problem}")
    ports = {
        name: free_port() for name in ("POSTGRES_HOST_PORT", "NATS_HOST_PORT", "ADMIN_HOST_PORT")
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update({k: str(v) for k, v in ports.items()})
    stack = Stack(f"bridge-test-{os.getpid()}-{len(files)}", ports, env, files)
    try:
        stack.compose("up", "-d", "--wait", "--build", timeout=900)
        yield stack
    finally:
        with_logs = stack.logs()
        subprocess.run(
            [*stack.base, "down", "-v", "--remove-orphans"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        print(with_logs)


class CdcCollector:
    """Follows `cdc.>` from the first message, in a thread of its own, while the test writes:
    the stream keeps messages 60 s by default, less than the test runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[tuple[str, str, dict[str, Any]]] = []  # the changes
        self.commits: list[dict[str, Any]] = []  # the transactions' commit records
        # Each schema change, with the number of changes received before it.
        self.schemas: list[tuple[int, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "could not subscribe to the CDC stream"

    async def _run(self) -> None:
        nc = await nats.connect(self.url)
        try:
            sub = await nc.jetstream().subscribe(
                "cdc.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            self.ready.set()
            while not self.stop.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    continue
                headers = msg.headers or {}
                if msg.subject == "cdc.~commit":
                    self.commits.append(msgpack.unpackb(msg.data))
                elif msg.subject.endswith(".schema"):
                    self.schemas.append((len(self.messages), msgpack.unpackb(msg.data)))
                elif not msg.subject.startswith("cdc.~message."):  # the snapshots' markers
                    self.messages.append(
                        (msg.subject, headers.get("Nats-Msg-Id", ""), msgpack.unpackb(msg.data))
                    )
        finally:
            await nc.close()

    def notes(self) -> list[str]:
        return [e["data"]["note"] for _, _, e in self.messages if e["operation"] == "insert"]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def wait_until(condition: Any, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")
        time.sleep(0.5)


def snapshot(url: str, table: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    async def ask() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            reply = json.loads(
                (await nc.request(f"bridge.snapshot.{table}", b"", timeout=120)).data
            )
            assert "error" not in reply, reply
            js = nc.jetstream()
            sub = await js.subscribe(
                f"init.snap.{table}.{reply['snapshot_id']}.*", ordered_consumer=True
            )
            rows = []
            for _ in range(reply["batch_count"]):
                rows += msgpack.unpackb((await sub.next_msg(timeout=10)).data)["data"]
            meta = await js.get_last_msg("INIT", f"init.meta.{table}")
            return reply, rows, msgpack.unpackb(meta.data)
        finally:
            await nc.close()

    return asyncio.run(ask())


def container_pid(stack: Stack, service: str) -> int:
    cid = stack.compose("ps", "-q", service).strip()
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}} {{.RestartCount}}", cid],
        capture_output=True,
        text=True,
        check=True,
        env=stack.env,
    ).stdout.split()
    return int(out[0])


def test_compose_up_streams_snapshots_and_survives_a_killed_replicator(stack: Stack) -> None:
    cdc = CdcCollector(stack.nats_url)
    try:
        _exercise(stack, cdc)
    finally:
        cdc.close()


def _exercise(stack: Stack, cdc: CdcCollector) -> None:
    stack.compose(
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "INSERT INTO demo (note) SELECT 'exec ' || g FROM generate_series(1, 5) g",
    )
    wait_until(lambda: len(cdc.notes()) >= 5, 60, "the five rows on CDC", stack)
    assert cdc.notes() == [f"exec {i}" for i in range(1, 6)]
    assert {s for s, _, _ in cdc.messages} == {"cdc.demo.insert"}
    # The table's shape came before its first change (the replicator says it at a start).
    assert cdc.schemas and cdc.schemas[0][0] == 0, cdc.schemas
    assert [c["name"] for c in cdc.schemas[0][1]["columns"]] == ["id", "note", "created_at"]
    # One transaction: its commit record after its five changes (a snapshot's marker has one
    # of its own, naming no table).
    wait_until(
        lambda: any(c["tables"] == {"demo": 5} for c in cdc.commits), 30, "its record", stack
    )

    reply, rows, meta = snapshot(stack.nats_url, "demo")
    assert reply["row_count"] == 5 and sorted(r["note"] for r in rows) == sorted(cdc.notes())
    assert meta == reply

    health = httpx.get(f"{stack.admin}/health", timeout=10)
    assert health.status_code == 200, health.text
    status = httpx.get(f"{stack.admin}/status", timeout=10).json()
    assert status["status"] == "ok" and status["cdc_events_published"] >= 5, status
    # The image's build stage compiled the hot path (shared/compiled): the services run it.
    assert status["replicator"]["hot_path"] == "compiled", status
    assert status["snapshotter"]["hot_path"] == "compiled", status

    # A load while the replicator is killed twice: once as a crash (the restart policy
    # brings it back by itself), once with `docker compose kill` (an operator's stop, which
    # Docker does not undo: `up` starts it again).
    written: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            n = 0
            while not stop.is_set() and n < 4000:
                with conn.transaction():
                    for _ in range(5):
                        n += 1
                        conn.execute("INSERT INTO demo (note) VALUES (%s)", (f"load {n}",))
                written.extend(f"load {i}" for i in range(n - 4, n + 1))
                time.sleep(0.01)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 300, 60, "the load to start", stack)
        pid = container_pid(stack, "replicator")
        os.kill(pid, 9)  # from the host: to Docker, the container crashed
        wait_until(
            lambda: container_pid(stack, "replicator") not in (0, pid), 60, "the restart", stack
        )
        wait_until(lambda: len(written) >= 1500, 120, "more load", stack)
        stack.compose("kill", "-s", "KILL", "replicator")
        time.sleep(2)
        stack.compose("up", "-d", "--wait", "replicator")
    finally:
        stop.set()
        writer.join(120)
    expected = [f"exec {i}" for i in range(1, 6)] + written
    wait_until(lambda: len(cdc.notes()) >= len(expected), 180, "every row on CDC", stack)
    time.sleep(3)  # anything duplicated would arrive now
    notes = cdc.notes()
    assert len(notes) == len(set(notes)), "a change arrived twice"
    assert notes == expected, "missing, extra or out-of-order changes"
    ids = [msg_id for _, msg_id, _ in cdc.messages]
    assert len(ids) == len(set(ids))


def test_the_cluster_file_runs_r3_streams_and_survives_a_node(cluster_stack: Stack) -> None:
    """compose.yaml + compose.cluster.yaml: three NATS nodes, R3 streams; one node is killed
    under load and changes keep arriving, each once, in order."""
    stack = cluster_stack

    async def replicas() -> dict[str, int]:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            return {
                name: (await js.stream_info(name)).config.num_replicas or 1
                for name in ("CDC", "INIT", "KV_schemas")
            }
        finally:
            await nc.close()

    assert asyncio.run(replicas()) == {"CDC": 3, "INIT": 3, "KV_schemas": 3}
    cdc = CdcCollector(stack.nats_url)
    try:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            for n in range(1, 201):
                conn.execute("INSERT INTO demo (note) VALUES (%s)", (f"row {n}",))
                if n == 60:
                    stack.compose("kill", "-s", "KILL", "nats-2")
                time.sleep(0.02)
        expected = [f"row {n}" for n in range(1, 201)]
        wait_until(lambda: len(cdc.notes()) >= 200, 120, "every row on CDC", stack)
        time.sleep(2)
        assert cdc.notes() == expected, "missing, extra or out-of-order changes"
    finally:
        cdc.close()
    health = httpx.get(f"{stack.admin}/health", timeout=10)
    assert health.status_code == 200, health.text
