"""Where a chunked snapshot is, kept on the INIT stream so that one killed mid-way is continued.

After every range whose chunks JetStream stored, the snapshotter publishes the snapshot's
progress to `init.progress.<table>` (the last message of the subject is the one that counts):
its id and consistent point, the key read through, the next chunk's number, the rows so far,
who is reading it and when it last wrote. A request for a chunked snapshot of the table finds a
running one there: written within `takeover_seconds`, another snapshotter is on it (`busy`:
ask again); older, its reader died, and this request continues it from the recorded key, under
the same id and consistent point, after removing the chunks published after the last record
(their range was not recorded, so it is read again). Nothing recorded is read or sent again.

Each record expects the sequence of the one before it on the subject: a reader whose snapshot
another continued meanwhile (it stalled longer than `takeover_seconds`) has its next record
refused and stops, instead of writing over the other's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from pg_nats_bridge import contract
from services.snapshotter.errors import SnapshotError
from services.snapshotter.parallel import Segment
from shared.wire import pack, unpack

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-last-sequence


@dataclass(frozen=True)
class ChunkedProgress:
    snapshot_id: str
    lsn: str  # the consistent point
    after: tuple[str, ...] | None  # the key read through (as text); None: nothing read yet
    next_chunk: int
    row_count: int
    owner: str  # the snapshotter process reading it
    updated: float  # unix time of this record
    started: int  # unix time the snapshot began
    state: str = "running"  # or stopped (after an error), paused, cancelled, done
    # Read by several readers (services/snapshotter/parallel.py): each segment's key read
    # through, instead of `after`.
    segments: tuple[Segment, ...] | None = None
    # How old a running record must be before another request continues the snapshot: what
    # a waiting requester needs to ask again as soon as that is possible.
    takeover_seconds: float | None = None

    def payload(self) -> bytes:
        return pack({**asdict(self), "after": list(self.after) if self.after else None})

    def msg_id(self) -> str:
        """Unique per record (a duplicate's PubAck would carry the first one's sequence)."""
        return (
            f"{self.snapshot_id}:progress:{self.next_chunk}:{self.owner}:{self.state}:"
            f"{self.updated:.6f}"
        )

    @classmethod
    def read(cls, data: bytes) -> ChunkedProgress | None:
        """The record, or None for anything else (anyone on the account may publish here)."""
        try:
            body: Any = unpack(data)
            after = body["after"]
            segments = body.get("segments")
            return cls(
                snapshot_id=str(body["snapshot_id"]),
                lsn=str(body["lsn"]),
                after=tuple(str(v) for v in after) if after else None,
                next_chunk=int(body["next_chunk"]),
                row_count=int(body["row_count"]),
                owner=str(body["owner"]),
                updated=float(body["updated"]),
                started=int(body["started"]),
                state=str(body["state"]),
                segments=tuple(map(Segment.read, segments)) if segments else None,
                takeover_seconds=(
                    float(body["takeover_seconds"])
                    if body.get("takeover_seconds") is not None
                    else None
                ),
            )
        except Exception:
            return None

    def age(self) -> float:
        return time.time() - self.updated


async def last_progress(
    js: JetStreamContext, stream: str, token: str, prefix: str = contract.INIT
) -> tuple[ChunkedProgress | None, int]:
    """The last record of the table and its stream sequence (0: none; a record that is not
    one of ours reads as None with its sequence)."""
    try:
        msg = await js.get_last_msg(stream, contract.progress_subject(token, prefix))
    except NotFoundError:
        return None, 0
    return ChunkedProgress.read(msg.data or b""), int(msg.seq or 0)


class Recorder:
    """Writes one chunked snapshot's records, each expecting the one before it on the subject
    (`Nats-Expected-Last-Subject-Sequence`): a second writer's record fails, and with it that
    writer's snapshot, instead of both going on."""

    def __init__(self, js: JetStreamContext, token: str, prefix: str, last_seq: int) -> None:
        self.js, self.last_seq = js, last_seq
        self.subject = contract.progress_subject(token, prefix)

    async def write(self, record: ChunkedProgress) -> None:
        headers = {
            "Nats-Msg-Id": record.msg_id(),
            "Nats-Expected-Last-Subject-Sequence": str(self.last_seq),
        }
        try:
            ack = await self.js.publish(self.subject, record.payload(), headers=headers)
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            raise SnapshotError(
                "busy",
                f"the chunked snapshot {record.snapshot_id} was continued by another "
                f"snapshotter ({exc.description}); ask again",
            ) from None
        self.last_seq = int(ack.seq)


async def remove_unrecorded_chunks(
    js: JetStreamContext,
    stream: str,
    schema: str,
    table: str,
    progress: ChunkedProgress,
    prefix: str = contract.INIT,
) -> int:
    """Purge the chunks a dead reader published after its last record (they are contiguous
    from `next_chunk`); how many there were."""
    removed = 0
    while True:
        subject = contract.snapshot_chunk_subject(
            schema, table, progress.snapshot_id, progress.next_chunk + removed, prefix
        )
        try:
            await js.get_last_msg(stream, subject)
        except NotFoundError:
            return removed
        await js.purge_stream(stream, subject=subject)
        removed += 1


async def change_state(
    js: JetStreamContext,
    stream: str,
    token: str,
    wanted: tuple[str, ...],
    state: str,
    prefix: str = contract.INIT,
) -> ChunkedProgress | None:
    """Mark the table's last record `state` when it is in one of the `wanted` states (an
    operator's resume or cancel of a snapshot nobody reads); the record, or None when there
    was none to change (or another snapshotter changed it first)."""
    found, seq = await last_progress(js, stream, token, prefix)
    if found is None or found.state not in wanted:
        return None
    changed = replace(found, state=state, updated=time.time())
    try:
        await Recorder(js, token, prefix, seq).write(changed)
    except SnapshotError:
        return None
    return changed
