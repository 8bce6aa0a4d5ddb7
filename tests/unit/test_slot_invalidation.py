"""What the replicator says when PostgreSQL refuses a slot it invalidated: the cause named by
PostgreSQL's own reason, and what to do (services/replicator/errors.py)."""

from __future__ import annotations

import pytest

from services.replicator.errors import explain


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (
            'can no longer access replication slot "bridge_slot"\nDETAIL: This replication '
            'slot has been invalidated due to "rows_removed".',
            "hot_standby_feedback",
        ),
        (
            'can no longer access replication slot "bridge_slot"\nDETAIL: This replication '
            'slot has been invalidated due to "wal_level_insufficient".',
            "wal_level was lowered",
        ),
        (
            'can no longer get changes from replication slot "bridge_slot"',
            "max_slot_wal_keep_size",
        ),
    ],
)
def test_an_invalidated_slot_is_explained_by_its_cause(text: str, cause: str) -> None:
    said = explain(RuntimeError(text))
    assert cause in said and "pg_drop_replication_slot" in said and "re-snapshot" in said
