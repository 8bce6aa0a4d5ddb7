"""deploy/nats-permissions.conf, as docs/operations/securing.md gives it: the bridge runs as
user `bridge`, a copy follows as user `app`, and `app` cannot publish anything the bridge
owns."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.harness.nats import NatsServer
from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, copy_rows, stream_count, wait_for

CONFIG = Path(__file__).parents[2] / "deploy" / "nats-permissions.conf"
BRIDGE_PASSWORD = "bridge-pw-1"
APP_PASSWORD = "app-pw-2"


@pytest.fixture
def locked_nats() -> Iterator[NatsServer]:
    variables = f'BRIDGE_PASSWORD: "{BRIDGE_PASSWORD}"\nAPP_PASSWORD: "{APP_PASSWORD}"\n'
    with NatsServer.create(config=variables + CONFIG.read_text()) as server:
        yield server


def test_the_documented_permissions_let_the_bridge_and_a_copy_work_and_nothing_more(
    pg: Database, locked_nats: NatsServer, services: Callable[..., Service], tmp_path: Path
) -> None:
    url = locked_nats.url
    bridge_user = {"nats_user": "bridge", "nats_password": BRIDGE_PASSWORD}
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
    control = {"control_token": "ctl"}
    replicator = services("replicator", pg, url, table="t", **bridge_user, **control)
    snapshotter = services("snapshotter", pg, url, table="t", **bridge_user, **control)
    replicator.wait_healthy()
    snapshotter.wait_healthy()

    app_env = {
        **{k: v for k, v in replicator.env.items() if not k.startswith("BRIDGE_NATS")},
        "BRIDGE_NATS_URL": url,
        "BRIDGE_NATS_USER": "app",
        "BRIDGE_NATS_PASSWORD": APP_PASSWORD,
    }
    path = tmp_path / "copy.db"
    log = tmp_path / "replica.log"
    replica = Service("replica", app_env, 0, log)
    with open(log, "ab") as out:
        replica.process = subprocess.Popen(
            [BRIDGE, "replica", "t", "--sqlite", str(path), "--progress-seconds", "1"],
            env=app_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def copied() -> int:
        found = copy_rows(path, 'SELECT count(*) FROM "public.t"')
        return int(found[0][0]) if found else 0

    try:
        wait_for(lambda: copied() == 100, 60, "the app's copy to bootstrap", replica)
        pg.execute("INSERT INTO t SELECT g, 'y' FROM generate_series(101, 150) g")
        wait_for(lambda: copied() == 150, 30, "the app's copy to follow", replica)

        refused = asyncio.run(_what_app_may_not_do(url))
        assert refused == {
            "publish cdc.t.insert": "refused",
            "publish init.meta.t": "refused",
            "put $KV.schemas.t": "refused",
            "request bridge.control.replicator.shutdown": "refused",
            "purge CDC": "refused",
        }, refused
        assert replica.terminate() == 0
    finally:
        replica.stop()
    assert "Permissions Violation" not in replica.output()
    assert replicator.health() == 200 and snapshotter.health() == 200
    assert stream_count_as_bridge(url) == 50  # nothing the app tried reached CDC


def stream_count_as_bridge(url: str) -> int:
    authed = url.replace("nats://", f"nats://bridge:{BRIDGE_PASSWORD}@")
    return stream_count(authed)


async def _what_app_may_not_do(url: str) -> dict[str, str]:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(url, user="app", password=APP_PASSWORD, error_cb=on_error)
    js = nc.jetstream(timeout=2)
    out: dict[str, str] = {}

    async def attempt(name: str, action: Any) -> None:
        before = len(violations)
        try:
            await action
            await nc.flush()
            await asyncio.sleep(0.3)
            out[name] = "refused" if len(violations) > before else "allowed"
        except Exception:
            out[name] = "refused"

    try:
        await attempt("publish cdc.t.insert", js.publish("cdc.t.insert", b"\xc1"))
        await attempt("publish init.meta.t", js.publish("init.meta.t", b"\xc1"))
        await attempt("put $KV.schemas.t", js.publish("$KV.schemas.t", b"\xc1"))
        await attempt(
            "request bridge.control.replicator.shutdown",
            nc.request(
                "bridge.control.replicator.shutdown",
                b"",
                timeout=2,
                headers={"Authorization": "Bearer ctl"},
            ),
        )
        await attempt("purge CDC", js.purge_stream("CDC"))
    finally:
        await nc.close()
    return out
