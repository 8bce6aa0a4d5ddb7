"""The services as users run them: `bridge …` subprocesses against the test servers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import processes
from tests.harness.postgres import Database
from tests.harness.services import MADE, Service


@pytest.fixture(autouse=True)
def reap_services() -> Iterator[None]:
    yield
    while MADE:
        MADE.pop().stop()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory: `services("replicator", pg, nats_url, table="t")` starts one; all are killed
    at the end of the test. A setting given as None is left at the service's default."""
    started: list[Service] = []

    def start(command: str, pg: Database, nats_url: str, **settings: Any) -> Service:
        port = processes.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DATABASE_URL=pg.url,
            BRIDGE_NATS_URL=nats_url,
            BRIDGE_PORT=str(port),
            BRIDGE_STATUS_INTERVAL_SECONDS="2",
            # Tests read the stream after the fact: keep messages longer than the seed's 60 s.
            BRIDGE_CDC_MAX_AGE_SECONDS="900",
        )
        for key, value in settings.items():
            if value is None:  # back to the service's own default
                env.pop(f"BRIDGE_{key.upper()}", None)
            else:
                env[f"BRIDGE_{key.upper()}"] = str(value)
        service = Service(command, env, port, tmp_path / f"{command}-{len(started)}.log")
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()
