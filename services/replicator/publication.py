"""The publication: which tables PostgreSQL decodes for the slot, and how.

Two rules make changes arrive as the contract says (DESIGN §2):
- `publish_via_partition_root = true`: a partitioned table streams as itself, whatever
  partition holds the row, partitions attached later included, and a row that moves partition
  is one UPDATE rather than a DELETE and an INSERT on two subjects.
- on PostgreSQL 18, `publish_generated_columns = stored`: stored generated columns are in CDC
  as they are in snapshots (virtual ones can be in neither; before 18 no generated column can
  be published, and the snapshotter leaves them out too).

A publication the bridge created carries a comment saying so; it follows `--table` (tables
added and removed) and its options are kept as above. Any other publication belongs to its
operator: the bridge never alters it, uses it when it already publishes every configured table
correctly, and otherwise stops saying what to run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from services.replicator.errors import PermanentError
from shared.tables import TableName

log = logging.getLogger(__name__)

MANAGED_COMMENT = "managed by pg-nats-bridge: its tables follow the bridge's --table setting"


@dataclass(frozen=True, slots=True)
class Publication:
    all_tables: bool
    via_root: bool
    stored_generated: bool  # publish_generated_columns = stored (PostgreSQL 18+)
    managed: bool
    members: frozenset[TableName]


def wanted_options(server_version: int) -> dict[str, str]:
    options = {"publish_via_partition_root": "true"}
    if server_version >= 180000:
        options["publish_generated_columns"] = "stored"
    return options


def _options_sql(options: dict[str, str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(value))
        for key, value in options.items()
    )


def read_publication(conn: psycopg.Connection, name: str) -> Publication | None:
    gencols = (
        sql.SQL("p.pubgencols::text = 's'")
        if conn.info.server_version >= 180000
        else sql.SQL("false")
    )
    row = conn.execute(
        sql.SQL(
            "SELECT p.oid, p.puballtables, p.pubviaroot, {},"
            " coalesce(obj_description(p.oid, 'pg_publication'), '')"
            " FROM pg_publication p WHERE p.pubname = %s"
        ).format(gencols),
        (name,),
    ).fetchone()
    if row is None:
        return None
    oid, all_tables, via_root, stored_generated, comment = row
    # Direct members and tables of published schemas; pg_publication_tables would list
    # partitions instead of their parent when the publication does not publish via the root.
    members = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel r"
        " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE r.prpubid = %s"
        " UNION SELECT n.nspname, c.relname FROM pg_publication_namespace s"
        " JOIN pg_class c ON c.relnamespace = s.pnnspid AND c.relkind IN ('r', 'p')"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.pnpubid = %s",
        (oid, oid),
    ).fetchall()
    return Publication(
        all_tables=all_tables,
        via_root=via_root,
        stored_generated=stored_generated,
        managed=comment == MANAGED_COMMENT,
        members=frozenset(TableName(s, n) for s, n in members),
    )


def _privilege_error(
    conn: psycopg.Connection, name: str, tables: list[TableName], exc: psycopg.Error
) -> PermanentError:
    role, database = conn.info.user, conn.info.dbname
    statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
        sql.Identifier(name),
        sql.SQL(", ").join(t.ident() for t in tables),
        _options_sql(wanted_options(conn.info.server_version)),
    )
    return PermanentError(
        f"role {role!r} may not set up publication {name!r} ({str(exc).strip()}). Either "
        f"GRANT CREATE ON DATABASE {sql.Identifier(database).as_string(conn)} TO "
        f"{sql.Identifier(role).as_string(conn)} and make it the owner of the tables, or have "
        f"an administrator run: {statement.as_string(conn)}; the bridge then uses that "
        "publication as it is"
    )


def ensure_publication(
    conn: psycopg.Connection,
    name: str,
    tables: list[TableName],
    partitioned: frozenset[TableName] = frozenset(),
) -> None:
    """Make `name` publish exactly `tables` as the contract needs, or say why it cannot.
    `partitioned` names the configured tables that are partitioned."""
    current = read_publication(conn, name)
    options = wanted_options(conn.info.server_version)
    try:
        if current is None:
            _create(conn, name, tables, options)
        elif current.managed:
            _follow_settings(conn, name, tables, current, options)
        else:
            _check_operator_publication(name, tables, partitioned, current)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _privilege_error(conn, name, tables, exc) from exc


def _create(
    conn: psycopg.Connection, name: str, tables: list[TableName], options: dict[str, str]
) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
                sql.Identifier(name),
                sql.SQL(", ").join(t.ident() for t in tables),
                _options_sql(options),
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                sql.Identifier(name), sql.Literal(MANAGED_COMMENT)
            )
        )
    log.info("created publication %s for %s", name, ", ".join(map(str, tables)))


def _follow_settings(
    conn: psycopg.Connection,
    name: str,
    tables: list[TableName],
    current: Publication,
    options: dict[str, str],
) -> None:
    ident = sql.Identifier(name)
    if not current.via_root or (
        "publish_generated_columns" in options and not current.stored_generated
    ):
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET ({})").format(ident, _options_sql(options)))
        log.info("publication %s: set %s", name, ", ".join(f"{k}={v}" for k, v in options.items()))
    if current.all_tables:
        return
    wanted = set(tables)
    for table in tables:
        if table not in current.members:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(ident, table.ident()))
            log.warning(
                "added %s to publication %s: its changes stream from now on; consumers need a "
                "snapshot of it for the rows it had (bridge snapshot %s, or the snapshotter's "
                "--snapshot-on-start)",
                table,
                name,
                table,
            )
    for table in sorted(current.members - wanted, key=str):
        conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(ident, table.ident()))
        log.warning("removed %s from publication %s: it is no longer in --table", table, name)


def _check_operator_publication(
    name: str, tables: list[TableName], partitioned: frozenset[TableName], current: Publication
) -> None:
    if partitioned and not current.via_root:
        names = ", ".join(sorted(map(str, partitioned)))
        raise PermanentError(
            f"publication {name!r} does not publish via the partition root, so partitioned "
            f"{names} would stream as its partitions; run ALTER PUBLICATION "
            f"{sql.Identifier(name).as_string(None)} SET (publish_via_partition_root = true)"
        )
    missing = [] if current.all_tables else [t for t in tables if t not in current.members]
    if missing:
        listed = ", ".join(t.ident().as_string(None) for t in missing)
        raise PermanentError(
            f"publication {name!r} was not created by the bridge, which leaves it alone, and it "
            f"does not publish {', '.join(map(str, missing))}; run ALTER PUBLICATION "
            f"{sql.Identifier(name).as_string(None)} ADD TABLE {listed}"
        )
    extra = sorted(current.members - set(tables), key=str)
    if extra:
        log.info(
            "publication %s (not created by the bridge, left alone) also publishes %s",
            name,
            ", ".join(map(str, extra)),
        )
