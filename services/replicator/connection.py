"""A replication-protocol connection on psycopg's libpq layer: I/O only, no policy.

psycopg 3 has no replication API, but its `psycopg.pq` wrapper exposes what libpq offers for
COPY BOTH: a connection opened with `replication=database`, replication commands sent as simple
queries, then `get_copy_data` / `put_copy_data` for the stream. What to confirm and when is
decided above this layer.
"""

from __future__ import annotations

import select
from collections.abc import Mapping

from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from shared.lsn import Lsn


class ReplicationConnectionError(RuntimeError):
    """The server refused or dropped the replication connection (its message included)."""


class ReplicationStreamEnded(ReplicationConnectionError):
    """The server ended the COPY BOTH stream (e.g. shutdown or `pg_terminate_backend`)."""


def _message(pgconn: pq.abc.PGconn, fallback: str) -> str:
    text = pgconn.error_message.decode(errors="replace").strip()
    return text or fallback


def quote_ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def pgoutput_options(
    publications: list[str], proto_version: int = 1, **options: str | bool | int
) -> dict[str, str]:
    """pgoutput's START_REPLICATION options: `publication_names` is a list of identifiers
    inside one string literal, so each name is quoted as an identifier first."""
    result = {
        "proto_version": str(proto_version),
        "publication_names": ",".join(quote_ident(p) for p in publications),
    }
    for key, value in options.items():
        result[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return result


class ReplicationConnection:
    """One walsender connection (`replication=database`) to a PostgreSQL server."""

    def __init__(self, database_url: str, application_name: str = "pg-nats-bridge") -> None:
        conninfo = make_conninfo(
            database_url, replication="database", application_name=application_name
        )
        self.pgconn = pq.PGconn.connect(conninfo.encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            message = _message(self.pgconn, "connection failed")
            self.pgconn.finish()
            raise ReplicationConnectionError(message)
        self.streaming = False

    def command(self, query: str | sql.Composable) -> list[tuple[str | None, ...]]:
        """Run a replication command (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, …) or plain SQL."""
        text = query if isinstance(query, str) else query.as_string(None)
        result = self.pgconn.exec_(text.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise ReplicationConnectionError(
                result.error_message.decode(errors="replace").strip() or f"{text} failed"
            )
        rows = []
        for row in range(result.ntuples):
            values = (result.get_value(row, col) for col in range(result.nfields))
            rows.append(tuple(None if v is None else v.decode() for v in values))
        return rows

    def identify_system(self) -> dict[str, str | None]:
        systemid, timeline, xlogpos, dbname = self.command("IDENTIFY_SYSTEM")[0]
        return {"systemid": systemid, "timeline": timeline, "xlogpos": xlogpos, "dbname": dbname}

    def start_replication(self, slot: str, start: Lsn, options: Mapping[str, str]) -> None:
        opts = ", ".join(
            f"{quote_ident(k)} {sql.Literal(v).as_string(None)}" for k, v in options.items()
        )
        query = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {start}"
        if opts:
            query += f" ({opts})"
        self.pgconn.send_query(query.encode())
        self.pgconn.flush()
        result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = (
                result.error_message.decode(errors="replace").strip()
                if result is not None
                else _message(self.pgconn, "START_REPLICATION failed")
            )
            raise ReplicationConnectionError(message or "START_REPLICATION failed")
        self.pgconn.nonblocking = 1
        self.streaming = True

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData message, or None when none arrived within `timeout` seconds."""
        pgconn = self.pgconn
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes == 0:
            ready, _, _ = select.select([pgconn.socket], [], [], timeout)
            if not ready:
                return None
            pgconn.consume_input()
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                return None
        if nbytes > 0:
            return bytes(data)
        if nbytes == -1:
            self.streaming = False
            result = pgconn.get_result()
            detail = (
                result.error_message.decode(errors="replace").strip() if result is not None else ""
            )
            raise ReplicationStreamEnded(detail or "the server ended the replication stream")
        raise ReplicationConnectionError(_message(pgconn, "replication stream failed"))

    def send(self, message: bytes) -> None:
        """Queue a CopyData message (a status update) and push it out."""
        if self.pgconn.put_copy_data(message) != 1:
            raise ReplicationConnectionError(_message(self.pgconn, "could not send CopyData"))
        while self.pgconn.flush() == 1:
            select.select([], [self.pgconn.socket], [], 1.0)

    def close(self) -> None:
        self.pgconn.finish()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
