"""A JetStream cluster on localhost: three nats-server processes with routes to each other,
each started by the same code as a single test server (stock limits, own store directory).

Fault tests find a stream's leader by server name (`stream_info(...).cluster.leader`) and
kill -9 or restart that process; the services get every server's URL.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import nats

from services.dev.servers import NatsProcess, make_temp_dir
from tests.harness import processes


def _distinct_free_ports(count: int) -> list[int]:
    """`count` ports free at once (held together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsCluster:
    def __init__(self, size: int = 3) -> None:
        self.root = make_temp_dir("bridge-nats-cluster-", None)
        ports = _distinct_free_ports(3 * size)  # route, client and monitor port of each
        cluster_ports, client_ports, monitor_ports = (
            ports[:size],
            ports[size : 2 * size],
            ports[2 * size :],
        )
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in cluster_ports)
        self.nodes: dict[str, NatsProcess] = {}
        for index, cluster_port in enumerate(cluster_ports):
            name = f"n{index + 1}"
            config = (
                f"server_name: {name}\n"
                "cluster {\n"
                "  name: bridge\n"
                f"  listen: 127.0.0.1:{cluster_port}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.nodes[name] = NatsProcess(
                self.root / name,
                client_ports[index],
                monitor_port=monitor_ports[index],
                config=config,
            )

    @classmethod
    def create(cls, size: int = 3) -> NatsCluster:
        cluster = cls(size)
        try:
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @property
    def url(self) -> str:
        """Every server, comma-separated, as the services take them."""
        return ",".join(node.url for node in self.nodes.values())

    def start(self, timeout: float = 60) -> None:
        for node in self.nodes.values():
            node.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every running server reports healthy JetStream (a meta leader elected)."""
        deadline = time.monotonic() + timeout
        for name, node in self.nodes.items():
            if node.process is None or node.process.poll() is not None:
                continue
            url = f"http://127.0.0.1:{node.monitor_port}/healthz"
            while True:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server {name} not healthy in {timeout:g} s")
                time.sleep(0.2)

    def leader_of(self, stream: str) -> str:
        """The name of the server leading `stream` (asked of any live server)."""
        return str(asyncio.run(self._stream_cluster(stream))["leader"])

    def replicas_of(self, stream: str) -> list[str]:
        info = asyncio.run(self._stream_cluster(stream))
        return [info["leader"], *(r.name for r in info["replicas"] or [])]

    async def _stream_cluster(self, stream: str) -> dict[str, Any]:
        nc = await nats.connect(self.live_urls(), connect_timeout=5)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # during an election, the API may not answer
                try:
                    info = await nc.jetstream(timeout=2).stream_info(stream)
                except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                    continue
                cluster = info.cluster
                if cluster is not None and cluster.leader:
                    return {"leader": cluster.leader, "replicas": cluster.replicas}
                await asyncio.sleep(0.1)
            raise TimeoutError(f"stream {stream} has no leader")
        finally:
            await nc.close()

    def live_urls(self) -> list[str]:
        return [
            node.url
            for node in self.nodes.values()
            if node.process is not None and node.process.poll() is None
        ]

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def start_node(self, name: str) -> None:
        self.nodes[name].start()

    def destroy(self) -> None:
        for node in self.nodes.values():
            node.kill()
        processes.remove(self.root)

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
