"""The whole stack with default settings on servers configured as users run them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgpack
import pytest

from tests.harness.nats import NatsServer
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for
from tests.harness.streams import init_messages, request


@pytest.fixture
def one_gb_nats() -> Iterator[NatsServer]:
    """A stock nats-server whose JetStream file store is 1 GB (a small Docker disk's share)."""
    with NatsServer.create({"max_file_store": "1GB"}) as server:
        yield server


def test_defaults_run_on_a_one_gb_jetstream(
    pg: Database, one_gb_nats: NatsServer, services: Callable[..., Service]
) -> None:
    url = one_gb_nats.url
    pg.execute("CREATE TABLE demo (id serial PRIMARY KEY, note text)")
    pg.execute("INSERT INTO demo (note) SELECT 'before ' || g FROM generate_series(1, 2500) g")
    defaults = {"table": "demo", "cdc_max_age_seconds": None, "status_interval_seconds": None}
    replicator = services("replicator", pg, url, **defaults).wait_healthy()
    snapshotter = services("snapshotter", pg, url, **defaults).wait_healthy()
    admin = services(
        "admin",
        pg,
        url,
        replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}",
        **defaults,
    ).wait_healthy()

    pg.execute("INSERT INTO demo (note) VALUES ('hello')")
    events = wait_for(lambda: stream_messages(url), 30, "the CDC event", replicator)
    assert [(s, e["data"]["note"]) for s, _, e in events] == [("cdc.demo.insert", "hello")]

    meta = request(url, "demo")
    assert (meta["row_count"], meta["batch_count"]) == (2501, 3)
    chunks = init_messages(url, f"init.snap.demo.{meta['snapshot_id']}.*")
    rows = [r for _, _, data in chunks for r in msgpack.unpackb(data)["data"]]
    assert [r["id"] for r in rows] == list(range(1, 2502))
    ((_, _, raw_meta),) = init_messages(url, "init.meta.demo")
    assert msgpack.unpackb(raw_meta) == meta
    assert admin.health() == 200
    for service in (replicator, snapshotter, admin):
        assert "cannot reserve" not in service.output()
