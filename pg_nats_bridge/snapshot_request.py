"""Asking the snapshotters for a snapshot, until one is answered: what every requester (the
follower, `bridge snapshot`) does the same way.

A request is answered once, when the snapshot is complete, by the snapshotter that read it.
If that snapshotter dies the answer never comes, so the requester asks again:
- at once when nobody answers (no snapshotter yet) or the answer is a transient refusal;
- when the snapshotter working on it stops saying so: the request asks for an interim
  message every `heartbeat_seconds` (`Bridge-Heartbeat`), and three missed mean it died;
- for a chunked snapshot, as soon as its progress record (`init.progress.<table>`) says it
  can be continued: its reader's last record is older than the takeover time the record
  carries, or the reader stopped it. The request that follows continues it (same id, `lsn`
  and chunks; only the unrecorded range is read again) rather than starting over;
- otherwise (a snapshotter of an earlier release sends no heartbeats) after `stall_seconds`
  without an answer, a heartbeat or a chunk of the table.

Before asking again, a requester of a whole table's snapshot that saw chunks of one takes
that snapshot's meta if it has been published meanwhile (another requester's request had it
continued, and it is done): the same snapshot it would have joined, not a second one read
again. Its meta says `joined`, as a joined snapshot's does: it began before this request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pg_nats_bridge import contract

log = logging.getLogger("pg_nats_bridge")

# Without a chunk for this long, a chunked snapshot's progress record is looked at (each
# second): while chunks arrive its reader is alive and the record need not be read.
QUIET_SECONDS = 2.0
# After asking again for a continuable snapshot, the record is not acted on again for this
# long: the continuing snapshotter writes a new record first.
REASK_SECONDS = 5.0


class SnapshotRefused(Exception):
    """A refusal the requester gives up on (by default those asking again cannot change,
    `contract.PERMANENT_REFUSALS`)."""

    def __init__(self, reply: contract.SnapshotRefusal) -> None:
        super().__init__(reply.error)
        self.reply = reply


async def ask_for_snapshot(
    nc: Client,
    js: JetStreamContext,
    token: str,
    request: dict[str, Any],
    *,
    table: str,
    request_prefix: str = contract.SNAPSHOT_PREFIX,
    init_stream: str = contract.INIT_STREAM,
    stall_seconds: float = 60.0,
    on_chunk: Callable[[Any], None] | None = None,
    on_foreign: Callable[[str, str], None] | None = None,
    give_up: frozenset[str] = contract.PERMANENT_REFUSALS,
    heartbeat_seconds: float = 5.0,
) -> dict[str, Any]:
    """The meta (the reply's JSON) of the snapshot `request` asks for; `SnapshotRefused` for a
    refusal whose reason is in `give_up`. `on_chunk` sees each chunk message of the table as
    it is published, `on_foreign` (subject, why) each reply that is not the bridge's."""
    body = json.dumps(request).encode()
    chunked = request.get("mode") == "chunked"
    # Another request's snapshot answers only a request for the whole table, not a
    # backfill's subset (`where`) nor one that asks for a new snapshot (`fresh`).
    whole = not request.get("where") and not request.get("fresh")
    inbox = nc.new_inbox()
    replies: asyncio.Queue[Any] = asyncio.Queue()
    seen = {"at": time.monotonic()}  # the last chunk or request
    part_of: set[str] = set()  # the snapshots whose chunks were seen

    async def chunk_arrived(msg: Any) -> None:
        seen["at"] = time.monotonic()
        part_of.add(msg.subject.rsplit(".", 2)[-2])  # init.snap.<token>.<id>.<chunk>
        if on_chunk is not None:
            on_chunk(msg)

    headers = {contract.HEARTBEAT_HEADER: f"{heartbeat_seconds:g}"}
    beat_at: float | None = None  # the last heartbeat; None: none since the last request
    reply_sub = await nc.subscribe(inbox, cb=replies.put)
    chunk_sub = await nc.subscribe(contract.snapshot_chunks_filter(token), cb=chunk_arrived)
    waits = failures = 0
    reasked_at = 0.0
    try:
        while True:
            if waits and part_of and whole:  # asking again: one it saw may be done
                done = await _published(js, init_stream, token, part_of)
                if done is not None:
                    log.info(
                        "snapshot of %s: snapshot %s was completed meanwhile; taking it",
                        table,
                        done["snapshot_id"],
                    )
                    return done
            await nc.publish(
                contract.snapshot_request_subject(token, request_prefix),
                body,
                reply=inbox,
                headers=headers,
            )
            seen["at"], beat_at = time.monotonic(), None
            while time.monotonic() - seen["at"] < stall_seconds:
                try:
                    msg = await asyncio.wait_for(replies.get(), 1.0)
                except TimeoutError:
                    now = time.monotonic()
                    if beat_at is not None and now - beat_at > 3 * heartbeat_seconds:
                        log.warning(
                            "snapshot of %s: its snapshotter stopped answering (no heartbeat "
                            "for %.0f s): it died; asking again",
                            table,
                            now - beat_at,
                        )
                        break
                    if (
                        chunked
                        and now - seen["at"] >= QUIET_SECONDS
                        and now - reasked_at >= REASK_SECONDS
                    ):
                        why = await _continuable(js, init_stream, token)
                        if why is not None:
                            log.warning("snapshot of %s: %s; asking again", table, why)
                            reasked_at = now
                            break
                    continue
                if msg.headers and msg.headers.get("Status") == "503":
                    break  # no responders: no snapshotter is running (yet)
                if msg.headers and msg.headers.get(contract.STATUS_HEADER) == "running":
                    seen["at"] = beat_at = time.monotonic()  # alive, and on it
                    continue
                try:
                    reply = contract.read_snapshot_reply(msg.data)
                except ValueError as exc:
                    if on_foreign is not None:
                        on_foreign(msg.subject, str(exc))
                    continue
                if isinstance(reply, contract.SnapshotMeta):
                    return dict(json.loads(msg.data))
                if reply.reason in give_up:
                    raise SnapshotRefused(reply)
                failures += 1  # said once a minute at most while it lasts (a pause)
                say = log.warning if failures % 12 == 1 else log.debug
                say("snapshot of %s failed: %s; asking again", table, reply.error)
                break
            else:
                log.warning(
                    "snapshot of %s: no reply and no chunk for %.0f s; asking again",
                    table,
                    stall_seconds,
                )
            waits += 1
            if waits % 10 == 1 and not failures:
                log.warning("snapshot of %s: no snapshotter answered yet", table)
            await asyncio.sleep(min(5.0, 0.2 * waits))
    finally:
        await reply_sub.unsubscribe()
        await chunk_sub.unsubscribe()


async def last_meta(js: JetStreamContext, stream: str, token: str) -> dict[str, Any] | None:
    """The table's last snapshot meta in INIT, or None when it has none or the last is not
    the bridge's (anyone on the NATS account can publish there); NATS's errors are the
    caller's."""
    try:
        msg = await js.get_last_msg(stream, contract.meta_subject_of_token(token))
    except NotFoundError:
        return None
    try:
        meta = contract.unpack(msg.data or b"")
        contract.SnapshotMeta.model_validate(meta)  # ValidationError is a ValueError
    except (AttributeError, KeyError, TypeError, ValueError):  # msgpack's errors too
        return None
    return dict(meta)


async def _published(
    js: JetStreamContext, stream: str, token: str, snapshot_ids: set[str]
) -> dict[str, Any] | None:
    """The table's last meta in INIT when it is one of `snapshot_ids`' (marked `joined`), or
    None."""
    try:
        meta = await last_meta(js, stream, token)
    except (nats.errors.Error, TimeoutError):  # looked at again before the next request
        return None
    if meta is None or meta.get("snapshot_id") not in snapshot_ids:
        return None
    return {**meta, "joined": True}


async def _continuable(js: JetStreamContext, stream: str, token: str) -> str | None:
    """Why the table's chunked snapshot can be continued now (its last progress record),
    or None."""
    try:
        msg = await js.get_last_msg(stream, contract.progress_subject(token))
    except NotFoundError:
        return None
    except (nats.errors.Error, TimeoutError):  # looked at again in a second
        return None
    record = contract.read_progress_record(msg.data)
    if record is None:
        return None
    why = record.continuable(time.time())
    return None if why is None else f"snapshot {record.snapshot_id} can be continued: {why}"
