"""Partial backfills (docs/wire-format.md, "Partial backfills"): a snapshot request with `where`
conditions re-reads the matching rows; a live copy takes them in while it follows, and ends
equal to the table with writes going on throughout.

The conditions come from anyone on the NATS account: each bad one is refused with the reason,
nothing of it reaches SQL as text, and a condition cannot name a column the publication
leaves out.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.copies import Writer, bridge, make_tables, start_replica
from tests.harness.postgres import Database
from tests.harness.services import Service, ask_all, stream_messages, wait_for
from tests.harness.streams import request


def test_a_backfill_repairs_a_live_copy_under_writes(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """A replica whose rows with id ≤ 1000 were damaged by hand (deleted, or their score and
    big text changed) is restarted with `--backfill items --where 'id <= 1000'` while the
    writer goes on: the backfill replaces those rows, the changes after the copy's position
    replay over them, and verify finds the copy equal. The backfill's meta is on its own
    subject: the table's last complete snapshot is still the one a new consumer loads."""
    make_tables(pg)
    replicator = services("replicator", pg, nats_url, table="items").wait_healthy()
    services("snapshotter", pg, nats_url, table="items").wait_healthy()
    path = tmp_path / "copy.db"
    env = replicator.env
    log = tmp_path / "replica.log"
    with Writer(pg.url, seed=21) as writer:
        replica = start_replica(env, path, log, "items")
        wait_for(lambda: "applied" in replica.output(), 60, "the replica to follow", replica)
        time.sleep(1)
        assert replica.terminate() == 0
        with sqlite3.connect(path) as copy:  # the damage a backfill is for
            copy.execute('DELETE FROM "public.items" WHERE id <= 300')
            copy.execute(
                "UPDATE \"public.items\" SET score = -1, big = 'x' WHERE id > 700 AND id <= 1000"
            )
        damaged = bridge("verify", "items", "--sqlite", str(path), env=env)
        assert damaged.returncode != 0, damaged.stdout  # the damage is seen before
        before = writer.transactions
        backfill = ["--backfill", "items", "--where", "id <= 1000"]
        replica = start_replica(env, path, log, "items", extra=backfill)
        wait_for(lambda: "backfill snap-" in replica.output(), 60, "the backfill", replica)
        wait_for(lambda: writer.transactions > before + 300, 60, "writes after the backfill")
    wait_for(lambda: "caught up" in replica.output().rsplit("backfill", 1)[-1], 30, "catch-up")
    assert replica.terminate() == 0
    result = bridge("verify", "items", "--sqlite", str(path), env=env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr

    init = stream_messages(nats_url, "INIT")
    (backfill,) = [m for s, _, m in init if s == "init.backfill.items"]
    assert backfill["partial"] is True, backfill
    assert backfill["where"] == [{"column": "id", "op": "<=", "value": "1000"}], backfill
    full = [m for s, _, m in init if s == "init.meta.items"]
    assert full and not any(m.get("partial") for m in full), full
    prefix = f"init.snap.items.{backfill['snapshot_id']}."
    rows = [r for s, _, c in init if s.startswith(prefix) for r in c["data"]]
    assert len(rows) == backfill["row_count"] > 900, backfill
    assert all(r["id"] <= 1000 for r in rows)


def test_backfill_conditions_that_are_not_one_are_refused_and_reach_no_sql(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """Unknown and unpublished columns, values the column's type does not take, operators the
    type has not, SQL in names and values, too many conditions: each refused with its reason;
    a value is only ever a value. A flood of backfills gets answers (some `busy`), and the
    snapshotter stays healthy."""
    pg.execute(
        "CREATE TABLE people (id int PRIMARY KEY, name text, secret text, doc json,"
        " born timestamptz);"
        "INSERT INTO people SELECT g, 'p' || g, 's' || g, '{}', '2026-01-01'::timestamptz"
        " + g * interval '1 day' FROM generate_series(1, 400) g"
    )
    settings = {"table": "people(id,name,doc,born)", "snapshot_transaction_seconds": 0.01}
    services("replicator", pg, nats_url, **settings).wait_healthy()
    snapshotter = services("snapshotter", pg, nats_url, **settings).wait_healthy()

    def backfill(*where: dict[str, Any], mode: str = "exported") -> dict[str, Any]:
        body = json.dumps({"where": list(where), "mode": mode}).encode()
        return request(nats_url, "people", body)

    refused = {
        "unknown column": {"column": "nope", "op": "=", "value": 1},
        "unpublished column": {"column": "secret", "op": "=", "value": "s1"},
        "SQL as a column": {"column": 'id" OR 1=1 --', "op": "=", "value": 1},
        "not a timestamp": {"column": "born", "op": ">=", "value": "yesterday-ish"},
        "not an integer": {"column": "id", "op": "<", "value": "1 OR 1=1"},
        "json has no <": {"column": "doc", "op": "<", "value": "{}"},
        "unknown operator": {"column": "id", "op": "LIKE", "value": "1"},
        "no value": {"column": "id", "op": ">"},
    }
    for what, condition in refused.items():
        reply = backfill(condition)
        assert reply.get("reason") == "bad_request", (what, reply)
        print(f"{what}: {reply['error'][:140]}")
    nine = [{"column": "id", "op": ">", "value": i} for i in range(9)]
    assert backfill(*nine).get("reason") == "bad_request"

    # A value is a value: SQL in it matches no name, and the table is still there.
    reply = backfill({"column": "name", "op": "=", "value": "x'; DROP TABLE people; --"})
    assert reply["row_count"] == 0 and reply["partial"] is True, reply
    assert pg.execute("SELECT count(*) FROM people")[0][0] == 400

    for mode in ("exported", "chunked"):
        reply = backfill(
            {"column": "born", "op": ">=", "value": "2026-03-01"},
            {"column": "id", "op": "<=", "value": 300},
            mode=mode,
        )
        assert reply["row_count"] == 300 - 59 + 1, (mode, reply)  # ids 59..300
        init = stream_messages(nats_url, "INIT")
        prefix = f"init.snap.people.{reply['snapshot_id']}."
        rows = [r for s, _, c in init if s.startswith(prefix) for r in c["data"]]
        assert sorted(r["id"] for r in rows) == list(range(59, 301)), mode
        assert set(rows[0]) == {"id", "name", "doc", "born"}, rows[0]  # never `secret`

    # The command line's form; a condition it cannot read is refused before anything is sent.
    shown = bridge("snapshot", "people", "--where", "id <= 10", "--where", "name is not null",
                   env=snapshotter.env)  # fmt: skip
    assert shown.returncode == 0 and "backfill of people" in shown.stdout, shown.stdout
    assert "row_count" in shown.stdout and " 10 " in shown.stdout, shown.stdout
    wrong = bridge("snapshot", "people", "--where", "id ~ 3", env=snapshotter.env)
    assert wrong.returncode == 2 and "is not `COLUMN OP VALUE`" in wrong.stdout, wrong.stdout

    bodies = [
        json.dumps({"where": [{"column": "id", "op": ">", "value": i}]}).encode() for i in range(40)
    ]
    answers = ask_all(nats_url, "bridge.snapshot.people", bodies)
    reasons = [a.get("reason", "ok") for a in answers]
    print({r: reasons.count(r) for r in set(reasons)})
    assert set(reasons) <= {"ok", "busy"} and "ok" in reasons, reasons
    for body, answer in zip(bodies, answers, strict=True):
        if "error" not in answer:
            low = json.loads(body)["where"][0]["value"]
            assert answer["row_count"] == 400 - low, (low, answer)
    assert snapshotter.health() == 200
    assert not [s for s, _, _ in stream_messages(nats_url, "INIT") if s == "init.meta.people"]
