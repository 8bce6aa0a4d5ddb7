"""The admin in front of the services, and a service that stops with a permanent error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.harness.postgres import Database
from tests.harness.services import Service, wait_for


def stopped_with(service: Service, *needles: str) -> str:
    """The service exited 2 with the needles in one ERROR line; that line."""
    assert service.wait(60) == 2, service.output()[-3000:]
    output = service.output()
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles}:\n{output[-3000:]}"
    return lines[0]


TOKEN = "s3cret-admin-token"


CONTROL_TOKEN = "s3cret-control-token"  # the services obey control requests carrying it


PASSWORD = "hunter2-never-shown"  # trust auth ignores it; it must never be echoed


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def start_admin_stack(
    pg: Database, nats_url: str, services: Callable[..., Service], **admin: Any
) -> tuple[Service, Service, Service]:
    pg.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
    control = {"control_token": CONTROL_TOKEN}
    replicator = services("replicator", pg, nats_url, table="t", **control).wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, table="t", **control).wait_healthy()
    front = services(
        "admin",
        pg,
        nats_url,
        replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}",
        database_url=with_password(pg.url),
        **{**control, **admin},
    )
    wait_for(lambda: front.health() == 200, 30, "admin healthy", front)
    return replicator, snapshotter, front


def api(front: Service) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{front.port}", timeout=30)
