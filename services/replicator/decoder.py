"""Decoder: frames in, publishable messages out, one batch at a time.

An actor on the pipeline's loop (`LoopActor`), as the reader and the publisher are: the reader
tells it each batch and it tells the publisher the messages, each handled in the sender's own
call when the receiver is idle (loop_actor.py), all on the loop's thread."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

import pykka

from services.replicator import metrics
from services.replicator.errors import TransientError
from services.replicator.events import EventBuilder, Outgoing
from services.replicator.failure import FailureSignal, reports_expected_failures
from services.replicator.io_loop import IoLoop
from services.replicator.loop_actor import LoopActor
from services.replicator.messages import Frames, Publish


@dataclass(frozen=True, slots=True)
class _TypesResolved:
    """The decoder's own: what the lookup of `oids` found (domain → base type)."""

    oids: list[int]
    resolved: list[tuple[int, int]]


class Decoder(LoopActor):
    def __init__(
        self,
        builder: EventBuilder,
        publisher: pykka.ActorRef[Any],
        io: IoLoop,
        failure: FailureSignal,
    ) -> None:
        super().__init__()
        self.loop, self.loop_thread_id = io.loop, io.thread_id
        self.builder = builder
        self.publisher = publisher
        self.failure = failure
        self.waiting: collections.deque[Frames] = collections.deque()  # batches in order

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.failure.fail(exc or RuntimeError("decoder failed"))

    @reports_expected_failures
    def on_receive(self, message: Any) -> Any:
        if self.failure.failed:
            return None
        if isinstance(message, Frames):
            self.waiting.append(message)
            if len(self.waiting) == 1:
                self._decode_waiting()
        elif isinstance(message, _TypesResolved):
            self.builder.learn_types(message.oids, message.resolved)
            self._decode_waiting()
        return None

    def _decode_waiting(self) -> None:
        """Decode the batches in order, until one names types never looked up: those are
        looked up in a thread (a blocking query would stall the loop the reader and the
        publisher share), and the batches wait for the answer."""
        while self.waiting:
            unknown = self.builder.types_to_resolve(self.waiting[0].frames)
            if unknown:
                self._resolve(unknown)
                return
            self._decode(self.waiting.popleft())

    def _resolve(self, oids: list[int]) -> None:
        resolve = self.builder.resolve_types
        assert resolve is not None
        me = self.actor_ref

        def done(future: asyncio.Future[list[tuple[int, int]]]) -> None:
            if future.exception() is not None:
                self.failure.fail(TransientError(f"looking up column types: {future.exception()}"))
                return
            me.tell(_TypesResolved(oids, future.result()))

        self.loop.run_in_executor(None, resolve, oids).add_done_callback(done)

    def _decode(self, message: Frames) -> None:
        started = time.perf_counter()
        builder = self.builder
        out: list[Outgoing] = []
        builder.feed_all(message.frames, out)
        if out:
            metrics.processing_us.set((time.perf_counter() - started) * 1e6 / len(out))
        if builder.oversized_count:
            metrics.oversized_rows.inc(builder.oversized_count)
            builder.oversized_count = 0
        self.publisher.tell(Publish(message.batch_no, out))
