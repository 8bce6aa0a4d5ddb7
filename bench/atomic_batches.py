"""JetStream atomic batch publish against the bridge's way of marking transactions (its
changes, then a commit record, each acknowledged on its own), on one nats-server: transactions
per second for transactions of 1 and of 10 changes, and what a replay of a stored transaction
gets (docs/benchmarks.md, "Transactions on the wire").

Atomic batches (nats-server 2.12+, stream `allow_atomic`): every message carries
`Nats-Batch-Id` and `Nats-Batch-Sequence`, the last `Nats-Batch-Commit: 1`; the server stores
the batch whole or not at all and acknowledges only the commit. nats-py has no API for it, so
both ways are written here on the same raw publishes with reply inboxes, as the replicator's
publisher does, with at most `window` messages (plain) or 50 batches (the server's default
limit of open batches per stream) unacknowledged.

    python -m bench.atomic_batches [--transactions 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import nats
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from tests.harness.nats import NatsServer

WINDOW = 1000  # plain: messages unacknowledged at most
OPEN_BATCHES = 50  # atomic: the server's max_inflight_per_stream default


async def _publisher(nc: Any) -> tuple[str, asyncio.Queue[Any]]:
    inbox = nc.new_inbox()
    acks: asyncio.Queue[Any] = asyncio.Queue()

    async def on_ack(msg: Any) -> None:
        await acks.put(msg.data)

    await nc.subscribe(f"{inbox}.*", cb=on_ack)
    return inbox, acks


async def plain(url: str, transactions: int, changes: int, tag: str) -> dict[str, Any]:
    """Each change and then the commit record, one PubAck each."""
    nc = await nats.connect(url)
    inbox, acks = await _publisher(nc)
    started, pending, errors = time.perf_counter(), 0, 0
    for tx in range(transactions):
        for n in range(changes + 1):
            subject = "cdc.t.insert" if n < changes else "cdc.~commit"
            msg_id = f"{tag}:{tx}:{n if n < changes else 'commit'}"
            headers = {"Nats-Msg-Id": msg_id}
            await nc.publish(subject, b"x" * 120, reply=f"{inbox}.{tx}", headers=headers)
            pending += 1
            while pending >= WINDOW:
                errors += b'"error"' in await acks.get()
                pending -= 1
    while pending:
        errors += b'"error"' in await acks.get()
        pending -= 1
    seconds = time.perf_counter() - started
    await nc.close()
    return {"tx_per_s": round(transactions / seconds), "errors": errors}


async def atomic(url: str, transactions: int, changes: int, tag: str) -> dict[str, Any]:
    """Each transaction one atomic batch: its changes and its commit record, the record
    committing the batch."""
    nc = await nats.connect(url)
    inbox, acks = await _publisher(nc)
    started, open_batches, replies = time.perf_counter(), 0, 0
    errors: list[Any] = []

    async def reply() -> None:
        nonlocal open_batches, replies
        data = await acks.get()
        replies -= 1
        if data.strip():  # the commit's PubAck, or an error: the batch is done
            open_batches -= 1
            if b'"error"' in data:
                errors.append(json.loads(data)["error"])

    for tx in range(transactions):
        batch = f"{tag}-{tx}"
        for n in range(changes + 1):
            last = n == changes
            headers = {
                "Nats-Batch-Id": batch,
                "Nats-Batch-Sequence": str(n + 1),
                "Nats-Msg-Id": f"{tag}:{tx}:{'commit' if last else n}",
            }
            if last:
                headers["Nats-Batch-Commit"] = "1"
            # The first (an empty reply: accepted) and the commit (the PubAck) are requests.
            to = f"{inbox}.{tx}" if n == 0 or last else ""
            subject = "cdc.~commit" if last else "cdc.t.insert"
            await nc.publish(subject, b"x" * 120, reply=to, headers=headers)
            replies += bool(to)
        open_batches += 1
        while open_batches >= OPEN_BATCHES:
            await reply()
    while replies:
        await reply()
    seconds = time.perf_counter() - started
    await nc.close()
    return {"tx_per_s": round(transactions / seconds), "errors": len(errors), "first": errors[:1]}


async def _stream(url: str, storage: str = "file") -> None:
    """A fresh CDC stream that takes atomic batches, stored as the bridge's is (file) or in
    memory."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream("CDC")
    await js.add_stream(
        StreamConfig(
            name="CDC", subjects=["cdc.>"], allow_atomic=True, storage=StorageType(storage)
        )
    )
    await nc.close()


def measure(transactions: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with NatsServer.create() as server:
        for changes in (1, 10):
            n = transactions if changes == 1 else transactions // 5
            asyncio.run(_stream(server.url))
            results[f"plain_{changes}"] = asyncio.run(plain(server.url, n, changes, "p"))
            asyncio.run(_stream(server.url))
            results[f"atomic_{changes}"] = asyncio.run(atomic(server.url, n, changes, "a"))
            # A replay of what was stored (a replicator restarted after JetStream stored a
            # transaction it had not heard back about yet): the same Msg-Ids again.
            results[f"atomic_{changes}_replayed"] = asyncio.run(
                atomic(server.url, min(n, 200), changes, "a")
            )
            asyncio.run(_stream(server.url, "memory"))
            results[f"atomic_{changes}_memory"] = asyncio.run(
                atomic(server.url, n // 10, changes, "m")
            )
            print(
                f"{changes:>2} change(s) a transaction: plain (changes + commit record) "
                f"{results[f'plain_{changes}']['tx_per_s']:,} tx/s, atomic batch "
                f"{results[f'atomic_{changes}']['tx_per_s']:,} tx/s "
                f"({results[f'atomic_{changes}']['errors']} errors; on a memory stream "
                f"{results[f'atomic_{changes}_memory']['tx_per_s']:,} tx/s); a replay of stored "
                f"batches: {results[f'atomic_{changes}_replayed']['errors']} of "
                f"{min(n, 200)} refused {results[f'atomic_{changes}_replayed']['first']}",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.atomic_batches")
    parser.add_argument("--transactions", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(measure(args.transactions), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
