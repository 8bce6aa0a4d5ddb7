"""The replicator stopped dead at exact points of its pipeline (shared/failpoints.py) instead
of killed at a guessed moment: right after JetStream acknowledged a batch but before any
status update said so, and right after a batch was written to NATS but before any PubAck.
Restarted, it loses nothing and duplicates nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for


@pytest.mark.parametrize("failpoint", ["reader.after_acked=exit@3", "publisher.after_write=exit@2"])
def test_a_replicator_stopped_dead_at_a_failpoint_loses_and_duplicates_nothing(
    pg: Database, nats_url: str, services: Callable[..., Service], failpoint: str
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    doomed = services("replicator", pg, nats_url, table="t", failpoints=failpoint)
    doomed.wait_healthy()
    for start in range(0, 3000, 100):  # 30 transactions of 100 rows
        pg.execute(
            "INSERT INTO t SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
            (start, start + 99),
        )
    assert doomed.wait(60) == 137, doomed.output()[-2000:]
    assert f"failpoint {failpoint.split('=')[0]}: exit" in doomed.output()

    services("replicator", pg, nats_url, table="t").wait_healthy()

    def ids() -> Counter[int]:
        return Counter(
            event["data"]["id"]
            for subject, _, event in stream_messages(nats_url)
            if subject == "cdc.t.insert"
        )

    wait_for(lambda: len(ids()) == 3000, 60, "all 3000 rows on CDC")
    counts = ids()
    assert sorted(counts) == list(range(3000))
    assert set(counts.values()) == {1}
