"""The progress record of a chunked snapshot read by several readers (services/snapshotter/
parallel.py, `Ledger`): whatever the interleaving of the readers' chunks, a continuation that
removes the chunks from the recorded cut on and reads each segment again after its recorded
key gets every row exactly once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.snapshotter.ledger import Ledger
from services.snapshotter.segments import Segment


@settings(max_examples=300, deadline=None)
@given(
    ranges=st.lists(  # per reader: each range's chunk count
        st.lists(st.integers(1, 4), min_size=0, max_size=5), min_size=1, max_size=4
    ),
    order=st.randoms(use_true_random=False),
    stop_at=st.floats(0, 1),
)
def test_a_continuation_from_any_record_reads_every_row_once(
    ranges: list[list[int]], order: object, stop_at: float
) -> None:
    readers = len(ranges)
    # Each reader's chunks in order; a range's last chunk is followed by its end.
    streams = []
    for reader, counts in enumerate(ranges):
        events = []
        for number, count in enumerate(counts):
            events += [("chunk", reader, number)] * count + [("end", reader, number)]
        streams.append(events)
    ledger = Ledger([Segment() for _ in range(readers)], 0, 0)
    owner: list[tuple[int, int]] = []  # chunk number → (reader, range)
    positions = [0] * readers
    total = sum(len(s) for s in streams)
    stop = int(stop_at * total)
    record = ledger.record(0)
    for _ in range(stop):
        live = [r for r in range(readers) if positions[r] < len(streams[r])]
        reader = order.choice(live)  # type: ignore[attr-defined]
        kind, _, number = streams[reader][positions[reader]]
        positions[reader] += 1
        if kind == "chunk":
            ledger.chunk(reader, len(owner))
            owner.append((reader, number))
        else:
            ledger.range_done(reader, [str(number)], 10)
            record = ledger.record(len(owner))
    segments, cut, rows = record
    # Kept: the chunks below the cut; re-read: every range after each segment's key.
    kept = {owner[i] for i in range(cut)}
    for reader, segment in enumerate(segments):
        through = -1 if segment.after is None else int(segment.after[0])
        recorded = {(reader, n) for n in range(through + 1)}
        assert {k for k in kept if k[0] == reader} == recorded  # nothing lost, nothing twice
    assert rows == 10 * len(kept)
    # A range's chunks are all kept or all gone.
    for number in {k for k in kept}:
        assert all(owner[i] != number for i in range(cut, len(owner)))
