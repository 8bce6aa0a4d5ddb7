"""What e2e tests ask of and read from NATS: snapshot requests, the INIT stream's messages,
the schema bucket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import nats


def ask(
    url: str,
    subject: str,
    body: bytes = b"",
    timeout: float = 120,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON answer to a request, asked again while nobody subscribes yet (a service
    starting)."""

    async def asking() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            for _ in range(100):
                try:
                    reply = await nc.request(subject, body, timeout=timeout, headers=headers)
                    return dict(json.loads(reply.data))
                except nats.errors.NoRespondersError:
                    await asyncio.sleep(0.1)
            raise AssertionError(f"nobody answered on {subject}")
        finally:
            await nc.close()

    return asyncio.run(asking())


def request(
    url: str, table: str, body: bytes = b"", timeout: float = 120, prefix: str = "bridge.snapshot"
) -> dict[str, Any]:
    """A snapshot request's answer."""
    return ask(url, f"{prefix}.{table}", body, timeout)


def init_messages(url: str, subject: str) -> list[tuple[str, dict[str, str], bytes]]:
    async def fetch() -> list[tuple[str, dict[str, str], bytes]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("INIT", subjects_filter=subject)
            total = sum((info.state.subjects or {}).values())
            out: list[tuple[str, dict[str, str], bytes]] = []
            if not total:
                return out
            sub = await js.subscribe(subject, stream="INIT", ordered_consumer=True)
            while len(out) < total:
                msg = await sub.next_msg(timeout=10)
                out.append((msg.subject, dict(msg.headers or {}), msg.data))
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(fetch())


def kv_get(url: str, key: str) -> dict[str, Any] | None:
    async def get() -> dict[str, Any] | None:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value("schemas")
            try:
                value = (await kv.get(key)).value
                return dict(msgpack.unpackb(value)) if value else None
            except nats.js.errors.KeyNotFoundError:
                return None
        finally:
            await nc.close()

    return asyncio.run(get())
