"""The follower's position rules, as pure functions of what the CDC stream says of itself
(its first and last sequence, what it lost, when it was created, its oldest event): whether a
copy can resume at a sequence, and whether a snapshot's changes are all still in the stream.
No I/O here: `TableFollower` reads the stream and asks these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pg_nats_bridge.lsn import Lsn


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What the CDC stream said of itself: its name, first and last sequence, how many
    messages it deleted from between, when it was created, and its oldest message's commit
    LSN (None when it is empty; `""` when that message is not a CDC event)."""

    name: str
    first_seq: int
    last_seq: int
    num_deleted: int = 0
    created: datetime | None = None
    oldest_lsn: str | None = None


def stream_lacks(stream: StreamFacts, seq: int) -> str | None:
    """Why the stream cannot give a copy every message after `seq`, or None: it is not the
    same stream (a recreated one starts its sequences again), or retention removed some (a
    consumer starting after them would skip them silently)."""
    if stream.last_seq < seq:
        return (
            f"stream {stream.name} ends at sequence {stream.last_seq}, before the copy's "
            f"{seq}: the stream was recreated"
        )
    if stream.first_seq > seq + 1:
        return (
            f"stream {stream.name} no longer holds sequence {seq + 1} (its oldest is "
            f"{stream.first_seq}): retention removed changes the copy has not applied"
        )
    return None


def covered(stream: StreamFacts, lsn: str, began: float | None) -> tuple[int | None, str]:
    """The sequence to read from for every change committed at or after a snapshot's `lsn`
    when the stream provably holds them all, else None; and what was compared, for the log.
    Proof is either of:
    - its oldest event committed below `lsn`: every later one is after it;
    - it never lost an event (nothing removed from its head or between: its first sequence
      is 1) and it was created before the snapshot `began`: every change committed at or
      after `lsn` was published after that, so into this stream."""
    first_seq = stream.first_seq
    oldest = stream.oldest_lsn
    if oldest is None:
        compared = f"it is empty (its next sequence is {stream.last_seq + 1})"
    elif not oldest:
        compared = f"its oldest message (sequence {first_seq}) is not a CDC event"
    elif Lsn.parse(oldest) < Lsn.parse(lsn):
        return first_seq, (
            f"stream {stream.name}'s oldest event (sequence {first_seq}) committed at "
            f"{oldest}, below the snapshot's lsn {lsn}"
        )
    else:
        compared = (
            f"its oldest event (sequence {first_seq}) committed at {oldest}, not below the "
            f"snapshot's lsn {lsn}"
        )
    created = stream.created.timestamp() if stream.created is not None else None
    lost_nothing = first_seq <= 1 and not stream.num_deleted
    if lost_nothing and created is not None and began:
        if created <= began:
            return max(first_seq, 1), (
                f"stream {stream.name}: {compared}, but it has lost no event since it was "
                f"created ({stream.created:%Y-%m-%d %H:%M:%S} UTC), before the snapshot began"
            )
        compared += ", and it was created after the snapshot began"
    elif not lost_nothing:
        compared += f", and it no longer holds sequences before {first_seq}"
    return None, f"stream {stream.name}: {compared}"
