"""The one rule for PostgreSQL errors: does an operator have to act (permanent), or does it
pass by itself (transient)?

Where the server sent a SQLSTATE, its class decides. libpq reports connection failures
(authentication, a missing database or role, TLS) without one, so those are recognised by the
server's FATAL message or libpq's own; a connection string libpq cannot parse is permanent.
"""

from __future__ import annotations

import psycopg

# 28 invalid authorization, 3D invalid catalog name, 42 syntax error or access rule violation
# (insufficient privilege, invalid name, undefined object), 0A feature not supported,
# 22 data exception (invalid parameter value), 55000 object not in prerequisite state (an
# invalidated slot, wal_level too low).
_PERMANENT_CLASSES = ("28", "3D", "42", "0A", "22")
_PERMANENT_STATES = frozenset({"55000"})
# Everything else is transient, notably 08 connection exception, 53 insufficient resources
# (too many connections), 57 operator intervention (shutdown, restart), 55006 object in use
# (another replicator holds the slot).

_CONNECTION_MARKERS = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database, role
    "must be superuser or replication role",
    "permission denied",
    "can no longer get changes from replication slot",
    "has been invalidated",
    "logical decoding requires",
    "invalid sslmode value",
    "invalid connection option",
    "invalid integer value",
    "certificate",
    "server does not support ssl",
    "password is required",
    "no password supplied",
)


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or None


def is_permanent(exc: BaseException) -> bool:
    """For a PostgreSQL error (psycopg's, or a replication error carrying `sqlstate`)."""
    state = sqlstate(exc)
    if state:
        return state in _PERMANENT_STATES or state[:2] in _PERMANENT_CLASSES
    if isinstance(exc, psycopg.ProgrammingError | psycopg.InterfaceError):
        return True  # a connection string libpq cannot parse
    text = str(exc).lower()
    return any(marker in text for marker in _CONNECTION_MARKERS)
