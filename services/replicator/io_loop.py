"""The replicator pipeline's one event loop, in a thread of its own: the reader, the decoder
and the publisher are actors on it (loop_actor.py), and the NATS connection lives on it.

Owned by the pipeline, not by any actor: the pipeline starts it before the actors and stops it
after them, and opens and closes the NATS connection on it, so no actor's lifecycle has to
block on another's loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class IoLoop:
    def __init__(self, name: str = "replicator-io") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> IoLoop:
        self.thread.start()
        return self

    @property
    def thread_id(self) -> int:
        assert self.thread.ident is not None, "the loop is not started"
        return self.thread.ident

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 5) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
