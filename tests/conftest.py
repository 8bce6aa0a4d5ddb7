"""Fixtures: real PostgreSQL and nats-server for every test that asks (docs/architecture.md,
"Testing").

Servers start once per session and are torn down at its end, also when tests fail; each test
gets its own database (`pg`) and an empty JetStream (`nats`). `BRIDGE_TEST_BACKEND=docker`
uses testcontainers instead of local processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.nats import NatsServer
from tests.harness.postgres import Database, PostgresServer

BACKEND = os.environ.get("BRIDGE_TEST_BACKEND", "process")
if BACKEND not in ("process", "docker"):
    raise pytest.UsageError(f"BRIDGE_TEST_BACKEND must be 'process' or 'docker', not {BACKEND!r}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    if BACKEND == "docker":
        from tests.harness.containers import ContainerPostgres

        server: Any = ContainerPostgres.create()
    else:
        server = PostgresServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg(pg_server: Any) -> Iterator[Database]:
    """A fresh database, dropped afterwards with its slots and prepared transactions."""
    name = pg_server.create_database()
    try:
        yield Database(pg_server, name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Any]:
    if BACKEND == "docker":
        from tests.harness.containers import ContainerNats

        server: Any = ContainerNats.create()
    else:
        server = NatsServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def nats_url(nats_server: Any) -> Iterator[str]:
    """The URL of a JetStream with no streams, cleaned again after the test."""
    nats_server.delete_all_streams()
    try:
        yield nats_server.url
    finally:
        nats_server.delete_all_streams()
