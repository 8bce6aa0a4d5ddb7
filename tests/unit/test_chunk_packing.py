"""The snapshotter packs chunks by hand, rows already packed
(services/snapshotter/chunk_packing.py): its bytes are exactly `contract.SnapshotChunk`'s
encoding of the same chunk, with and without a row estimate, whatever the rows; and a reader
process's chunk, split and joined again under the snapshot's number, is the chunk the snapshot
would have packed."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pg_nats_bridge import contract
from services.snapshotter.chunk_packing import ChunkBuilder, join_chunk, split_chunk

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(-(2**31), 2**31), max_size=3),
)
rows = st.lists(st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=5), max_size=30)


@given(rows=rows, estimate=st.one_of(st.none(), st.integers(0, 2**40)), first=st.integers(0, 70000))
def test_a_hand_packed_chunk_is_the_contract_models_encoding(
    rows: list[dict[str, Any]], estimate: int | None, first: int
) -> None:
    builder = ChunkBuilder(chunk_size=7, max_payload=1 << 20)
    builder.chunks, builder.estimated_rows = first, estimate
    chunks = builder.add_many([contract.pack(r) for r in rows], ["id"])
    last = builder.finish()
    chunks += [last] if last is not None else []
    assert sum(c.rows for c in chunks) == len(rows)
    for n, chunk in enumerate(chunks):
        model = contract.SnapshotChunk.decode(chunk.payload)
        assert model.chunk == first + n and model.estimated_rows == estimate
        assert model.data == rows[7 * n : 7 * n + 7]
        assert model.encode() == chunk.payload
        entries, body = split_chunk(chunk.payload)
        assert join_chunk(model.chunk, entries, body) == chunk.payload
        # The readers that skip the model's per-row validation read the same.
        assert contract.chunk_rows(chunk.payload) == (model.chunk, model.data)
        header = contract.chunk_header(chunk.payload)
        assert (header.chunk, header.estimated_rows, header.rows) == (
            model.chunk,
            estimate,
            len(model.data),
        )


@given(data=st.binary(max_size=64))
def test_bytes_that_are_no_chunk_are_refused(data: bytes) -> None:
    """What the copy loads is a chunk by the model; the display's header reader (which skips
    an estimate that is no number) fails only with ValueError."""
    try:
        model = contract.SnapshotChunk.decode(data)
    except ValueError:
        model = None
    try:
        contract.chunk_rows(data)
    except ValueError:
        pass
    else:
        assert model is not None, data
    with contextlib.suppress(ValueError):
        contract.chunk_header(data)
