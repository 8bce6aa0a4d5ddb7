"""Publisher: owns the NATS connection; publishes batches to JetStream with many in flight.

Order and acknowledgement: every message carries `Nats-Expected-Last-Sequence`, the stream
sequence it must follow, so JetStream stores a message only right after the one before it.
Without it, a message lost with a dying stream leader (or answered 503 between leaders) while
later ones, already sent, reach the new leader would leave a gap that the replay after the
restart fills out of order (seen in the cluster test: change 2918 stored before 2694). With
it, every later message is refused ("wrong last sequence"), the pipeline restarts from the
slot's confirmed position, and the stream stays the replicator's messages in order.

Each message also carries `Nats-Expected-Last-Msg-Id`, the Msg-Id of the one sent before it:
the sequence alone is satisfied by any message in that place, so a refused message followed
by a foreign one (something else publishing to the stream) would let the next one through,
and the refused one would be lost unnoticed (a test does exactly that).

The same chain makes per-message PubAcks unnecessary: messages go out as pre-built HPUB frames,
a run of them in one write, and only the last of each run (at least every `_ACK_EVERY`) has a
reply subject. Its PubAck, stored at the sequence it expected, proves every message before it
stored; a dropped or refused one anywhere before it turns that PubAck into an error. JetStream
then answers (and the client parses) one PubAck per run instead of one per message, which
halves nats-server's CPU per message and removes most of ours. A batch is done when the PubAck
of its last message arrived; the reader is told the last done batch (`Acked`), and what that
means for the position to confirm and the budget is the reader's `Progress` to say.

A restart first replays what the stream already has (stored, not yet confirmed to PostgreSQL):
the pipeline starts by sending one message at a time, each with a reply, until JetStream
answers one that is not a duplicate; its sequence is where the chained sending continues. So a
refusal that a chained run only reports as "wrong last sequence" (a message over the stream's
size limit, say) shows its own error on the restart. A PubAck overdue by `ack_timeout` fails
the pipeline the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pykka
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from pg_nats_bridge.contract import unpack
from services.replicator import metrics
from services.replicator.errors import PermanentError, StreamUnansweredError, TransientError
from services.replicator.events import Outgoing
from services.replicator.failure import FailureSignal, reports_expected_failures
from services.replicator.io_loop import IoLoop
from services.replicator.loop_actor import LoopActor
from services.replicator.messages import Acked, AttachReader, Publish
from shared import compiled, failpoints
from shared.lsn import Lsn
from shared.nats_connection import connect
from shared.nats_frames import FrameWriter, hpub
from shared.pub_acks import raw_refusal
from shared.settings import BridgeSettings

log = logging.getLogger(__name__)

# JetStream requests of a pipeline's start: a stream without a leader does not answer, and the
# supervisor's probes then find the moment it does (nats-py's default would wait 5 s).
START_API_TIMEOUT = 1.0

# A PubAck is asked for at least once per this many messages, so a long batch gives budget
# back as it goes rather than at its end.
_ACK_EVERY = 1000


@dataclass(slots=True)
class _Batch:
    batch_no: int
    last_seq: int
    sent_at: float


def _stored_at(ack: bytes, seq: int) -> bool:
    """The PubAck (nats-server's compact JSON, `{"stream":…,"seq":N…}`) says stored at
    `seq`, not a duplicate: read without a JSON parse (one per batch, on the hot path).
    False when unsure; the caller then parses it."""
    marker = b'"seq":%d' % seq
    at = ack.find(marker)
    if at < 0 or b'"duplicate"' in ack or b'"error"' in ack:
        return False
    end = at + len(marker)
    return ack[end : end + 1] in (b",", b"}")


@dataclass(slots=True)
class JetStreamLink:
    """The publisher's NATS connection, opened by the pipeline on its loop before the actors
    start (`open_link`) and closed by it after they stop: a PubAck inbox, the stream's last
    sequence when the pipeline started, the server's max_payload."""

    nc: Client
    stream: str
    stream_last: int
    max_payload: int
    inbox_prefix: str
    ack_sid: int
    closing: bool = False
    # The commit LSN of the last transaction the stream holds anything of (0: none found):
    # what is decoded up to it is a replay, which must publish nothing new (EventBuilder).
    stored_through: int = 0

    def writer(self) -> FrameWriter:
        return FrameWriter(self.nc)

    async def close(self) -> None:
        self.closing = True
        if not self.nc.is_closed:
            await self.nc.close()


async def open_link(settings: BridgeSettings, stream: str, failure: FailureSignal) -> JetStreamLink:
    """Connect, check the stream, subscribe the PubAck inbox.

    No silent reconnect: nats-py would, after a reconnect, flush the messages it buffered
    meanwhile, while those written to the lost socket just before are gone, so a later change
    could be stored ahead of an earlier one (seen when a cluster node died). A lost connection
    fails the pipeline instead; it restarts from the slot's confirmed position and the
    duplicate window drops what was stored twice."""
    link: JetStreamLink | None = None

    async def lost() -> None:
        if link is not None and not link.closing:
            failure.fail(
                TransientError("NATS connection lost; unacknowledged changes will be replayed")
            )

    nc = await connect(settings, "bridge-replicator", on_closed=lost)
    try:
        info = await nc.jetstream(timeout=START_API_TIMEOUT).stream_info(stream)
    except NotFoundError:
        await nc.close()
        raise PermanentError(
            f"JetStream stream {stream} does not exist; it is created at start unless "
            "provisioning failed: check the log above"
        ) from None
    inbox_prefix = nc.new_inbox() + "."
    sub = await nc.subscribe(inbox_prefix + "*")
    link = JetStreamLink(nc, stream, info.state.last_seq, nc.max_payload, inbox_prefix, sub._id)
    link.stored_through = await _stored_through(
        nc, stream, info.state.first_seq, info.state.last_seq
    )
    return link


# Messages read back from the stream's end for the last commit LSN it holds (past foreign
# messages, which carry none).
_STORED_LOOKBACK = 50


async def _stored_through(nc: Client, stream: str, first: int, last: int) -> int:
    """The commit LSN of the newest message of the stream that has one (0 for none)."""
    js = nc.jetstream(timeout=START_API_TIMEOUT)
    for seq in range(last, max(first, last - _STORED_LOOKBACK + 1) - 1, -1):
        if seq <= 0:
            break
        try:
            msg = await js.get_msg(stream, seq=seq)
            body = unpack(msg.data or b"")
            return int(Lsn.parse(str(body["commit_lsn"])))
        except NotFoundError:
            continue  # deleted
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # not one of the bridge's, or one without a commit LSN
    return 0


class Publisher(LoopActor):
    """An actor on the pipeline's loop (as the reader and the decoder): `Publish` batches in,
    `Acked` out to the reader."""

    def __init__(
        self,
        link: JetStreamLink,
        io: IoLoop,
        failure: FailureSignal,
        max_in_flight: int,
        ack_timeout: float,
    ) -> None:
        super().__init__()
        self.loop, self.loop_thread_id = io.loop, io.thread_id
        self.link = link
        self.stream = link.stream
        self.failure = failure
        self.max_in_flight = max_in_flight
        self.ack_timeout = ack_timeout
        self.nc: Client = link.nc
        self.inbox_prefix = link.inbox_prefix
        self.seq = 0
        self.acked_through = 0
        # Sequence (ours) of each chained message awaiting its PubAck → stream sequence it
        # must be stored at.
        self.waiting: dict[int, int] = {}
        self.writer: FrameWriter | None = None
        self.inbox_prefix_bytes = link.inbox_prefix.encode()
        self.counted = 0
        self.batches: deque[_Batch] = deque()
        self.reader: pykka.ActorRef[Any] | None = None
        self.last_ack: Acked | None = None
        self.room: asyncio.Event | None = None
        self.watchdog: asyncio.Task[None] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.queue: asyncio.Queue[Publish] | None = None
        self.pumping = False  # the pump is sending a batch (maybe waiting for room)
        # The stream sequence the next message must follow; None while the replay of what
        # the stream already holds is probed one message at a time.
        self.expected: int | None = None
        self.stream_last = link.stream_last
        self.probe: tuple[int, asyncio.Future[dict[str, Any]]] | None = None
        self.last_id = b""  # Msg-Id of the last message sent after probing
        self.compiled = compiled.frames  # a run's frames in one call; None: `hpub` each

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        # On the loop's thread: the link is open, so everything here is immediate.
        self.writer = self.link.writer()
        self.room = asyncio.Event()
        self.queue = asyncio.Queue()
        self.writer.deliver_inline(self.link.ack_sid, self._on_ack)
        self.watchdog = asyncio.ensure_future(self._watch())
        self.pump = asyncio.ensure_future(self._pump())

    def on_stop(self) -> None:
        self._stop_tasks()

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.failure.fail(exc or RuntimeError("publisher failed"))
        self._stop_tasks()

    def _stop_tasks(self) -> None:
        self.link.closing = True  # the pipeline closes the connection next
        for task in (self.watchdog, self.pump):
            if task is not None:
                task.cancel()

    @reports_expected_failures
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            self._accept(message)
        elif isinstance(message, AttachReader):
            self.reader = message.ref
            if self.last_ack is not None:
                self.reader.tell(self.last_ack)
        return None

    # -- publishing (on the I/O loop) -----------------------------------------------------

    def _accept(self, batch: Publish) -> None:
        """A batch from the decoder (told on the loop's thread, so handled in the decoder's
        own call when this actor is idle). Sent at once when nothing waits before it, all of
        it fits in flight and the socket takes it (nearly always): the decoder's next batch
        then finds this one's frames written, and no turn of the loop is spent waking the
        pump. Otherwise it queues for the pump, which can wait."""
        if self.failure.failed:
            return  # the pipeline is being stopped; nothing more goes out
        assert self.queue is not None and self.writer is not None
        messages = batch.messages
        if (
            self.pumping
            or not self.queue.empty()
            or self.expected is None
            or self.max_in_flight - (self.seq - self.acked_through) < len(messages)
            or not self.writer.can_write_now()
        ):
            self.queue.put_nowait(batch)
            return
        try:
            for start in range(0, len(messages), _ACK_EVERY):
                end = min(len(messages), start + _ACK_EVERY)
                self.writer.write_now(self._chain(messages, start, end))
        except Exception as exc:
            self.failure.fail(exc)
            return
        self._sent(batch)

    async def _pump(self) -> None:
        assert self.queue is not None
        while True:
            batch = await self.queue.get()
            if self.failure.failed:
                continue  # the pipeline is being stopped; nothing more goes out
            self.pumping = True
            try:
                await self._publish(batch)
            except Exception as exc:
                self.failure.fail(exc)
                return
            finally:
                self.pumping = False

    async def _publish(self, batch: Publish) -> None:
        messages = batch.messages
        done = 0
        while done < len(messages):
            if self.failure.failed:
                # A refusal (e.g. a stream between leaders answering 503) stops the batch here:
                # a later message must not be stored ahead of one that was not.
                return
            room = self.max_in_flight - (self.seq - self.acked_through)
            if room <= 0:
                await self._wait_for_room()
                continue
            if self.expected is None:
                await self._probe(messages[done])
                done += 1
                continue
            end = min(len(messages), done + room, done + _ACK_EVERY)
            assert self.writer is not None
            await self.writer.write(self._chain(messages, done, end))
            done = end
        self._sent(batch)

    def _sent(self, batch: Publish) -> None:
        """Every message of `batch` is written: it is done once the last one's PubAck came."""
        self.batches.append(_Batch(batch.batch_no, self.seq, time.monotonic()))
        failpoints.hit("publisher.after_write")
        self._advance()

    async def _wait_for_room(self) -> None:
        room = self.room
        assert room is not None
        room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(room.wait(), 1.0)

    def _chain(self, messages: list[Outgoing], start: int, end: int) -> bytes:
        """The frames of messages `start`…`end-1`, for one write, each stored only right after
        the one before; only the last asks for a PubAck. Its PubAck, stored at the sequence it
        expected, says every one before it was stored too: a message JetStream dropped or
        refused makes the next one be refused ("wrong last sequence"), and so on up to the
        last."""
        expected, previous = self.expected, self.last_id
        assert expected is not None
        if self.compiled is not None:  # the same bytes, in one call (shared/compiled)
            self.seq += end - start
            reply = b"%b%d" % (self.inbox_prefix_bytes, self.seq)
            chained: bytes = self.compiled.chain(messages, start, end, expected, previous, reply)
            self.expected = expected + end - start
            self.last_id = messages[end - 1].msg_id
            self.waiting[self.seq] = self.expected
            return chained
        frames: list[bytes] = []
        append = frames.append
        for message in messages[start : end - 1]:
            msg_id = message.msg_id
            append(hpub(message.subject, b"", msg_id, expected, message.payload, previous))
            expected += 1
            previous = msg_id
        last = messages[end - 1]
        self.seq += end - start
        reply = b"%b%d" % (self.inbox_prefix_bytes, self.seq)
        append(hpub(last.subject, reply, last.msg_id, expected, last.payload, previous))
        self.expected = expected + 1
        self.last_id = last.msg_id
        self.waiting[self.seq] = self.expected
        return b"".join(frames)

    async def _probe(self, message: Outgoing) -> None:
        """One message, then its PubAck. A duplicate (the stream has it from before the
        restart) keeps probing; a stored message sets the sequence pipelining continues from.
        While probing, every message must follow what the stream held when the pipeline
        started."""
        self.seq += 1
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.probe = (self.seq, future)
        reply = b"%b%d" % (self.inbox_prefix_bytes, self.seq)
        assert self.writer is not None
        try:
            await self.writer.write(
                hpub(message.subject, reply, message.msg_id, self.stream_last, message.payload)
            )
            ack = await asyncio.wait_for(future, self.ack_timeout)
        except TimeoutError:
            metrics.publish_refusals.labels("ack_timeout").inc()
            raise TransientError(
                f"no PubAck from JetStream for {self.ack_timeout:g} s: NATS slow or unreachable"
            ) from None
        finally:
            self.probe = None
        if not ack.get("duplicate"):
            self.expected = int(ack["seq"])
            self.last_id = message.msg_id

    def _on_ack(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        """A PubAck, as nats-py's parser read it (in the parser's call: must not raise)."""
        try:
            self._take_ack(int(subject[len(self.inbox_prefix_bytes) :]), data, headers)
        except Exception as exc:
            self.failure.fail(exc)

    def _take_ack(self, seq: int, data: bytes, headers: bytes | None) -> None:
        probe = self.probe[1] if self.probe is not None and self.probe[0] == seq else None
        error = self._ack_error(data, headers)
        if error is None and probe is None:
            error = self._chain_error(seq, data)
        if error is not None:
            if probe is not None and not probe.done():
                probe.set_exception(error)
            self.failure.fail(error)
            return
        if probe is not None and not probe.done():
            probe.set_result(json.loads(data))
        if seq > self.acked_through:
            self.acked_through = seq
        if self.room is not None:
            self.room.set()
        self._advance()

    def _chain_error(self, seq: int, data: bytes) -> Exception | None:
        """A chained PubAck vouches for the messages before it only when its message was
        stored where it was expected; a duplicate was not stored at all (JetStream checks the
        Msg-Id before the expectations), so it vouches for nothing."""
        expected = self.waiting.pop(seq, None)
        if expected is None:
            return TransientError(f"JetStream answered {data[:200]!r} for no message sent")
        if _stored_at(data, expected):
            return None
        ack = json.loads(data)
        if ack.get("duplicate") or ack.get("seq") != expected:
            return TransientError(
                f"JetStream answered {data[:200]!r} for a message expected at stream "
                f"sequence {expected}; replaying from the slot keeps the order"
            )
        return None

    def _ack_error(self, data: bytes, headers: bytes | None) -> Exception | None:
        problem = raw_refusal(data, headers)
        if problem is None:
            return None
        if problem.no_responders:
            metrics.publish_refusals.labels("no_responders").inc()
            return StreamUnansweredError(
                f"JetStream did not answer on {self.stream}: no responders (stream missing or "
                "JetStream unavailable)"
            )
        if isinstance(problem.error, dict) and problem.error.get("err_code") in (10070, 10071):
            metrics.publish_refusals.labels("wrong_last_sequence").inc()
            return TransientError(
                "JetStream refused a message whose predecessor it did not store (wrong last "
                "sequence: a stream leader changed, or something else publishes to "
                f"{self.stream}); replaying from the slot keeps the order"
            )
        metrics.publish_refusals.labels("refused").inc()
        return TransientError(f"JetStream refused a message: {problem.error}")

    def _advance(self) -> None:
        batches = self.batches
        last: _Batch | None = None
        while batches and batches[0].last_seq <= self.acked_through:
            last = batches.popleft()
        if last is None:
            return
        metrics.events_published.inc(last.last_seq - self.counted)
        self.counted = last.last_seq
        self.last_ack = Acked(last.batch_no)
        if self.reader is not None:
            self.reader.tell(self.last_ack)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.batches or self.seq > self.acked_through:
                oldest = self.batches[0].sent_at if self.batches else time.monotonic()
                if time.monotonic() - oldest > self.ack_timeout:
                    metrics.publish_refusals.labels("ack_timeout").inc()
                    self.failure.fail(
                        TransientError(
                            f"no PubAck from JetStream for {self.ack_timeout:g} s "
                            f"({self.seq - self.acked_through} messages waiting): NATS slow or "
                            "unreachable"
                        )
                    )
                    return
