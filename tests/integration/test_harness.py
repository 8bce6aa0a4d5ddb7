"""The fixtures keep their promises: private servers, isolation, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.harness.nats import NatsServer
from tests.harness.postgres import Database, PostgresServer


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_postgres_is_logical_and_not_root(pg: Database, pg_server: Any) -> None:
    assert pg.execute("SHOW wal_level") == [("logical",)]
    if os.geteuid() == 0 and isinstance(pg_server, PostgresServer):
        assert pg_server.process is not None
        assert _uid_of(pg_server.process.pid) != 0


def test_each_test_gets_an_empty_database_1(pg: Database) -> None:
    assert pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    pg.execute("CREATE TABLE leftover (id int)")


def test_each_test_gets_an_empty_database_2(pg: Database) -> None:
    assert pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    pg.execute("CREATE TABLE leftover (id int)")


def test_servers_are_reaped_and_their_directories_removed() -> None:
    pg = PostgresServer.create()
    nats = NatsServer.create()
    pids = [pg.process.pid, nats.process.pid]  # type: ignore[union-attr]
    roots = [pg.root, nats.root]
    pg.destroy()
    nats.destroy()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert not any(root.exists() for root in roots)


def test_restart_keeps_data(pg: Database, pg_server: Any) -> None:
    pg.execute("CREATE TABLE kept (id int)")
    pg.execute("INSERT INTO kept VALUES (1)")
    pg_server.restart()
    assert pg.execute("SELECT id FROM kept") == [(1,)]
