"""JetStream's fast batch publish beside the replicator's chained publishing, on one
nats-server: the same messages (130 bytes, a `Nats-Msg-Id` each, to a file stream), stored
as fast as each way allows; messages/s and nats-server's CPU per message.

- **chained** (the replicator's, services/replicator/publisher.py): every message with
  `Nats-Msg-Id`, `Nats-Expected-Last-Sequence` and `Nats-Expected-Last-Msg-Id`, a run of
  `RUN` in one write and only the last of a run with a reply subject (its PubAck proves the
  run stored), at most `RUNS_AHEAD` runs unacknowledged.
- **fast batch** (nats-server 2.14+, stream `allow_batched`; ADR-50): one batch, every message
  with `Nats-Msg-Id` and the batch's state in its reply subject
  (`<inbox>.<batch>.<flow>.fail.<n>.<op>.$FI`; gap mode `fail` keeps the stream in order
  without gaps), the server acknowledging every `msgs` messages (its flow control, starting at
  the client's `FLOW`); the client keeps at most two of those windows unacknowledged, and the
  last message commits the batch.

Frames are built before the clock starts, so the figures are the server's and the protocol's,
not the client's. Prints figures; asserts nothing.

    python -m bench.fast_batch [--messages 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

import nats

from shared.nats_frames import FrameWriter, hpub
from tests.harness.nats import NatsServer
from tests.harness.processes import cpu_seconds

PAYLOAD = b"x" * 130
RUN = 1000  # the replicator's _ACK_EVERY
RUNS_AHEAD = 8
FLOW = 500  # the most messages between two of the server's flow acks the client allows
WRITE = 1000  # messages per write


async def _create_stream(nc: Any, name: str, subject: str, **config: Any) -> None:
    request = {"name": name, "subjects": [subject], "storage": "file", **config}
    reply = await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(request).encode(), 5)
    answer = json.loads(reply.data)
    if "error" in answer:
        raise SystemExit(f"creating stream {name}: {answer['error']}")


def _fast_frame(subject: bytes, reply: bytes, msg_id: bytes, payload: bytes) -> bytes:
    header = b"NATS/1.0\r\nNats-Msg-Id: %b\r\n\r\n" % msg_id
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
        subject, reply, len(header), len(header) + len(payload), header, payload,
    )  # fmt: skip


async def chained(nc: Any, count: int) -> float:
    """The replicator's way; seconds from the first write to the last PubAck."""
    inbox = nc.new_inbox()
    acked: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ack(msg: Any) -> None:
        acked.put_nowait(msg.data)

    await nc.subscribe(f"{inbox}.*", cb=on_ack)
    runs: list[bytes] = []
    previous = b""
    for start in range(0, count, RUN):
        frames = []
        end = min(count, start + RUN)
        for n in range(start, end):
            msg_id = b"0/%X:%d" % (n // 1000, n % 1000)
            reply = b"%b.%d" % (inbox.encode(), n) if n == end - 1 else b""
            frames.append(hpub(b"chain.t.insert", reply, msg_id, n, PAYLOAD, previous))
            previous = msg_id
        runs.append(b"".join(frames))
    writer = FrameWriter(nc)
    started = time.perf_counter()
    unacked = 0
    for run in runs:
        await writer.write(run)
        unacked += 1
        while unacked >= RUNS_AHEAD:
            _check(await acked.get())
            unacked -= 1
    while unacked:
        _check(await acked.get())
        unacked -= 1
    return time.perf_counter() - started


async def fast(nc: Any, count: int) -> float:
    """One fast batch; seconds from the first write to the commit's PubAck."""
    inbox = nc.new_inbox()
    batch = secrets.token_hex(11)
    acked = 0  # the highest batch sequence the server said it persisted
    window = FLOW
    done = asyncio.get_running_loop().create_future()
    moved = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        nonlocal acked, window
        answer = json.loads(msg.data)
        if answer.get("type") == "ack":
            acked, window = max(acked, answer["seq"]), answer["msgs"]
            moved.set()
        elif "seq" in answer and "type" not in answer:  # the commit's PubAck
            if not done.done():
                done.set_result(answer)
        elif not done.done():
            done.set_exception(SystemExit(f"fast batch refused: {answer}"))

    await nc.subscribe(f"{inbox}.>", cb=on_reply)
    frames = []
    for n in range(1, count + 1):
        op = 0 if n == 1 else 2 if n == count else 1
        reply = b"%b.%b.%d.fail.%d.%d.$FI" % (inbox.encode(), batch.encode(), FLOW, n, op)
        frames.append(_fast_frame(b"fast.t.insert", reply, b"0/%X:%d" % (n // 1000, n % 1000),
                                  PAYLOAD))  # fmt: skip
    writer = FrameWriter(nc)
    started = time.perf_counter()
    for start in range(0, count, WRITE):
        while start - acked > 2 * max(window, 1) and not done.done():
            moved.clear()
            await asyncio.wait_for(moved.wait(), 10)
        await writer.write(b"".join(frames[start : start + WRITE]))
    answer = await asyncio.wait_for(done, 60)
    if answer.get("count") != count:
        raise SystemExit(f"the batch committed {answer.get('count')} of {count}: {answer}")
    return time.perf_counter() - started


def _check(ack: bytes) -> None:
    if b'"error"' in ack:
        raise SystemExit(f"chained run refused: {ack[:200]!r}")


async def _run(url: str, pid: int, way: str, count: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        await _create_stream(nc, way.upper(), f"{way}.>", allow_batched=way == "fast")
        cpu = cpu_seconds(pid)
        seconds = await (chained(nc, count) if way == "chain" else fast(nc, count))
        server_us = (cpu_seconds(pid) - cpu) * 1e6 / count
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{way.upper()}", b"", 5)).data)
        stored = info["state"]["messages"]
        if stored != count:
            raise SystemExit(f"{way}: {stored} of {count} messages stored")
        return {"messages_per_s": round(count / seconds), "server_cpu_us": round(server_us, 2)}
    finally:
        await nc.close()


def measure(count: int, rounds: int = 3) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"chained": [], "fast_batch": []}
    for _ in range(rounds):
        for name, way in (("chained", "chain"), ("fast_batch", "fast")):
            with NatsServer.create() as server:
                assert server.process is not None
                results[name].append(asyncio.run(_run(server.url, server.process.pid, way, count)))
    summary: dict[str, Any] = {"messages": count, "rounds": rounds}
    for name, runs in results.items():
        runs.sort(key=lambda r: r["messages_per_s"])
        median = runs[len(runs) // 2]
        summary[name] = {**median, "runs": [r["messages_per_s"] for r in runs]}
        print(
            f"{name:>10}: {median['messages_per_s']:>9,} messages/s "
            f"[{runs[0]['messages_per_s']:,} to {runs[-1]['messages_per_s']:,}], nats-server "
            f"{median['server_cpu_us']} µs CPU per message",
            flush=True,
        )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fast_batch")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measure(args.messages, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
