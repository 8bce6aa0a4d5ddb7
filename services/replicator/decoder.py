"""Decoder: frames in, publishable messages out, one batch at a time.

An actor on the pipeline's loop (`LoopActor`), as the reader and the publisher are: the reader
tells it each batch and it tells the publisher the messages, each handled in the sender's own
call when the receiver is idle (loop_actor.py), all on the loop's thread."""

from __future__ import annotations

import time
from typing import Any

import pykka

from services.replicator import metrics
from services.replicator.events import EventBuilder, Outgoing
from services.replicator.failure import FailureSignal, reports_expected_failures
from services.replicator.io_loop import IoLoop
from services.replicator.loop_actor import LoopActor
from services.replicator.messages import Frames, Publish


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

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.failure.fail(exc or RuntimeError("decoder failed"))

    @reports_expected_failures
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Frames) and not self.failure.failed:
            started = time.perf_counter()
            builder = self.builder
            out: list[Outgoing] = []
            for frame in message.frames:
                builder.feed(frame, out)
            if out:
                metrics.processing_us.set((time.perf_counter() - started) * 1e6 / len(out))
            if builder.oversized_count:
                metrics.oversized_rows.inc(builder.oversized_count)
                builder.oversized_count = 0
            self.publisher.tell(Publish(message.batch_no, out))
        return None
