"""NATS credentials holding URL specials (`% @ : / # ? &`): URL-encoded in BRIDGE_NATS_URL, as
docs/operations/securing.md advises, or raw in the settings, they authenticate every service
and tool (nats-py sends a URL's user and password as written, so the bridge decodes them first)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from tests.harness.nats import NatsServer
from tests.harness.postgres import Database
from tests.harness.services import BRIDGE, Service, wait_for

USER = "br:d@ge"
PASSWORD = "p%@:/#?&w0rd"
TOKEN = "t%@:/#?&k3n"


def _conf(text: str) -> str:
    return json.dumps(text)  # a double-quoted NATS configuration string


@pytest.fixture(scope="module")
def password_nats() -> Iterator[NatsServer]:
    config = (
        f"authorization {{ users = [ {{user: {_conf(USER)}, password: {_conf(PASSWORD)}}} ] }}\n"
    )
    with NatsServer.create(config=config) as server:
        yield server


@pytest.fixture(scope="module")
def token_nats() -> Iterator[NatsServer]:
    with NatsServer.create(config=f"authorization {{ token: {_conf(TOKEN)} }}\n") as server:
        yield server


def encoded(server: NatsServer, userinfo: str) -> str:
    return f"nats://{userinfo}@127.0.0.1:{server.port}"


@pytest.mark.parametrize("mechanism", ["password", "token"])
def test_credentials_with_url_specials_work_encoded_in_the_url_and_raw_as_settings(
    mechanism: str,
    password_nats: NatsServer,
    token_nats: NatsServer,
    pg: Database,
    services: Callable[..., Service],
) -> None:
    if mechanism == "password":
        server = password_nats
        server.delete_all_streams(user=USER, password=PASSWORD)
        in_url = encoded(server, f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}")
        as_settings = {"nats_user": USER, "nats_password": PASSWORD}
        secrets = [PASSWORD, quote(PASSWORD, safe="")]
    else:
        server = token_nats
        server.delete_all_streams(token=TOKEN)
        in_url = encoded(server, quote(TOKEN, safe=""))
        as_settings = {"nats_token": TOKEN}
        secrets = [TOKEN, quote(TOKEN, safe="")]
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replicator = services("replicator", pg, in_url, table="t").wait_healthy(60)
    snapshotter = services("snapshotter", pg, server.url, table="t", **as_settings)
    snapshotter.wait_healthy(60)
    admin = services(
        "admin",
        pg,
        in_url,
        replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}",
    )
    wait_for(lambda: admin.health() == 200, 30, "admin healthy (NATS included)", admin)
    pg.execute("INSERT INTO t VALUES (1), (2)")
    # Two changes and their transaction's commit record.
    wait_for(lambda: replicator.published() >= 3, 30, "the insert published")
    env = dict(replicator.env)  # the encoded URL
    outputs = []
    for argv in (["snapshot", "t"], ["tail", "t", "--from-start", "--count", "2"]):
        done = subprocess.run(
            [BRIDGE, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    for service in (replicator, snapshotter):
        assert service.terminate() == 0
    admin.stop()
    outputs += [service.output() for service in (replicator, snapshotter, admin)]
    for text in outputs:
        for secret in secrets:
            assert secret not in text
