"""The Docker backend of the fixtures (`BRIDGE_TEST_BACKEND=docker`): the same servers in
testcontainers, for machines where a Docker engine answers. The process backend is the
default; this one gives the same interface (`url`, `version`, `stop`/`start`/`kill`/
`restart`, `destroy`, database and stream isolation helpers)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg

from tests.harness.nats import _delete_all_streams
from tests.harness.postgres import TEST_SETTINGS, Database, PostgresServer
from tests.harness.processes import free_port

PG_IMAGE = os.environ.get("BRIDGE_TEST_PG_IMAGE", "postgres:18")
NATS_IMAGE = os.environ.get("BRIDGE_TEST_NATS_IMAGE", "nats:2.12")


def _require_engine() -> None:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        raise RuntimeError(
            f"BRIDGE_TEST_BACKEND=docker but no Docker engine answers ({exc}); "
            "unset it to use the process backend"
        ) from exc


@dataclass
class ContainerPostgres:
    container: Any
    version: int = 0
    _db_counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(cls) -> ContainerPostgres:
        _require_engine()
        from testcontainers.postgres import PostgresContainer

        settings = {"wal_level": "logical", **TEST_SETTINGS}
        command = "postgres " + " ".join(f"-c {k}={v}" for k, v in settings.items())
        # A fixed host port: Docker gives a restarted container a new one otherwise, and a
        # restart test expects the server back where it was.
        container = (
            PostgresContainer(PG_IMAGE, username="postgres", password="postgres", dbname="postgres")
            .with_command(command)
            .with_bind_ports(5432, free_port())
        )
        container.start()
        server = cls(container)
        with psycopg.connect(server.url(), connect_timeout=10) as conn:
            server.version = conn.info.server_version // 10000
        return server

    @property
    def host(self) -> str:
        return str(self.container.get_container_host_ip())

    @property
    def port(self) -> int:
        return int(self.container.get_exposed_port(5432))

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:postgres@{self.host}:{self.port}/{dbname}"

    def stop(self) -> None:
        self.container.get_wrapped_container().stop()

    def kill(self) -> None:
        self.container.get_wrapped_container().kill()

    def start(self) -> None:
        self.container.get_wrapped_container().start()
        self._wait_ready()

    def restart(self) -> None:
        self.container.get_wrapped_container().restart()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        """Like the process backend: back only once it accepts connections."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        self.container.stop()

    # Database isolation works the same as on a process-backed server.
    create_database = PostgresServer.create_database
    drop_database = PostgresServer.drop_database


@dataclass
class ContainerNats:
    container: Any

    @classmethod
    def create(cls) -> ContainerNats:
        _require_engine()
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer(NATS_IMAGE).with_command("-js").with_bind_ports(4222, free_port())
        )
        container.start()
        wait_for_logs(container, "Server is ready", timeout=60)
        return cls(container)

    @property
    def url(self) -> str:
        host = self.container.get_container_host_ip()
        return f"nats://{host}:{self.container.get_exposed_port(4222)}"

    def stop(self) -> None:
        self.container.get_wrapped_container().stop()

    def kill(self) -> None:
        self.container.get_wrapped_container().kill()

    def start(self) -> None:
        self.container.get_wrapped_container().start()
        self._wait_ready()

    def restart(self) -> None:
        self.container.get_wrapped_container().restart()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        """Like the process backend: back only once JetStream answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                asyncio.run(_jetstream_answers(self.url))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        self.container.stop()

    def delete_all_streams(self) -> None:
        asyncio.run(_delete_all_streams(self.url, {}))


async def _jetstream_answers(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


__all__ = ["ContainerNats", "ContainerPostgres", "Database"]
