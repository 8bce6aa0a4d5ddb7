"""pg_nats_bridge.position, through `TableFollower._covered` and directly: whether the CDC
stream holds every change after a snapshot's `lsn` (a snapshot the copy joined, a continued
one, one reused from INIT). It must refuse only when the stream may really lack one: a stream
that lost nothing since before the snapshot began covers it even when its oldest event is
newer than the `lsn` (the false refusal that made a copy throw away a continued snapshot and
read the table again); and a copy resumes only where the stream still holds its next
sequence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from nats.js.api import StreamState

from pg_nats_bridge import TableFollower
from pg_nats_bridge.position import StreamFacts, covered, stream_lacks

BEGAN = 1_800_000_000  # the snapshot began (unix time)


class Stream:
    """What `_covered` reads of the CDC stream: its info and its oldest message."""

    def __init__(
        self, first_seq: int, last_seq: int, oldest: str | None, created: float, deleted: int = 0
    ) -> None:
        self.state = StreamState(
            messages=last_seq - first_seq + 1 if oldest else 0,
            bytes=0,
            first_seq=first_seq,
            last_seq=last_seq,
            consumer_count=0,
            num_deleted=deleted,
        )
        self.oldest, self.created = oldest, datetime.fromtimestamp(created, UTC)

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(state=self.state, created=self.created)

    async def get_msg(self, name: str, seq: int) -> Any:
        assert seq == self.state.first_seq
        return SimpleNamespace(data=msgpack.packb({"commit_lsn": self.oldest}))


class NoConnection:
    def __init__(self, js: Stream) -> None:
        self.js = js

    def jetstream(self) -> Any:
        return self.js


def covered_via_follower(stream: Stream, lsn: str = "0/5000") -> tuple[int | None, str]:
    follower = TableFollower(NoConnection(stream), ["big"])  # type: ignore[arg-type]
    return asyncio.run(follower._covered(lsn, BEGAN))


def test_a_stream_that_lost_nothing_since_before_the_snapshot_covers_it() -> None:
    # Writes began after the snapshot's consistent point: every event is newer than its lsn.
    start, why = covered_via_follower(Stream(1, 900, "0/6000", created=BEGAN - 3600))
    assert start == 1, why
    assert "lost no event since it was created" in why


def test_an_empty_stream_that_lost_nothing_covers_it() -> None:
    start, why = covered_via_follower(Stream(0, 0, None, created=BEGAN - 60))
    assert start == 1, why


def test_an_oldest_event_below_the_lsn_covers_it() -> None:
    start, why = covered_via_follower(Stream(700, 900, "0/4000", created=BEGAN + 60))
    assert start == 700 and "sequence 700" in why and "0/4000" in why, why


@pytest.mark.parametrize(
    ("stream", "said"),
    [
        # Retention removed its head: the events right after the lsn may be gone.
        (Stream(700, 900, "0/6000", created=BEGAN - 3600), "no longer holds sequences before 700"),
        (Stream(901, 900, None, created=BEGAN - 3600), "no longer holds sequences before 901"),
        # An operator deleted messages.
        (Stream(1, 900, "0/6000", created=BEGAN - 3600, deleted=3), "no longer holds"),
        # Recreated after the snapshot began: what was published before is elsewhere.
        (Stream(1, 900, "0/6000", created=BEGAN + 5), "created after the snapshot began"),
    ],
)
def test_a_stream_that_may_lack_a_change_after_the_lsn_does_not(stream: Stream, said: str) -> None:
    start, why = covered_via_follower(stream)
    assert start is None, why
    assert said in why, why


def test_a_copy_resumes_only_where_the_stream_still_holds_the_next_sequence() -> None:
    stream = StreamFacts("CDC", first_seq=100, last_seq=500)
    assert stream_lacks(stream, 99) is None  # the next, 100, is the oldest held
    assert stream_lacks(stream, 500) is None  # caught up
    lost = stream_lacks(stream, 98)
    assert lost is not None and "no longer holds sequence 99 (its oldest is 100)" in lost
    recreated = stream_lacks(stream, 501)
    assert recreated is not None and "the stream was recreated" in recreated


def test_coverage_by_the_pure_rule_says_what_it_compared() -> None:
    created = datetime.fromtimestamp(BEGAN - 10, UTC)
    below = StreamFacts("CDC", 5, 9, created=created, oldest_lsn="0/10")
    assert covered(below, "0/20", BEGAN) == (
        5,
        "stream CDC's oldest event (sequence 5) committed at 0/10, below the snapshot's lsn 0/20",
    )
    foreign = StreamFacts("CDC", 1, 9, created=created, oldest_lsn="")
    start, why = covered(foreign, "0/20", BEGAN)
    assert start == 1 and "is not a CDC event, but it has lost no event" in why
    start, why = covered(foreign, "0/20", None)  # when the snapshot began is unknown
    assert start is None and "is not a CDC event" in why
