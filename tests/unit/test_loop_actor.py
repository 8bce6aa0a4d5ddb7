"""`LoopActor`: a pykka actor on a shared event loop keeps pykka's contract (messages one at a
time in order on the loop's thread, `ask` from other threads, stop, failures to `on_failure`),
and a stop still stops once the loop is gone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from services.replicator.loop_actor import LoopActor


class Recorder(LoopActor):
    last: Recorder | None = None  # the instance behind the latest ref, for the assertions

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        super().__init__()
        Recorder.last = self
        self.loop, self.loop_thread_id = loop, thread_id
        self.seen: list[tuple[Any, int]] = []
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.failed: list[BaseException | None] = []

    def on_start(self) -> None:
        self.started.set()

    def on_stop(self) -> None:
        self.stopped.set()

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.failed.append(exc)

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "tell-self":
            self.actor_ref.tell("from-self")
        self.seen.append((message, threading.get_ident()))
        return len(self.seen)


@pytest.fixture
def loop() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop, thread
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def start(loop: tuple[asyncio.AbstractEventLoop, threading.Thread]) -> pykka.ActorRef[Recorder]:
    assert loop[1].ident is not None
    return Recorder.start(loop[0], loop[1].ident)


def test_messages_in_order_on_the_loop_thread_and_asks_from_another(loop: Any) -> None:
    ref = start(loop)
    # The loop waits until every message below is queued: a message the actor tells itself
    # goes after those already queued, and without the gate "last" might not be yet (the
    # order between two senders is not pykka's to keep; a CI run saw from-self first).
    gate = threading.Event()
    loop[0].call_soon_threadsafe(gate.wait, 5)
    for n in range(100):
        ref.tell(n)
    ref.tell("tell-self")
    last = ref.ask("last", block=False)
    gate.set()
    assert last.get(timeout=5) == 102  # 100 numbers, tell-self, last; from-self after
    actor = ref.proxy().seen.get(timeout=5)
    assert [m for m, _ in actor][:102] == [*range(100), "tell-self", "last"]
    assert {tid for _, tid in actor} == {loop[1].ident}
    assert ref.ask("again", timeout=5) == 104  # from-self was handled before it
    ref.stop(block=True, timeout=5)
    assert not ref.is_alive()


def test_a_failure_reaches_on_failure_and_stops_the_actor(loop: Any) -> None:
    ref = start(loop)
    actor = Recorder.last
    assert actor is not None
    assert actor.started.wait(5)
    ref.tell("boom")
    assert ref.actor_stopped.wait(5)
    assert not ref.is_alive()
    assert [type(e) for e in actor.failed] == [ValueError]


def test_an_ask_that_raises_returns_the_error_to_the_caller(loop: Any) -> None:
    ref = start(loop)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=5)
    assert ref.is_alive()  # as with pykka's own actors: the caller got the error
    ref.stop(block=True, timeout=5)


def test_a_stop_after_the_loop_stopped_still_stops(loop: Any) -> None:
    ref = start(loop)
    actor = Recorder.last
    assert actor is not None
    assert actor.started.wait(5)
    loop[0].call_soon_threadsafe(loop[0].stop)
    loop[1].join(5)
    ref.stop(block=True, timeout=5)
    assert actor.stopped.is_set()
    assert not ref.is_alive()
