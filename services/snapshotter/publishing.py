"""Publishing a snapshot's messages to JetStream with many PubAcks outstanding.

Awaiting each chunk's PubAck before sending the next costs a round trip per chunk, and the
table read waits meanwhile. Here messages go out in order on one connection (JetStream stores
them in that order), each with a reply subject under one inbox, and up to `window` of them
wait for their PubAck at once. A refusal (a full stream, a missing stream) fails the snapshot
at the next publish; `wait_acked` returns once every message is stored, so the meta is sent
only after all chunks are.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg


class PublishFailed(Exception):
    """JetStream refused a message, or did not acknowledge it in time."""


class PipelinedPublisher:
    def __init__(self, nc: Client, stream: str, window: int = 16, timeout: float = 30.0) -> None:
        self.nc = nc
        self.stream = stream
        self.timeout = timeout
        self.room = asyncio.Semaphore(window)
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.numbers = itertools.count()
        self.inbox = ""
        self.sub: Any = None
        self.error: PublishFailed | None = None

    async def __aenter__(self) -> PipelinedPublisher:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for future in self.pending.values():
            future.cancel()
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Send one message (in call order); waits only while `window` PubAcks are due."""
        if self.error is not None:
            raise self.error
        try:
            await asyncio.wait_for(self.room.acquire(), self.timeout)
        except TimeoutError:
            raise PublishFailed(
                f"JetStream acknowledged nothing for {self.timeout:g} s (is NATS reachable?)"
            ) from None
        if self.error is not None:
            raise self.error
        number = next(self.numbers)
        self.pending[number] = asyncio.get_running_loop().create_future()
        await self.nc.publish(
            subject,
            payload,
            reply=f"{self.inbox}.{number}",
            headers={"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": self.stream},
        )

    async def wait_acked(self) -> None:
        """Return once every message sent is stored; raise the first refusal."""
        if self.pending:
            _, waiting = await asyncio.wait(list(self.pending.values()), timeout=self.timeout)
            if waiting:
                raise PublishFailed(
                    f"{len(waiting)} messages were not acknowledged within {self.timeout:g} s"
                )
        if self.error is not None:
            raise self.error

    async def _on_reply(self, msg: Msg) -> None:
        try:
            number = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        future = self.pending.pop(number, None)
        if future is None:
            return
        self.room.release()
        problem = _refusal(msg)
        if problem is not None and self.error is None:
            self.error = PublishFailed(problem)
        if not future.done():
            future.set_result(None)


def _refusal(msg: Msg) -> str | None:
    """Why JetStream did not store the message (None: it did)."""
    status = (msg.headers or {}).get("Status")
    if status == "503":
        return "no JetStream stream listens on the subject (was the INIT stream deleted?)"
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return f"JetStream sent an unreadable PubAck: {msg.data[:100]!r}"
    error = reply.get("error") if isinstance(reply, dict) else None
    if error:
        return f"JetStream refused the message: {error.get('description', error)}"
    return None
