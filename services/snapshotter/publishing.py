"""Publishing a snapshot's messages to JetStream with many PubAcks outstanding.

Awaiting each chunk's PubAck before sending the next costs a round trip per chunk, and the
table read waits meanwhile. Here messages go out in order on one connection, each with a
reply subject under one inbox, and up to `window` of them wait for their PubAck at once.

A PubAck can be lost without a refusal: a stream leader that dies (in a cluster) takes the
messages it had not replicated with it, and nobody answers for them. So when no PubAck came
for `resend_after` seconds, the unacknowledged messages are sent again, in order, with the
same Msg-Id (JetStream drops any it did store); after `attempts` rounds without progress the
snapshot fails. Chunks are found by their index, not their stream order, so a resent chunk
stored after a later one changes nothing for consumers. A refusal (a full stream, a missing
stream) fails the snapshot at the next call; `wait_acked` returns once every message is
stored, so the meta is sent only after all chunks are.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from pg_nats_bridge.contract import subjects_overlap
from services.snapshotter.errors import init_stream_missing
from shared.pub_acks import PubAckRefusal, refusal

log = logging.getLogger(__name__)


class PublishFailed(Exception):
    """JetStream refused a message, or acknowledged none for too long; `reason` is the
    snapshot reply's code."""

    def __init__(self, message: str, reason: str = "publish_failed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class _Pending:
    subject: str
    payload: bytes
    headers: dict[str, str]


class PipelinedPublisher:
    def __init__(
        self,
        nc: Client,
        stream: str,
        window: int = 16,
        resend_after: float = 5.0,
        attempts: int = 4,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.window = window
        self.resend_after = resend_after
        self.attempts = attempts
        self.pending: dict[int, _Pending] = {}
        self.numbers = itertools.count()
        self.progress = asyncio.Event()
        self.inbox = ""
        self.sub: Any = None
        self.error: PublishFailed | None = None
        self.last_answer = ""  # the last non-PubAck answer, for the final error
        # A subject nobody answered: the stream is asked at once whether it takes it (a
        # missing stream fails the snapshot now, not after every resend round).
        self.unanswered: str | None = None

    async def __aenter__(self) -> PipelinedPublisher:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Send one message (in call order); waits only while `window` PubAcks are due."""
        await self._wait_until(lambda: len(self.pending) < self.window)
        number = next(self.numbers)
        message = _Pending(
            subject, payload, {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": self.stream}
        )
        self.pending[number] = message
        await self._send(number, message)

    async def wait_acked(self) -> None:
        """Return once every message sent is stored; raise the first refusal."""
        await self._wait_until(lambda: not self.pending)

    async def _send(self, number: int, message: _Pending) -> None:
        await self.nc.publish(
            message.subject,
            message.payload,
            reply=f"{self.inbox}.{number}",
            headers=message.headers,
        )

    async def _wait_until(self, done: Any) -> None:
        rounds = 0
        while True:
            if self.error is not None:
                raise self.error
            if self.unanswered is not None:
                subject, self.unanswered = self.unanswered, None
                try:
                    await self._check_stream_takes(subject)
                except PublishFailed as exc:
                    self.error = exc
                    raise
                continue
            if done():
                return
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), self.resend_after)
                rounds = 0
            except TimeoutError:
                rounds += 1
                if rounds >= self.attempts:
                    why = f"; last answer: {self.last_answer}" if self.last_answer else ""
                    raise PublishFailed(
                        f"JetStream acknowledged none of {len(self.pending)} messages in "
                        f"{self.attempts} rounds of {self.resend_after:g} s (is NATS "
                        f"reachable?){why}"
                    ) from None
                log.warning(
                    "no PubAck for %g s: sending the %d unacknowledged messages again",
                    self.resend_after,
                    len(self.pending),
                )
                for number in sorted(self.pending):
                    await self._send(number, self.pending[number])

    async def _on_reply(self, msg: Msg) -> None:
        try:
            number = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        problem = refusal(msg)
        if problem is not None:
            if problem.no_responders and number in self.pending:
                self.last_answer = _NO_RESPONDERS
                self.unanswered = self.pending[number].subject
                self.progress.set()
                return  # a stream between leaders (checked); it goes again after a pause
            if self.error is None:
                self.error = PublishFailed(_describe(problem))
        self.pending.pop(number, None)
        self.progress.set()

    async def _check_stream_takes(self, subject: str) -> None:
        """After "no responders": fail now when the stream is missing or does not take the
        subject; otherwise (a stream between leaders) the resends go on."""
        try:
            info = await self.nc.jetstream().stream_info(self.stream)
        except NotFoundError:
            missing = init_stream_missing(self.stream)
            raise PublishFailed(str(missing), missing.reason) from None
        except Exception as exc:  # no answer either: a cluster between leaders, or NATS gone
            log.warning("stream %s did not answer (%s); resending", self.stream, exc)
            return
        taken = info.config.subjects or []
        if not any(subjects_overlap(pattern, subject) for pattern in taken):
            raise PublishFailed(
                f"stream {self.stream} does not take {subject} (its subjects: "
                f"{', '.join(taken) or 'none'}); it was changed by hand: give it back `init.>`",
                "init_stream_missing",
            )


_NO_RESPONDERS = "no JetStream stream listens on the subject (was the INIT stream deleted?)"


def _describe(problem: PubAckRefusal) -> str:
    if problem.no_responders:
        return _NO_RESPONDERS
    if isinstance(problem.error, dict):
        return f"JetStream refused the message: {problem.error.get('description', problem.error)}"
    return f"JetStream sent an unreadable PubAck: {problem.error!r}"
