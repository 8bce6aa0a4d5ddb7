"""Bootstrap a table from the bridge: a snapshot, then CDC events from the snapshot's LSN.

    python -m examples.consumer nats://localhost:4222 users

Prints the table's rows (keyed by primary key) after applying every change since the
snapshot, then keeps following changes until interrupted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import msgpack
import nats
from nats.js.api import DeliverPolicy

from shared.lsn import Lsn  # or parse "X/Y" yourself: (int(X, 16) << 32) | int(Y, 16)

Rows = dict[tuple[Any, ...], dict[str, Any]]


async def load_snapshot(js: Any, nc: Any, table: str, key: list[str]) -> tuple[Rows, Lsn]:
    """Ask for a snapshot, then read its chunks from the INIT stream."""
    reply = json.loads((await nc.request(f"bridge.snapshot.{table}", b"", timeout=600)).data)
    if "error" in reply:
        raise RuntimeError(reply["error"])
    rows: Rows = {}
    sub = await js.subscribe(f"init.snap.{table}.{reply['snapshot_id']}.*", ordered_consumer=True)
    for _ in range(reply["batch_count"]):
        chunk = msgpack.unpackb((await sub.next_msg(timeout=30)).data, raw=False)
        for row in chunk["data"]:
            rows[tuple(row[k] for k in key)] = row
    await sub.unsubscribe()
    return rows, Lsn.parse(reply["lsn"])


def apply(rows: Rows, event: dict[str, Any], key: list[str], since: Lsn) -> None:
    """Apply one CDC event if its transaction committed at or after the snapshot's LSN."""
    if Lsn.parse(event["commit_lsn"]) < since:
        return  # already in the snapshot
    op = event["operation"]
    if op == "truncate":
        rows.clear()
        return
    if event["old"]:  # delete, or an update that changed the key
        old = rows.pop(tuple(event["old"][k] for k in key), {})
    else:
        old = rows.get(tuple(event["data"][k] for k in key), {})
    if op in ("insert", "update"):
        # Unchanged TOASTed columns are not sent: keep the value we have.
        data = {**{c: old.get(c) for c in event["unchanged"]}, **event["data"]}
        rows[tuple(data[k] for k in key)] = data


async def bootstrap(url: str, table: str, key: list[str], follow_seconds: float = 0) -> Rows:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        # Subscribe to CDC first, so nothing committed during the snapshot is missed.
        cdc = await js.subscribe(
            f"cdc.{table}.*", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        rows, since = await load_snapshot(js, nc, table, key)
        deadline = asyncio.get_running_loop().time() + follow_seconds
        while True:
            timeout = max(0.5, deadline - asyncio.get_running_loop().time())
            try:
                msg = await cdc.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                if asyncio.get_running_loop().time() >= deadline:
                    return rows
                continue
            apply(rows, msgpack.unpackb(msg.data, raw=False), key, since)
    finally:
        await nc.close()


if __name__ == "__main__":
    url, table = sys.argv[1], sys.argv[2]
    key = sys.argv[3].split(",") if len(sys.argv) > 3 else ["id"]
    for _, row in sorted(asyncio.run(bootstrap(url, table, key, follow_seconds=5)).items()):
        print(row)
