"""Which chunks belong to which reader's ranges in a parallel chunked snapshot, for progress
records a continuation can trust: chunks of several readers interleave, so a record holds each
segment's key read through, and `next_chunk` is the cut below which every chunk belongs to a
finished and recorded range (`Ledger.cut`). A continuation removes the chunks from the cut on
and reads each segment again from its recorded key, so no row is sent twice."""

from __future__ import annotations

from dataclasses import dataclass

from services.snapshotter.segments import Segment


class Ledger:
    """Which chunks belong to which reader's ranges, for records a continuation can trust."""

    def __init__(self, segments: list[Segment], next_chunk: int, row_count: int) -> None:
        self.segments = segments
        self.base_rows = row_count
        self.ranges: list[list[tuple[int, int, list[str], int]]] = [[] for _ in segments]
        self.open: list[tuple[int, int] | None] = [None for _ in segments]
        self.finished = [s.done for s in segments]

    def chunk(self, reader: int, index: int) -> None:
        first = self.open[reader]
        self.open[reader] = (index if first is None else first[0], index)

    def range_done(self, reader: int, after: list[str], rows: int) -> None:
        span = self.open[reader]
        assert span is not None, "a range without a chunk"
        self.ranges[reader].append((span[0], span[1], after, rows))
        self.open[reader] = None

    def cut(self, published: int) -> int:
        """The highest number below which every chunk is in a finished range that lies
        entirely below it."""
        cut = published
        while True:
            low = cut
            for reader, ranges in enumerate(self.ranges):
                span = self.open[reader]
                if span is not None:
                    low = min(low, span[0])
                for first, last, _, _ in ranges:
                    if last >= cut:
                        low = min(low, first)
            if low == cut:
                return cut
            cut = low

    def record(self, published: int) -> tuple[list[Segment], int, int]:
        """The segments as read through the cut, the cut, and the rows below it."""
        cut = self.cut(published)
        rows = self.base_rows
        segments = []
        for reader, segment in enumerate(self.segments):
            after, whole = segment.after, self.open[reader] is None
            for _, last, through, count in self.ranges[reader]:
                if last < cut:
                    after, rows = through, rows + count
                else:
                    whole = False
            done = self.finished[reader] and whole
            segments.append(Segment(start=segment.start, end=segment.end, after=after, done=done))
        return segments, cut, rows


@dataclass(frozen=True)
class SegmentsDone:
    """Handed to the publisher in line with the chunks: record this (chunked mode)."""

    segments: list[Segment]
    next_chunk: int
    row_count: int
