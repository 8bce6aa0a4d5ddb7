"""Pulling a JetStream consumer fast enough to keep up with the bridge.

nats-py's `fetch` costs several microseconds of client machinery per message (a task, a
`wait_for` and a uuid per `next_msg`, a `Msg` with parsed headers and metadata) and waits a
round trip between batches: a copy applied 19k changes/s from a backlog the replicator
published at 134k/s. Here pull requests ask for large batches and the next one goes out
before the one before is used up, so the server keeps sending while the copy applies; the
messages are taken from the client's parser as bytes (subject, the `$JS.ACK…` reply that
holds the sequences, payload) and nothing is built per message but a tuple.

Taking messages from the parser reaches into nats-py: its message handler
(`Client._process_msg`, as the replicator's publisher does for its PubAcks) and, for the
common case of a read that starts with this consumer's messages, its protocol parser's buffer
(`Parser.buf`, `Parser.state`): those are cut out of the buffer here, without a regular
expression, a coroutine or a copy of the header block per message, and whatever else the read
holds goes to nats-py's own parser. `shared/pinned.py` pins the release this was tested with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.protocol.parser import AWAITING_CONTROL_LINE

from shared import compiled

log = logging.getLogger(__name__)

REQUEST_BYTES = 8 << 20
"""At most what one pull request brings (its `max_bytes`, unless one message is larger): the
bytes in flight are bounded by the requests outstanding, however large the rows, while a
request still asks for many messages (delivering a backlog, nats-server spent 3.3-3.6 µs of
CPU a message in requests of 2,000, 2.8-3.2 in requests of 16,000: docs/consuming.md)."""

Delivery = tuple[bytes, int, int, int, bytes]
"""A message as the follower needs it: subject, stream sequence, consumer sequence, messages
still pending for the consumer after it, payload."""


@dataclass
class _Request:
    remaining: int
    marker: Any  # handed back once nothing is pending after this request's messages
    delivered: int = 0
    received_before: int = 0  # messages received from the consumer before it was sent


@dataclass(frozen=True)
class Idle:
    """Every message the consumer had for the request tagged `marker` was delivered before
    this (nothing was pending when it ended)."""

    marker: Any


class PullError(nats.errors.Error):
    """The consumer answered something other than messages or the end of a request (it was
    deleted, its stream lost its leader…): read again from the stored position."""


class Puller:
    """Messages of one pull consumer, in order, in batches of whatever has arrived.

    Several pull requests are outstanding, and each one used up (or ended by the server) is
    replaced at the next `take`, so the server goes on sending while the messages taken before
    are applied. The server deals messages out to its waiting requests in turn; they are
    counted here against the oldest one, which asks for as many in all (and an older marker
    than the request a message went to: a marker is the stream's state when its request was
    sent). A request may carry a marker (the caller's stream state taken before it was sent):
    when the request ends with nothing pending for the consumer, `Idle(marker)` follows its
    last message."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        *,
        batch: int = 16000,
        expires: float = 1.0,
        outstanding: int = 2,
    ) -> None:
        self.nc: Any = nc  # its private message handler is replaced while pulling
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch, self.expires, self.outstanding = batch, expires, outstanding
        # Each request's byte limit: above the largest message the server takes (a message
        # larger than a request's limit is never delivered to it), None for none.
        self.max_bytes: int | None = max(REQUEST_BYTES, request_overhead(nc))
        self.ready: deque[Delivery | Idle] = deque()
        self.requests: deque[_Request] = deque()
        self.error: Exception | None = None
        self.arrived = asyncio.Event()
        self.last_heard = time.monotonic()
        self.inbox = ""
        self.sub: Any = None
        # The compiled reader of a read's deliveries (shared/compiled); None: the loop in
        # `_read` alone (a test sets it so).
        self.compiled = compiled.frames
        self._subjects: dict[bytes, bytes] = {}  # one bytes object per subject
        self.received = 0  # messages delivered so far

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox)
        _Hooks.of(self.nc).attach(self.sub._id, self)

    async def stop(self) -> None:
        if self.sub is not None:
            _Hooks.of(self.nc).detach(self.sub._id)
            with contextlib.suppress(nats.errors.Error):
                await self.sub.unsubscribe()
            self.sub = None

    def wants_request(self) -> bool:
        return len(self.requests) < self.outstanding

    async def request(self, marker: Any = None, batch: int | None = None) -> None:
        """Ask for the next `batch` messages (`self.batch` unless smaller; the caller takes its
        marker's state just before)."""
        size = self.batch if batch is None else max(1, min(batch, self.batch))
        self.requests.append(_Request(size, marker, received_before=self.received))
        body = {"batch": size, "expires": int(self.expires * 1e9)}
        if self.max_bytes is not None:
            body["max_bytes"] = self.max_bytes
        await self.nc.publish(self.subject, json.dumps(body).encode(), reply=self.inbox)

    async def take(self, timeout: float) -> list[Delivery | Idle]:
        """Whatever has arrived, in order (waiting up to `timeout` for something); an empty
        list means nothing came, not even the end of a request, which after a few expiry
        periods the caller treats as a lost request."""
        if not self.ready and self.error is None:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout)
        if self.error is not None:
            raise self.error
        out = list(self.ready)
        self.ready.clear()
        if out:
            self.last_heard = time.monotonic()
        return out

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    # -- from the client's parser: must not raise ---------------------------------------------

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """One message from nats-py's own parser (a read that did not start with ours)."""
        if headers is not None and headers.startswith(b"NATS/1.0 "):
            self._status(headers)
        else:
            self._delivered(subject, reply, data)
        self.arrived.set()

    def _read(self, view: bytes, pos: int, sid: bytes) -> int:
        """This subscription's complete messages in `view` (a read's bytes) from `pos` on, up
        to the first one that is incomplete or another's; the position after the last taken.
        Every message of a backlog passes here: a few operations each, and the headers of a
        message of the bridge are not read (only a status message's are)."""
        size = len(view)
        find, startswith, delivered = view.find, view.startswith, self._delivered
        first = taken = pos
        if self.compiled is not None:  # the plain deliveries in one call; the rest below
            entries, pos, quiet = self.compiled.read_messages(view, pos, sid, self._subjects)
            if entries:
                self._deliver_all(entries, quiet)
                taken = pos
        while startswith(b"HMSG ", pos):
            try:
                end = find(b"\r\n", pos)
                if end < 0:
                    break
                parts = view[pos + 5 : end].split(b" ")
                if len(parts) == 5:
                    subject, of, reply, header_size, total_size = parts
                elif len(parts) == 4:
                    subject, of, header_size, total_size = parts
                    reply = b""
                else:
                    break
                if of != sid:
                    break
                start = end + 2
                stop = start + int(total_size)
                if stop + 2 > size:
                    break  # the next read brings the rest
                headers_end = start + int(header_size)
                if startswith(b"NATS/1.0 ", start):
                    self._status(view[start:headers_end])
                else:
                    delivered(subject, reply, view[headers_end:stop])
                pos = taken = stop + 2
            except ValueError:  # a size that is not a number: nats-py's parser says what
                break
        if taken > first:
            self.arrived.set()
        return taken

    def _delivered(self, subject: bytes, reply: bytes, data: bytes) -> None:
        tokens = reply.split(b".")
        try:
            if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<s>.<c>.<time>.<pending>
                entry = (subject, int(tokens[5]), int(tokens[6]), int(tokens[8]), data)
            elif len(tokens) >= 11 and tokens[0] == b"$JS":  # with domain and account tokens
                entry = (subject, int(tokens[7]), int(tokens[8]), int(tokens[10]), data)
            else:
                raise ValueError(reply[:80])
        except ValueError as exc:
            self.error = PullError(f"a message without JetStream metadata (reply {exc})")
            return
        self._deliver(entry)

    def _deliver_all(self, entries: list[Delivery], quiet: bool) -> None:
        """`_deliver` each (what the compiled reader read): in one step while no request is
        used up among them and none ends what is pending (`quiet`), as each would do."""
        requests = self.requests
        if requests:
            head = requests[0]
            if not quiet or head.remaining <= len(entries):
                for entry in entries:
                    self._deliver(entry)
                return
            head.remaining -= len(entries)
            head.delivered += len(entries)
        self.received += len(entries)
        self.ready.extend(entries)

    def _deliver(self, entry: Delivery) -> None:
        """One delivery, counted against the request it fills."""
        self.ready.append(entry)
        self.received += 1
        pending = entry[3]
        requests = self.requests
        if requests:  # else the server filled a request no longer counted: sequences decide
            head = requests[0]
            head.remaining -= 1
            head.delivered += 1
            if head.remaining <= 0:
                requests.popleft()
                if pending == 0 and head.marker is not None:
                    self.ready.append(Idle(head.marker))
            elif pending == 0 and head.marker is not None:
                # Nothing more for now: the request stays open for what comes next, and
                # what was pending when it was sent has all been delivered.
                self.ready.append(Idle(head.marker))
                head.marker = None

    def _status(self, headers: bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            self._on_status(headers)
        except Exception as exc:  # anything unexpected ends the pulling, never the parser
            self.error = exc if isinstance(exc, PullError) else PullError(repr(exc))

    def _on_status(self, headers: bytes) -> None:
        code = headers[9:12]
        if code == b"100":  # idle heartbeat or flow control: not asked for, nothing to do
            return
        if code in (b"404", b"408"):
            # The request ended unfilled (it expired, or found nothing): one that received no
            # message waited its whole life with nothing for it. (The status's
            # Nats-Pending-Messages is what the request still wanted, not the consumer's.)
            if self.requests:
                head = self.requests.popleft()
                if head.marker is not None and head.delivered == 0:
                    self.ready.append(Idle(head.marker))
            return
        if code == b"409" and b"Batch Completed" in headers:
            # A request with a byte limit got all its messages (the server says so for those):
            # it was counted out with its last one.
            return
        if code == b"409" and b"Exceeds MaxBytes" in headers:
            # A request's bytes are used up: it ended with the next message not delivered.
            if not self.requests:
                return
            ended = self.requests.popleft()
            if not self.requests and self.received == ended.received_before and self.max_bytes:
                # Every request ended so, and not one message came since the first was sent:
                # the next message alone is larger than a request may bring (stored while the
                # server allowed larger ones). No byte limit from now on, rather than asking
                # for it again and again.
                log.warning(
                    "a message on %s is larger than a pull request's %d bytes: pulling without "
                    "a byte limit",
                    self.subject,
                    self.max_bytes,
                )
                self.max_bytes = None
            return
        line = headers.split(b"\r\n", 1)[0].decode(errors="replace")
        raise PullError(f"JetStream answered a pull request on {self.subject} with {line[9:]!r}")


def request_overhead(nc: Any) -> int:
    """More than the largest message the server delivers: its max_payload (headers and
    payload), with room for the subject and the reply."""
    return int(getattr(nc, "max_payload", 0) or 0) + (64 << 10)


class _Hooks:
    """The messages of pullers' subscriptions, taken from one client before nats-py handles
    them: installed with the first puller on a client, removed with the last, so that any
    number of them attach and detach in any order."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.pullers: dict[int, Puller] = {}
        self.by_sid_bytes: dict[bytes, Puller] = {}
        self.process_msg: Callable[..., Awaitable[None]] = nc._process_msg
        self.parser: Any = nc._ps
        self.parse: Callable[[bytes], Awaitable[None]] = self.parser.parse
        # What to put back: an instance's own attribute, or nothing (the class's method).
        self.own = {"_process_msg": "_process_msg" in vars(nc), "parse": "parse" in vars(nc._ps)}
        self.wanted = 0  # bytes the buffer holds once the message it starts with is complete

    @classmethod
    def of(cls, nc: Any) -> _Hooks:
        hooks: _Hooks | None = getattr(nc, "_pnb_pull_hooks", None)
        if hooks is None:
            hooks = nc._pnb_pull_hooks = cls(nc)
        return hooks

    def attach(self, sid: int, puller: Puller) -> None:
        if not self.pullers:
            self.nc._process_msg = self._process_msg
            self.parser.parse = self._parse
        self.pullers[sid] = puller
        self.by_sid_bytes[str(sid).encode()] = puller

    def detach(self, sid: int) -> None:
        self.pullers.pop(sid, None)
        self.by_sid_bytes.pop(str(sid).encode(), None)
        if not self.pullers:
            if self.own["_process_msg"]:
                self.nc._process_msg = self.process_msg
            else:
                del self.nc._process_msg
            if self.own["parse"]:
                self.parser.parse = self.parse
            else:
                del self.parser.parse
            del self.nc._pnb_pull_hooks

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        puller = self.pullers.get(sid)
        if puller is not None:
            puller._on_message(subject, reply, data, headers)
        else:
            await self.process_msg(sid, subject, reply, data, headers)

    async def _parse(self, data: bytes = b"") -> None:
        """HMSGs of the pullers' subscriptions at the start of the buffer are taken here, the
        buffer copied to bytes once per read; anything else, and everything after it, goes to
        nats-py's parser."""
        parser = self.parser
        buf: bytearray = parser.buf
        buf.extend(data)
        if len(buf) < self.wanted:
            return
        self.wanted = 0
        if parser.state == AWAITING_CONTROL_LINE and buf.startswith(b"HMSG "):
            view = bytes(buf)
            pos = 0
            while view.startswith(b"HMSG ", pos):
                end = view.find(b"\r\n", pos)
                if end < 0:
                    break
                parts = view[pos + 5 : end].split(b" ")
                puller = self.by_sid_bytes.get(parts[1]) if len(parts) in (4, 5) else None
                if puller is None or not parts[-1].isdigit():
                    break
                wanted = end - pos + 2 + int(parts[-1]) + 2
                if pos + wanted > len(view):
                    # Incomplete: nothing is tried again before the read that completes it
                    # (a large payload arrives in many reads, each copied above).
                    self.wanted = wanted
                    break
                taken = puller._read(view, pos, parts[1])
                if taken == pos:
                    break
                pos = taken
            del buf[:pos]
            if self.wanted:
                return
        if buf:
            await self.parse(b"")
