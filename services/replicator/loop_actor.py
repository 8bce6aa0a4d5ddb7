"""A pykka actor whose messages are handled on an asyncio event loop it shares with others,
instead of on a thread of its own.

pykka leaves three hooks to a runtime (`_create_actor_inbox`, `_create_future`,
`_start_actor_loop`; its gevent and eventlet actors were such runtimes). Here the inbox is the
loop's callback queue: `tell` and `ask` work as with a `ThreadingActor`, one message at a time
in order, and `ask` from another thread blocks on a `ThreadingFuture` as usual.

Why: the decoder hands every batch to the publisher, which lives on its I/O loop. With a
thread of its own, each hand-off costs a wake-up of the loop and a GIL hand-over between the
two threads (on this kind of machine 20-60 µs of CPU each, several per batch); on the loop, it
is a call on the same thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope

log = logging.getLogger(__name__)


class _LoopInbox:
    """The actor's inbox: envelopes become callbacks on the loop, in order.

    A message told on the loop's thread to an actor that is idle with nothing queued is handled
    at once, inside `put` (the sender's own handler then goes on after it): the order of every
    sender's messages is kept, and a batch passing reader → decoder → publisher costs no turn of
    the loop per hop. An actor busy handling a message, or with messages queued, gets it queued.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread_id = 0
        self.handle: Any = None
        self.early: list[Envelope[Any]] = []  # put before the actor was started
        self.queued = 0  # scheduled on the loop, not yet handled
        self.busy = False  # handling a message now

    def attach(self, loop: asyncio.AbstractEventLoop, thread_id: int, handle: Any) -> None:
        self.loop, self.thread_id, self.handle = loop, thread_id, handle
        early, self.early = self.early, []
        for envelope in early:
            self.put(envelope)

    def put(self, envelope: Envelope[Any], /) -> None:
        loop = self.loop
        if loop is None:
            self.early.append(envelope)
        elif threading.get_ident() == self.thread_id:
            if self.queued or self.busy:
                self.queued += 1
                loop.call_soon(self._queued, envelope)
            else:
                self._run(envelope)
        elif loop.is_running():
            self.queued += 1
            loop.call_soon_threadsafe(self._queued, envelope)
        else:
            # The loop stopped (its owner shut down): handled here, so a stop still stops.
            self._run(envelope)

    def _queued(self, envelope: Envelope[Any]) -> None:
        self.queued -= 1
        self._run(envelope)

    def _run(self, envelope: Envelope[Any]) -> None:
        self.busy = True
        try:
            self.handle(envelope)
        finally:
            self.busy = False

    def get(self) -> Envelope[Any]:
        raise RuntimeError("a loop actor's inbox is drained by its loop, not read")

    def empty(self) -> bool:
        return True


class LoopActor(pykka.Actor):
    """An actor run on `loop` (a running event loop on `loop_thread_id`'s thread), which a
    subclass sets in its `__init__`."""

    loop: asyncio.AbstractEventLoop
    loop_thread_id: int

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _LoopInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def _start_actor_loop(self) -> None:
        inbox: _LoopInbox = self.actor_inbox  # type: ignore[assignment]
        self.loop.call_soon_threadsafe(self._actor_loop_setup)
        inbox.attach(self.loop, self.loop_thread_id, self._handle_envelope)

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        """One message, as pykka's own actor loop handles each (`_actor_loop_running`)."""
        reply_to = envelope.reply_to
        if self.actor_stopped.is_set():
            if reply_to is not None:
                if isinstance(envelope.message, pykka.messages._ActorStop):
                    reply_to.set(None)
                else:
                    error = ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                    reply_to.set_exception(exc_info=(ActorDeadError, error, None))
            return
        try:
            response = self._handle_receive(envelope.message)
            if reply_to is not None:
                reply_to.set(response)
        except Exception:
            if reply_to is not None:
                log.info("exception returned from %s to caller:", self, exc_info=sys.exc_info())
                reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            log.debug("%r in %s; stopping all actors", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()
