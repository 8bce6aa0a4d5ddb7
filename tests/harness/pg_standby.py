"""A PostgreSQL primary and a streaming standby set up for failover slots (17+), as an
operator would: a physical slot for the standby named in the primary's
`synchronized_standby_slots`; the standby made by `pg_basebackup -R` (so `primary_conninfo`,
with a dbname, and `primary_slot_name` are written), with `sync_replication_slots` and
`hot_standby_feedback` on. Both run from the same binaries as the other test servers.
"""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg

from services.dev.servers import ServerError
from tests.harness.postgres import PostgresServer

STANDBY_SLOT = "standby_slot"
STANDBY_SETTINGS = {
    "sync_replication_slots": "on",
    "hot_standby_feedback": "on",
    "hot_standby": "on",
}


class PrimaryAndStandby:
    """`failover_slots=False`: the topology for decoding on the standby instead (16+): the
    standby still streams through its physical slot with `hot_standby_feedback`, and nothing
    synchronizes slots."""

    def __init__(self, failover_slots: bool = True) -> None:
        self.failover_slots = failover_slots
        self.primary = PostgresServer.create()
        self.standby: PostgresServer | None = None
        try:
            self._set_up()
        except BaseException:
            self.destroy()
            raise

    def _set_up(self) -> None:
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (STANDBY_SLOT,))
            if self.failover_slots:
                conn.execute(f"ALTER SYSTEM SET synchronized_standby_slots = '{STANDBY_SLOT}'")
                conn.execute("SELECT pg_reload_conf()")
        settings = dict(STANDBY_SETTINGS)
        if not self.failover_slots:
            settings.pop("sync_replication_slots")
        standby = PostgresServer(bindir=self.primary.bindir, overrides=settings)
        self.standby = standby
        source = f"host=127.0.0.1 port={self.primary.port} user=postgres dbname=postgres"
        argv = [str(standby.bindir / "pg_basebackup"), "-D", str(standby.datadir)]
        argv += ["-R", "-X", "stream", "-S", STANDBY_SLOT, "-d", source, "--no-sync"]
        done = subprocess.run(argv, user=standby.user, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServerError(f"pg_basebackup failed:\n{done.stdout}{done.stderr}")
        standby.start()

    @property
    def url_both(self) -> str:
        """Both servers in one libpq URL: whichever accepts writes is the one used."""
        assert self.standby is not None
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            "/postgres?target_session_attrs=read-write&connect_timeout=3"
        )

    def on_standby(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        assert self.standby is not None
        with psycopg.connect(self.standby.url(), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def promote(self) -> None:
        """Promote the standby, having done first what an operator's runbook does: the
        standby inherited `synchronized_standby_slots` (pg_basebackup copied
        postgresql.auto.conf), naming a physical slot it does not have, and as a primary
        would hold logical decoding back for it; with no new standby yet, the setting is
        cleared, before the promotion (after it, a replicator that connects at once would
        find it still set)."""
        self.on_standby("ALTER SYSTEM RESET synchronized_standby_slots")
        self.on_standby("SELECT pg_reload_conf()")
        self.on_standby("SELECT pg_promote(true, 60)")

    def destroy(self) -> None:
        for server in (self.standby, self.primary):
            if server is not None:
                server.destroy()

    def __enter__(self) -> PrimaryAndStandby:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
