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

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from pg_nats_bridge import contract
from pg_nats_bridge.contract import ProgressRecord, read_progress_record
from services.snapshotter.chunk_packing import ChunkBuilder, RangeDone
from services.snapshotter.errors import SnapshotError
from services.snapshotter.ledger import SegmentsDone

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-last-sequence


def new_snapshot_id() -> str:
    """`snap-<unix time>-<random>`: ordered by time, unique within a second."""
    return f"snap-{int(time.time())}-{secrets.token_hex(3)}"


async def last_progress(
    js: JetStreamContext, stream: str, token: str, prefix: str = contract.INIT
) -> tuple[ProgressRecord | None, int]:
    """The last record of the table and its stream sequence (0: none; a record that is not
    one of ours reads as None with its sequence)."""
    try:
        msg = await js.get_last_msg(stream, contract.progress_subject(token, prefix))
    except NotFoundError:
        return None, 0
    return read_progress_record(msg.data), int(msg.seq or 0)


class Recorder:
    """Writes one chunked snapshot's records, each expecting the one before it on the subject
    (`Nats-Expected-Last-Subject-Sequence`): a second writer's record fails, and with it that
    writer's snapshot, instead of both going on."""

    def __init__(self, js: JetStreamContext, token: str, prefix: str, last_seq: int) -> None:
        self.js, self.last_seq = js, last_seq
        self.subject = contract.progress_subject(token, prefix)

    async def write(self, record: ProgressRecord) -> None:
        headers = {
            "Nats-Msg-Id": record.msg_id(),
            "Nats-Expected-Last-Subject-Sequence": str(self.last_seq),
        }
        try:
            ack = await self.js.publish(self.subject, record.encode(), headers=headers)
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
    progress: ProgressRecord,
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
) -> ProgressRecord | None:
    """Mark the table's last record `state` when it is in one of the `wanted` states (an
    operator's resume or cancel of a snapshot nobody reads); the record, or None when there
    was none to change (or another snapshotter changed it first)."""
    found, seq = await last_progress(js, stream, token, prefix)
    if found is None or found.state not in wanted:
        return None
    changed = found.model_copy(update={"state": state, "updated": time.time()})
    try:
        await Recorder(js, token, prefix, seq).write(changed)
    except SnapshotError:
        return None
    return changed


@dataclass(frozen=True)
class ProgressStore:
    """Where a snapshotter's chunked snapshots keep their records, and who it is there."""

    js: JetStreamContext
    stream: str
    prefix: str
    owner: str  # the snapshotter process: `host:pid:random`


class ChunkedRecords:
    """A chunked snapshot's records: a new one, or the unfinished one of a dead reader,
    continued (`previous`)."""

    def __init__(
        self,
        recorder: Recorder,
        previous: ProgressRecord | None,
        owner: str,
        takeover_seconds: float,
    ) -> None:
        self.recorder, self.previous, self.owner = recorder, previous, owner
        self.takeover_seconds = takeover_seconds
        self.snapshot_id = previous.snapshot_id if previous else new_snapshot_id()
        self.started = previous.started if previous else int(time.time())
        self.lsn = previous.lsn if previous else ""
        # Read through (the key, the next chunk's number, the rows): a record's fields.
        self.after = previous.after if previous else None
        self.next_chunk = previous.next_chunk if previous else 0
        self.row_count = previous.row_count if previous else 0
        self.segments = previous.segments if previous else None
        self.shape = previous.shape if previous else None
        self.attempt = f"r{secrets.token_hex(3)}"  # this continuation's, in its chunks' Msg-Ids

    @classmethod
    async def begin(
        cls,
        store: ProgressStore,
        schema: str,
        table: str,
        fresh: bool,
        takeover_seconds: float,
        builder: ChunkBuilder,
    ) -> ChunkedRecords:
        """The records of a new snapshot of the table, or of the unfinished one this request
        continues (its unrecorded chunks removed, `builder` set to go on from its record);
        refused while another snapshotter reads it or an operator paused it."""
        token = contract.table_token(schema, table)
        found, seq = await last_progress(store.js, store.stream, token, store.prefix)
        previous = None
        if found is not None and found.state == "paused" and not fresh:
            raise SnapshotError(
                "paused",
                f"the chunked snapshot {found.snapshot_id} of {schema}.{table} is paused by an "
                f"operator ({found.row_count} rows read): resume it, or ask with "
                '{"fresh": true} for a new one',
            )
        if found is not None and found.state in ("running", "stopped") and not fresh:
            age = found.age(time.time())
            if found.state == "running" and age < takeover_seconds:
                raise SnapshotError(
                    "busy",
                    f"a chunked snapshot of {schema}.{table} ({found.snapshot_id}) is being "
                    f"read by another snapshotter (its last record is {age:.0f} s old); ask "
                    "again",
                )
            previous = found
            removed = await remove_unrecorded_chunks(
                store.js, store.stream, schema, table, found, store.prefix
            )
            builder.chunks, builder.row_count = found.next_chunk, found.row_count
            log.info(
                "continuing the chunked snapshot %s of %s.%s after its reader stopped %.0f s "
                "ago: from chunk %d (%d rows recorded; %d unrecorded chunks removed)",
                found.snapshot_id,
                schema,
                table,
                age,
                found.next_chunk,
                found.row_count,
                removed,
            )
        recorder = Recorder(store.js, token, store.prefix, seq)
        return cls(recorder, previous, store.owner, takeover_seconds)

    def _record(self, state: str = "running") -> ProgressRecord:
        return ProgressRecord(
            snapshot_id=self.snapshot_id,
            lsn=self.lsn,
            after=self.after,
            next_chunk=self.next_chunk,
            row_count=self.row_count,
            owner=self.owner,
            updated=time.time(),
            started=self.started,
            state=state,  # type: ignore[arg-type]
            segments=self.segments,
            takeover_seconds=self.takeover_seconds,
            shape=self.shape,
        )

    async def claim(self, lsn: str, shape: str | None) -> None:
        """This reader's first record: a second claimant's fails."""
        self.lsn, self.shape = lsn, shape
        await self.recorder.write(self._record())

    async def record(self, done: RangeDone | SegmentsDone) -> None:
        if isinstance(done, SegmentsDone):
            self.segments = list(done.segments)
        else:
            self.after = list(done.after)
        self.next_chunk, self.row_count = done.next_chunk, done.row_count
        await self.recorder.write(self._record())

    async def finish(self) -> None:
        """The meta is published: the record says done (if this fails, a later request finds
        nothing more to read and publishes the meta again, which changes nothing)."""
        try:
            await self.recorder.write(self._record("done"))
        except Exception as exc:
            log.warning("snapshot %s: its last progress record: %s", self.snapshot_id, exc)

    async def mark(self, state: str) -> None:
        await self.recorder.write(self._record(state))

    async def stop(self) -> None:
        """The read failed here: any request may continue it at once (best effort: a reader
        that cannot write this is taken over once its last record is old)."""
        if self.lsn:
            with contextlib.suppress(Exception):
                await self.recorder.write(self._record("stopped"))

    def msg_id_suffix(self) -> str:
        """JetStream remembers the Msg-Ids of a dead reader's unrecorded chunks (removed, but
        within the duplicate window): the same number read again needs another."""
        return f":{self.attempt}" if self.previous is not None else ""
