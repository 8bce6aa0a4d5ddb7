"""MemoryCopy's handling of what is not a row change (pg_nats_bridge/memory.py); its
transactions are tested with the follower's (test_replay_window.py, test_apply_error.py)."""

from __future__ import annotations

from pg_nats_bridge import MemoryCopy
from pg_nats_bridge.changes import Bootstrapped, Reset, Rows, TableFailed, TableSchema

T = "public.t"


def schema(columns: list[str]) -> TableSchema:
    return TableSchema.from_document(
        {
            "schema": T,
            "columns": [{"name": c, "data_type": "text"} for c in columns],
            "primary_key": ["id"],
        }
    )


def test_a_table_gone_from_the_publication_is_dropped_and_read_again_later() -> None:
    """Dropped, renamed or taken out of the publication: the copy no longer holds a table
    PostgreSQL does not publish, and says why; loaded again, it is a table like before."""
    copy = MemoryCopy()
    copy.apply_all(
        [
            Reset(T, schema(["id"]), {"snapshot_id": "s", "lsn": "0/1"}),
            Rows(T, [{"id": "1"}]),
            Bootstrapped({"seq": 0, "snapshots": {T: "0/1"}, "stream": "CDC"}),
        ]
    )
    copy.apply(TableFailed(T, "dropped at 0/5", dropped=True))
    assert T not in copy.tables and copy.left_out == {T: "dropped at 0/5"}
    copy.apply_all(
        [
            Reset(T, schema(["id", "n"]), {"snapshot_id": "s2", "lsn": "0/9"}),
            Rows(T, [{"id": "2", "n": "x"}]),
            Bootstrapped({"seq": 9, "snapshots": {T: "0/9"}, "stream": "CDC"}),
        ]
    )
    assert copy.tables[T] == [{"id": "2", "n": "x"}] and copy.left_out == {}
