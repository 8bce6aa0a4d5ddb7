"""Every PostgreSQL connection the services open: SQL (sync and async) and replication.

Text output depends on session settings (DateStyle, IntervalStyle, extra_float_digits,
TimeZone) that a server, database or role may set to anything; the wire contract promises the
same values whatever they are (docs/wire-format.md, "Values"). So every connection is
opened here, with those four pinned through libpq's `options` (added to any options the URL
already has), and no other code calls `psycopg.connect`.

The replication connection sits on psycopg's libpq layer: psycopg 3 has no replication API, but
`psycopg.pq` exposes what libpq offers for COPY BOTH: a connection opened with
`replication=database`, replication commands sent as simple queries, then `get_copy_data` /
`put_copy_data` for the stream. I/O only: what to confirm and when is decided above it.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared import compiled
from shared.lsn import Lsn

PINNED_SETTINGS = {
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
}
_PINNED_OPTIONS = " ".join(f"-c {key}={value}" for key, value in PINNED_SETTINGS.items())


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class InvalidDatabaseUrl(ValueError):
    """The database URL cannot be used; the message never quotes it (it may hold a password)."""


def check_database_url(database_url: str) -> None:
    """Refuse, before any connection, a URL libpq cannot parse or an sslmode it does not know:
    retrying those is a crash loop, and libpq's own messages quote the offending fragment."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.Error as exc:
        hint = ""
        if "percent" in str(exc):
            hint = ": a '%' must start a %XX escape (write a literal % in a password as %25)"
        raise InvalidDatabaseUrl(
            f"the database URL is not a valid libpq URL or connection string{hint}"
        ) from None
    mode = params.get("sslmode")
    if mode is not None and mode not in SSL_MODES:
        raise InvalidDatabaseUrl(f"sslmode={mode!r} is not one of {', '.join(SSL_MODES)}")


def conninfo(database_url: str, **extra: Any) -> str:
    """The URL's connection string with the pinned settings (and `extra` parameters) added."""
    options = conninfo_to_dict(database_url).get("options")
    pinned = f"{options} {_PINNED_OPTIONS}" if options else _PINNED_OPTIONS
    return make_conninfo(database_url, options=pinned, **extra)


def connect(database_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A SQL connection (psycopg.connect's keyword arguments) with the pinned settings."""
    return psycopg.connect(conninfo(database_url), **kwargs)


async def connect_async(database_url: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(conninfo(database_url), **kwargs)


def copy_out(conn: psycopg.Connection[Any], query: sql.Composable) -> Iterator[memoryview]:
    """The rows of `COPY … TO STDOUT` (text format), one line each, straight from libpq.

    psycopg's `Copy` costs a generator and a wait loop per row, a third of a snapshot's time;
    here a row costs one libpq call. The query runs on `conn` (in its transaction), which is
    idle again when the iterator is exhausted."""
    for block in copy_out_blocks(conn, query, 1):
        yield memoryview(block[0])


def _take_lines(get_copy_data: Callable[[int], Any], block: list[bytes], limit: int) -> int:
    """Lines onto `block` until it holds `limit`, libpq asked not to wait: the last call's
    byte count (0: nothing buffered now, negative: the COPY ended or failed). The compiled
    path runs the same loop in one call (`shared.compiled.rows.take_copy_lines`)."""
    nbytes = 0
    while len(block) < limit:
        nbytes, data = get_copy_data(1)
        if nbytes <= 0:
            return int(nbytes)
        block.append(bytes(data))
    return int(nbytes)


def copy_out_blocks(
    conn: psycopg.Connection[Any], query: sql.Composable, lines: int
) -> Iterator[list[bytes]]:
    """`copy_out`'s lines, `lines` to a list (the last list may be shorter): one generator step
    per block instead of per row."""
    pgconn = conn.pgconn
    pgconn.send_query(query.as_bytes(conn))
    result = _next_result(pgconn)
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        _finish(pgconn)
        raise _psycopg_error(result, pgconn, "COPY did not start")
    sock = pgconn.socket
    get_copy_data = pgconn.get_copy_data
    take = _take_lines if compiled.rows is None else compiled.rows.take_copy_lines
    block: list[bytes] = []
    while True:
        nbytes = take(get_copy_data, block, lines)
        if len(block) >= lines:
            yield block
            block = []
        elif nbytes == 0:
            select.select([sock], [], [], 1.0)
            pgconn.consume_input()
        else:
            break
    if block:
        yield block
    result = _next_result(pgconn)
    _finish(pgconn)
    if result is None or result.status != pq.ExecStatus.COMMAND_OK:
        raise _psycopg_error(result, pgconn, "COPY failed")


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [], 1.0)
        pgconn.consume_input()
    return pgconn.get_result()


def _finish(pgconn: pq.abc.PGconn) -> None:
    while _next_result(pgconn) is not None:
        pass


def _psycopg_error(
    result: pq.abc.PGresult | None, pgconn: pq.abc.PGconn, fallback: str
) -> psycopg.Error:
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return psycopg.errors.error_from_result(result, encoding="utf-8")
    return psycopg.OperationalError(_message(pgconn, fallback))


class ReplicationConnectionError(RuntimeError):
    """The server refused or dropped the replication connection (its message included, and
    its SQLSTATE where it sent one)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _error(result: pq.abc.PGresult | None, fallback: str) -> ReplicationConnectionError:
    if result is None:
        return ReplicationConnectionError(fallback)
    state = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = result.error_message.decode(errors="replace").strip() or fallback
    return ReplicationConnectionError(message, state.decode() if state else None)


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
        info = conninfo(database_url, replication="database", application_name=application_name)
        self.pgconn = pq.PGconn.connect(info.encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            message = _message(self.pgconn, "connection failed")
            self.pgconn.finish()
            raise ReplicationConnectionError(message)
        self.streaming = False
        self._end: ReplicationConnectionError | None = None  # seen, not yet raised

    def command(self, query: str | sql.Composable) -> list[tuple[str | None, ...]]:
        """Run a replication command (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, …) or plain SQL."""
        text = query if isinstance(query, str) else query.as_string(None)
        result = self.pgconn.exec_(text.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise _error(result, f"{text} failed")
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
            raise _error(result, _message(self.pgconn, "START_REPLICATION failed"))
        self.pgconn.nonblocking = 1
        self.streaming = True

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData message, or None when none arrived within `timeout` seconds."""
        if self._end is not None:
            raise self._end
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
        raise self._end_error(nbytes)

    def read_ready(
        self, max_messages: int, max_bytes: int, data_kind: int
    ) -> tuple[list[bytes], list[bytes]]:
        """The CopyData messages that are here already, without waiting: those libpq has
        buffered, then those the socket holds (read once); those whose first byte is
        `data_kind` (XLogData: the protocol layer says which) apart from the rest
        (keepalives). At most `max_messages`, and stops once they reach `max_bytes`.

        One call per batch instead of one per message (a busy stream has tens of thousands a
        second). The end of the stream, or an error, is raised by the next call once the
        messages before it were returned."""
        if self._end is not None:
            raise self._end
        pgconn = self.pgconn
        get_copy_data = pgconn.get_copy_data
        xlog: list[bytes] = []
        other: list[bytes] = []
        append = xlog.append
        count = size = 0
        consumed = False
        while count < max_messages and size < max_bytes:
            nbytes, data = get_copy_data(1)
            if nbytes > 0:
                if data[0] == data_kind:
                    append(bytes(data))
                else:
                    other.append(bytes(data))
                count += 1
                size += nbytes
            elif nbytes == 0 and not consumed:
                pgconn.consume_input()  # non-blocking: what the socket holds now
                consumed = True
            elif nbytes == 0:
                break
            else:
                error = self._end_error(nbytes)
                if not count:
                    raise error
                self._end = error  # libpq will not say it again
                break
        return xlog, other

    def fileno(self) -> int:
        """The socket, for an event loop to watch (after `read_ready` found nothing)."""
        return int(self.pgconn.socket)

    def _end_error(self, nbytes: int) -> ReplicationConnectionError:
        """What the end of the COPY stream (nbytes -1) or an error (-2) means."""
        pgconn = self.pgconn
        if nbytes == -1:
            self.streaming = False
            result = pgconn.get_result()
            error = _error(result, "the server ended the replication stream")
            return ReplicationStreamEnded(str(error), error.sqlstate)
        return ReplicationConnectionError(_message(pgconn, "replication stream failed"))

    def send(self, message: bytes) -> None:
        """Queue a CopyData message (a status update) and push it out."""
        if self.pgconn.put_copy_data(message) != 1:
            raise ReplicationConnectionError(_message(self.pgconn, "could not send CopyData"))
        while self.pgconn.flush() == 1:
            select.select([], [self.pgconn.socket], [], 1.0)

    def cancel(self) -> None:
        """Ask the server to cancel the command running on this connection (from any thread;
        a blocking round trip of its own)."""
        if psycopg.capabilities.has_cancel_safe():
            cancel = self.pgconn.cancel_conn()
            try:
                cancel.blocking()
            finally:
                cancel.finish()
        else:
            self.pgconn.get_cancel().cancel()

    def close(self) -> None:
        self.pgconn.finish()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
