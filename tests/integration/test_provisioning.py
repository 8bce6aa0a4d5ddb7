"""Stream and KV provisioning against a real nats-server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from shared.nats_connection import NatsUnavailable, connect
from shared.provisioning import ProvisioningError, ensure_stream, provision
from shared.settings import BridgeSettings
from tests.harness.nats import NatsServer
from tests.harness.processes import free_port

T = TypeVar("T")


def with_js(url: str, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def run() -> T:
        nc = await connect(BridgeSettings(nats_url=url), "test")
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


def test_creates_streams_and_bucket_with_the_seed_limits(nats_url: str) -> None:
    settings = BridgeSettings(nats_url=nats_url)

    async def work(js: JetStreamContext) -> tuple[object, ...]:
        report = await provision(js, settings)
        return (
            report,
            await js.stream_info("CDC"),
            await js.stream_info("INIT"),
            await js.key_value("schemas"),
        )

    report, cdc, init, kv = with_js(nats_url, work)
    assert report.created == ("CDC", "INIT", "KV_schemas") and report.existing == ()
    c = cdc.config  # type: ignore[attr-defined]
    assert (c.subjects, c.storage, c.max_age, c.max_msgs, c.max_bytes, c.duplicate_window) == (
        ["cdc.>"],
        StorageType.FILE,
        60,
        1_000_000,
        1_000_000_000,
        60,
    )
    i = init.config  # type: ignore[attr-defined]
    assert (i.subjects, i.max_age, i.max_msgs, i.max_bytes) == (
        ["init.>"],
        7 * 24 * 3600,
        10_000_000,
        -1,  # no byte limit by default: nothing reserved, age and count bound it
    )
    status = asyncio.run(_kv_history(nats_url))
    assert status == 10 and kv is not None


async def _kv_history(url: str) -> int:
    nc = await connect(BridgeSettings(nats_url=url), "test")
    try:
        return (await (await nc.jetstream().key_value("schemas")).status()).history
    finally:
        await nc.close()


def test_existing_streams_are_never_reconfigured(nats_url: str) -> None:
    async def work(js: JetStreamContext) -> tuple[object, ...]:
        await js.add_stream(StreamConfig(name="CDC", subjects=["cdc.>"], max_age=3600))
        first = await provision(js, BridgeSettings(nats_url=nats_url))
        again = await provision(js, BridgeSettings(nats_url=nats_url))
        return first, again, (await js.stream_info("CDC")).config.max_age

    first, again, max_age = with_js(nats_url, work)
    assert first.existing == ("CDC",) and first.created == ("INIT", "KV_schemas")  # type: ignore[attr-defined]
    assert again.created == () and again.existing == ("CDC", "INIT", "KV_schemas")  # type: ignore[attr-defined]
    assert max_age == 3600


def test_duplicate_window_longer_than_max_age_is_refused_before_asking_the_server(
    nats_url: str,
) -> None:
    config = StreamConfig(name="X", subjects=["x.>"], max_age=10, duplicate_window=30)
    with pytest.raises(
        ProvisioningError, match="duplicate window 30 s is longer than its max age 10 s"
    ):
        with_js(nats_url, lambda js: ensure_stream(js, config))

    async def names(js: JetStreamContext) -> list[str | None]:
        return [s.config.name for s in await js.streams_info()]

    assert with_js(nats_url, names) == []


def test_unreachable_nats_is_a_clear_error() -> None:
    with pytest.raises(NatsUnavailable, match=r"no NATS server answered at nats://127\.0\.0\.1"):
        asyncio.run(connect(BridgeSettings(nats_url=f"nats://127.0.0.1:{free_port()}"), "test"))


def test_a_stream_larger_than_jetstream_can_reserve_gets_a_clear_error(nats_url: str) -> None:
    settings = BridgeSettings(nats_url=nats_url, init_max_bytes=10**16)
    with pytest.raises(ProvisioningError, match=r"cannot reserve max_bytes=10000000000000000"):
        with_js(nats_url, lambda js: provision(js, settings))


@pytest.fixture(scope="module")
def small_nats() -> Iterator[NatsServer]:
    """A server whose JetStream file store is 200 MiB: smaller than the CDC default."""
    with NatsServer.create({"max_file_store": "200MB"}) as server:
        yield server


def test_defaults_fit_a_small_store_and_say_what_they_chose(
    small_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    small_nats.delete_all_streams()
    settings = BridgeSettings(nats_url=small_nats.url)
    caplog.set_level(logging.INFO, logger="shared.provisioning")

    async def work(js: JetStreamContext) -> tuple[object, ...]:
        report = await provision(js, settings)
        return report, (await js.stream_info("CDC")).config, (await js.stream_info("INIT")).config

    report, cdc, init = with_js(small_nats.url, work)
    assert report.created == ("CDC", "INIT", "KV_schemas")  # type: ignore[attr-defined]
    assert cdc.max_bytes == 125_000_000  # type: ignore[attr-defined]  # 1 GB halved to fit 200 MiB
    assert (cdc.max_age, cdc.max_msgs) == (60, 1_000_000)  # type: ignore[attr-defined]
    assert (init.max_bytes, init.max_msgs) == (-1, 10_000_000)  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records if "created stream CDC" in r.getMessage()]
    assert len(lines) == 1
    assert "max_bytes=125000000 (JetStream could not reserve 1000000000;" in lines[0]


def test_an_explicit_limit_that_does_not_fit_is_still_an_error(small_nats: NatsServer) -> None:
    small_nats.delete_all_streams()
    settings = BridgeSettings(nats_url=small_nats.url, cdc_max_bytes=1_000_000_000)
    with pytest.raises(ProvisioningError, match=r"stream CDC: JetStream cannot reserve"):
        with_js(small_nats.url, lambda js: provision(js, settings))


def test_more_replicas_than_servers_is_a_clear_error(nats_url: str) -> None:
    settings = BridgeSettings(nats_url=nats_url, stream_replicas=3)
    with pytest.raises(ProvisioningError) as error:
        with_js(nats_url, lambda js: provision(js, settings))
    message = str(error.value)
    assert "stream CDC: JetStream cannot place 3 replicas" in message, message
    assert "cluster of at least 3 servers" in message and "BRIDGE_STREAM_REPLICAS" in message
