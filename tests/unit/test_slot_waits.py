"""The log line that names whom a slot's creation waits for (shared/slot_waits.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.slot_waits import describe


def test_names_each_session_with_what_the_role_may_see() -> None:
    since = datetime(2026, 12, 1, 13, 40, 2, tzinfo=UTC)
    line = describe(
        "the first start (slot s)",
        [
            (101, "app", "psql", "idle in transaction", since),
            # Another role's session, seen without pg_read_all_stats: no state, no start.
            (102, "etl", "", None, None),
        ],
    )
    assert line.startswith("the first start (slot s) waits for 2 transaction(s) open when it")
    assert (
        "pid 101 (user app, application 'psql', idle in transaction since 2026-12-01 13:40:02"
        " UTC); pid 102 (user etl)." in line
    )
    assert "pg_terminate_backend(pid)" in line
