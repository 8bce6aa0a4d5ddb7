"""Keep a table in memory with the consumer library: a snapshot, then every change after it.

    python -m examples.consumer nats://localhost:4222 users

Prints the table's rows once the copy has caught up, then the count after each batch of
changes, until interrupted. `bridge replica` does the same into a SQLite file.
"""

from __future__ import annotations

import asyncio
import sys

import nats

from pg_nats_bridge import CaughtUp, MemoryCopy, TableFollower


async def follow(url: str, table: str, seconds: float | None = None) -> MemoryCopy:
    """Follow `table`; with `seconds`, return the copy at the first catch-up after that."""
    nc = await nats.connect(url)
    copy = MemoryCopy()
    printed = False
    deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
    try:
        # The follower subscribes to CDC before the snapshot, loads it, skips what it holds,
        # and applies the wire-format rules; the copy only applies what it is given.
        async for item in TableFollower(nc, [table]):
            copy.apply(item)
            if isinstance(item, CaughtUp):
                if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                    return copy
                if not printed:
                    for row in copy.tables[copy_name(table)]:
                        print(row)
                    printed = True
    finally:
        await nc.close()
    return copy


def copy_name(table: str) -> str:
    return table if "." in table else f"public.{table}"


if __name__ == "__main__":
    asyncio.run(follow(sys.argv[1], sys.argv[2]))
