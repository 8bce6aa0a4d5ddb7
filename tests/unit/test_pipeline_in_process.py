"""The replicator's pipeline (reader, decoder, publisher on their loop) in-process, against a
scripted walsender and a JetStream stand-in that delays, reorders, drops and refuses
PubAcks, restarted from the slot after every failure as the supervisor does. No servers: the
two ends are the injectable `open_stream` and `open_link` of `Pipeline`.

Proven on each run, within a second or two: every change reaches the stream exactly once and
in commit order, and no status update ever confirms past a change the stream has not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.replicator.errors import TransientError
from services.replicator.failure import FailureSignal
from services.replicator.pipeline import Pipeline
from services.replicator.protocol import parse_standby_status_update
from services.replicator.publisher import JetStreamLink
from services.replicator.settings import ReplicatorSettings
from shared.lsn import Lsn

RELID = 16384

COMMITS = "cdc.~commit"


def xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + payload


def relation() -> bytes:
    columns = b"".join(
        b"\x01" + b"id\x00" + struct.pack("!Ii", 23, -1) if i == 0 else
        b"\x00" + b"v\x00" + struct.pack("!Ii", 25, -1)
        for i in range(2)
    )  # fmt: skip
    return b"R" + struct.pack("!I", RELID) + b"public\x00t\x00d" + struct.pack("!H", 2) + columns


def insert(row: int) -> bytes:
    values = [str(row).encode(), b"v%d" % row]
    tuple_data = b"".join(b"t" + struct.pack("!I", len(v)) + v for v in values)
    return b"I" + struct.pack("!I", RELID) + b"N" + struct.pack("!H", 2) + tuple_data


@dataclass
class Transaction:
    rows: list[int]
    start: int
    commit_lsn: int
    end: int


def make_wal(count: int, seed: int) -> list[Transaction]:
    rng = random.Random(seed)
    out, lsn, row = [], 0x1000, 0
    for _ in range(count):
        lsn += rng.randrange(0, 0x200)  # other tables' WAL between
        size = rng.randrange(1, 6)
        rows = list(range(row, row + size))
        row += size
        start = lsn
        commit_lsn = start + 0x40 * (size + 1)
        out.append(Transaction(rows, start, commit_lsn, commit_lsn + 0x30))
        lsn = commit_lsn + 0x30
    return out


class Walsender:
    """The server side of the replication stream: the WAL, the slot's confirmed position, and
    what a stream started from it sends. Checks every status update against what JetStream
    stored."""

    def __init__(self, wal: list[Transaction], jetstream: FakeJetStream) -> None:
        self.wal = wal
        self.jetstream = jetstream
        self.slot = Lsn(0)
        self.violations: list[str] = []
        self.lock = threading.Lock()

    def open(self) -> FakeStream:
        return FakeStream(self)

    def confirm(self, flushed: Lsn) -> None:
        with self.lock:
            stored = self.jetstream.stored_rows()
            for tx in self.wal:
                if tx.end <= flushed and not set(tx.rows) <= stored:
                    self.violations.append(
                        f"confirmed {flushed} past transaction ending {Lsn(tx.end)} with rows "
                        f"{sorted(set(tx.rows) - stored)} not stored"
                    )
            self.slot = max(self.slot, flushed)


class FakeStream:
    """`ReplicationConnection` as the reader uses it; readiness through a socketpair."""

    def __init__(self, server: Walsender) -> None:
        self.server = server
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.queue: list[bytes] = []
        self.streaming = False
        self.closed = False
        self.feeder: threading.Thread | None = None

    def start_replication(self, slot: str, lsn: Lsn, options: dict[str, str]) -> None:
        self.streaming = True
        pending = [tx for tx in self.server.wal if tx.end > self.server.slot]
        self.feeder = threading.Thread(target=self._feed, args=(pending,), daemon=True)
        self.feeder.start()

    def _feed(self, pending: list[Transaction]) -> None:
        """Transactions arrive over time, in bursts, with keepalives between and inside."""
        rng = random.Random(len(pending))
        frames = [xlog(pending[0].start if pending else 0x1000, relation())]
        for tx in pending:
            frames.append(xlog(tx.start, b"B" + struct.pack("!Qqi", tx.commit_lsn, 0, 700)))
            for k, row in enumerate(tx.rows):
                frames.append(xlog(tx.start + 0x40 * (k + 1), insert(row)))
                if rng.random() < 0.1:
                    frames.append(keepalive(tx.end, rng.random() < 0.3))
            frames.append(
                xlog(tx.commit_lsn, b"C" + struct.pack("!bQQq", 0, tx.commit_lsn, tx.end, 0))
            )
            if rng.random() < 0.3:
                frames.append(keepalive(tx.end + rng.randrange(0, 0x100), False))
            if rng.random() < 0.2:
                self._push(frames)
                frames = []
                time.sleep(rng.random() * 0.003)
        self._push(frames)

    def _push(self, frames: list[bytes]) -> None:
        if self.closed or not frames:
            return
        self.queue += frames
        with contextlib.suppress(OSError):  # closed meanwhile
            self.theirs.send(b"x")

    def read_ready(
        self, max_messages: int, max_bytes: int, data_kind: int
    ) -> tuple[list[bytes], list[bytes]]:
        with contextlib.suppress(OSError):  # drained: BlockingIOError
            while self.ours.recv(4096):
                pass
        taken, size, xlog_frames, other = 0, 0, [], []
        while self.queue and taken < max_messages and size < max_bytes:
            frame = self.queue.pop(0)
            (xlog_frames if frame[0] == data_kind else other).append(frame)
            taken += 1
            size += len(frame)
        if self.queue:
            self.theirs.send(b"x")  # more to read: stay readable
        return xlog_frames, other

    def send(self, message: bytes) -> None:
        _, flushed, _, _, reply = parse_standby_status_update(message)
        self.server.confirm(flushed)
        if reply:
            last = [tx.end for tx in self.server.wal if tx.end <= self.server.slot]
            self._push([keepalive(max(last, default=0x1000), False)])

    def fileno(self) -> int:
        return self.ours.fileno()

    def close(self) -> None:
        self.closed = True
        self.streaming = False
        self.ours.close()
        self.theirs.close()


def keepalive(wal_end: int, reply: bool) -> bytes:
    return b"k" + struct.pack("!Qq", wal_end, 0) + (b"\x01" if reply else b"\x00")


@dataclass
class FakeJetStream:
    """The CDC stream as the publisher's chain sees it: Msg-Id dedupe first, then the expected
    last sequence and Msg-Id, PubAcks only for messages with a reply subject. `faults` decides,
    per message, whether it is dropped unanswered, refused, or answered late and out of
    order."""

    rng: random.Random
    faults: bool
    messages: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)
    ids: dict[bytes, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stored_rows(self) -> set[int]:
        with self.lock:
            return {int(data["data"]["id"]) for s, _, data in self.messages if s != COMMITS}

    def publish(
        self, subject: str, msg_id: bytes, last_seq: int, last_id: bytes, payload: bytes
    ) -> dict[str, Any] | None:
        import msgpack

        with self.lock:
            if msg_id in self.ids:
                return {"stream": "CDC", "seq": self.ids[msg_id], "duplicate": True}
            if self.faults and self.rng.random() < 0.01:
                return None  # lost with a stream leader: never stored, never answered
            if self.faults and self.rng.random() < 0.005:
                return {"error": {"code": 503, "err_code": 10008, "description": "injected"}}
            if last_seq != len(self.messages):
                return {"error": {"code": 400, "err_code": 10071, "description": "wrong seq"}}
            if last_id and (not self.messages or self.messages[-1][1] != last_id):
                return {"error": {"code": 400, "err_code": 10070, "description": "wrong id"}}
            self.messages.append((subject, msg_id, msgpack.unpackb(payload)))
            self.ids[msg_id] = len(self.messages)
            return {"stream": "CDC", "seq": len(self.messages)}


def parse_hpub(frames: bytes) -> list[tuple[str, bytes, dict[str, bytes], bytes]]:
    out, at = [], 0
    while at < len(frames):
        line_end = frames.index(b"\r\n", at)
        parts = frames[at:line_end].split(b" ")
        assert parts[0] == b"HPUB"
        subject, reply = parts[1].decode(), parts[2] if len(parts) == 5 else b""
        hlen, tlen = int(parts[-2]), int(parts[-1])
        body = frames[line_end + 2 : line_end + 2 + tlen]
        header_lines = body[:hlen].split(b"\r\n")[1:]
        headers = dict(h.split(b": ", 1) for h in header_lines if b": " in h)
        out.append((subject, reply, {k.decode(): v for k, v in headers.items()}, body[hlen:]))
        at = line_end + 2 + tlen + 2
    return out


class FakeWriter:
    """`FrameWriter` over the fake JetStream: PubAcks come back on the loop, some late (so
    out of order)."""

    def __init__(self, jetstream: FakeJetStream, loop: asyncio.AbstractEventLoop) -> None:
        self.jetstream = jetstream
        self.loop = loop
        self.handler: Callable[[bytes, bytes, bytes | None], None] | None = None

    def can_write_now(self) -> bool:
        return True

    def write_now(self, frames: bytes) -> None:
        for subject, reply, headers, payload in parse_hpub(frames):
            answer = self.jetstream.publish(
                subject,
                headers["Nats-Msg-Id"],
                int(headers["Nats-Expected-Last-Sequence"]),
                headers.get("Nats-Expected-Last-Msg-Id", b""),
                payload,
            )
            if reply and answer is not None:
                delay = self.jetstream.rng.random() * 0.004 if self.jetstream.faults else 0
                data = json.dumps(answer).encode()
                self.loop.call_later(delay, self._deliver, reply, data)

    async def write(self, frames: bytes) -> None:
        self.write_now(frames)

    def deliver_inline(
        self, sid: int, handler: Callable[[bytes, bytes, bytes | None], None]
    ) -> None:
        self.handler = handler

    def _deliver(self, reply: bytes, data: bytes) -> None:
        if self.handler is not None:
            self.handler(reply, data, None)


class FakeLink(JetStreamLink):
    fake: FakeWriter | None = None

    def writer(self) -> Any:
        assert self.fake is not None
        return self.fake

    async def close(self) -> None:
        self.closing = True


def run(count: int, seed: int, faults: bool) -> tuple[Walsender, FakeJetStream, int]:
    jetstream = FakeJetStream(random.Random(seed), faults)
    server = Walsender(make_wal(count, seed), jetstream)
    settings = ReplicatorSettings(
        table=["t"], ack_timeout_seconds=0.3, batch_linger_seconds=0.001,
        status_interval_seconds=0.05, max_in_flight_bytes=20_000,
    )  # fmt: skip
    total = sum(len(tx.rows) for tx in server.wal)
    restarts = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:

        async def open_link(settings: Any, stream: str, failure: FailureSignal) -> JetStreamLink:
            link = FakeLink(None, stream, len(jetstream.messages), 1 << 20, "_INBOX.t.", 1)  # type: ignore[arg-type]
            link.fake = FakeWriter(jetstream, asyncio.get_running_loop())
            return link

        pipeline = Pipeline(settings, open_stream=server.open, open_link=open_link)
        try:
            pipeline.start()
            while not pipeline.failure.wait(0.02):
                if len(jetstream.stored_rows()) == total and server.slot >= server.wal[-1].end:
                    return server, jetstream, restarts
                if time.monotonic() > deadline:
                    break
        except TransientError:
            pass
        finally:
            pipeline.stop()
        restarts += 1
    raise AssertionError(
        f"not done after {restarts} restarts: {len(jetstream.stored_rows())} of {total} rows "
        f"stored, slot at {server.slot}"
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("faults", [False, True])
def test_every_change_once_in_order_and_nothing_confirmed_unstored(seed: int, faults: bool) -> None:
    server, jetstream, restarts = run(60, seed, faults)
    rows = [int(data["data"]["id"]) for s, _, data in jetstream.messages if s != COMMITS]
    assert rows == sorted(rows) == list(range(len(rows))), rows[:20]
    # Every transaction's commit record once, after its changes, counting them.
    open_counts: dict[str, int] = {}
    recorded = set()
    for subject, _, data in jetstream.messages:
        if subject == COMMITS:
            assert data["commit_lsn"] not in recorded
            assert open_counts.pop(data["commit_lsn"]) == data["event_count"]
            recorded.add(data["commit_lsn"])
        else:
            assert data["commit_lsn"] not in recorded
            open_counts[data["commit_lsn"]] = open_counts.get(data["commit_lsn"], 0) + 1
    assert recorded and (not open_counts or len(open_counts) == 1)  # the last may be cut
    assert not server.violations, server.violations[:3]
    if not faults:
        assert restarts == 0
