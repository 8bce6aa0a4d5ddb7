"""Benchmark: what idling between batches costs the same code on this machine.

The replicator's decoder (`EventBuilder`) decodes the same single-row transactions twice, in
batches of 60 events (what a 10 ms linger gathers at 5k tx/s): back to back, then with the
process asleep 10 ms before each batch, as it is when following live traffic. Only the
decoding is timed (thread CPU time), so the ratio is the machine's: caches and branch
predictors lost while the process slept (other processes ran, or the VM's vCPU was
descheduled). It is the floor under the live figure's "x the drain's", measured in the same
run. Prints figures; asserts nothing.

    python -m bench.cold_factor
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from typing import Any

from services.replicator.events import EventBuilder
from shared.codec import ValueMode

_BATCH_EVENTS = 60
_SLEEP = 0.010


def _frames(transactions: int) -> list[bytes]:
    def xlog(lsn: int, payload: bytes) -> bytes:
        return b"w" + struct.pack("!QQQ", lsn, lsn, 0) + payload

    def cstr(text: str) -> bytes:
        return text.encode() + b"\0"

    def column(flags: int, name: str, oid: int) -> bytes:
        return bytes([flags]) + cstr(name) + struct.pack("!Ii", oid, -1)

    relation = (
        b"R" + struct.pack("!I", 16384) + cstr("public") + cstr("live") + b"d"
        + struct.pack("!h", 3) + column(1, "id", 20) + column(0, "n", 23)
        + column(0, "note", 25)
    )  # fmt: skip
    frames = [xlog(1000, relation)]
    lsn, at = 0x1000000, 800_000_000_000_000
    for i in range(transactions):
        values = [str(i).encode(), str(i % 1000).encode(), b"x"]
        row = struct.pack("!h", len(values)) + b"".join(
            b"t" + struct.pack("!i", len(v)) + v for v in values
        )
        frames.append(xlog(lsn, b"B" + struct.pack("!QqI", lsn + 100, at + i, 1000 + i)))
        frames.append(xlog(lsn, b"I" + struct.pack("!I", 16384) + b"N" + row))
        frames.append(xlog(lsn + 100, b"C" + struct.pack("!bQQq", 0, lsn + 100, lsn + 150, at + i)))
        lsn += 200
    return frames


def _decode(frames: list[bytes], sleep: float) -> float:
    """CPU µs per event, decoding `frames` in batches, asleep `sleep` s before each."""
    builder = EventBuilder(ValueMode.TYPED, 1 << 20)
    out: list[Any] = []
    builder.feed(frames[0], out)
    body, step = frames[1:], 3 * _BATCH_EVENTS
    cpu = 0.0
    for start in range(0, len(body), step):
        if sleep:
            time.sleep(sleep)
        began = time.thread_time()
        for frame in body[start : start + step]:
            builder.feed(frame, out)
        cpu += time.thread_time() - began
        out.clear()
    return cpu * 1e6 / (len(body) // 3)


def measure(transactions: int = 30_000, rounds: int = 3) -> dict[str, Any]:
    frames = _frames(transactions)
    warm, cold = [], []
    for _ in range(rounds):
        warm.append(_decode(frames, 0))
        cold.append(_decode(frames, _SLEEP))
    w, c = statistics.median(warm), statistics.median(cold)
    print(
        f"decoding {transactions:,} events in batches of {_BATCH_EVENTS}, median of {rounds}: "
        f"back to back {w:.2f} µs/event, {_SLEEP * 1000:.0f} ms asleep before each batch "
        f"{c:.2f} µs/event: factor {c / w:.2f}",
        flush=True,
    )
    return {
        "batch_events": _BATCH_EVENTS,
        "sleep_ms": _SLEEP * 1000,
        "back_to_back_us_per_event": round(w, 2),
        "after_sleep_us_per_event": round(c, 2),
        "factor": round(c / w, 2),
    }


def main() -> int:
    measure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
