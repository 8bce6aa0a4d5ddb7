"""The publication: which tables PostgreSQL decodes for the slot, and how.

Two rules make changes arrive as the contract says (docs/wire-format.md):
- `publish_via_partition_root = true`: a partitioned table streams as itself, whatever
  partition holds the row, partitions attached later included, and a row that moves partition
  is one UPDATE rather than a DELETE and an INSERT on two subjects.
- on PostgreSQL 18, `publish_generated_columns = stored`: stored generated columns are in CDC
  as they are in snapshots (virtual ones can be in neither; before 18 no generated column can
  be published, and the snapshotter leaves them out too).

A publication the bridge created carries a comment saying so; it follows `--table` (tables
added and removed, column lists as in `people(id,name)`) and `--row-filter`, and its options
are kept as above. Any other publication belongs to its operator: the bridge never alters it,
uses it when it already publishes every configured table correctly, and otherwise stops saying
what to run. Either way its column lists and row filters are the contract: the snapshotter
reads only what it publishes (shared/published.py).

A row filter (or column list) on a table whose UPDATEs and DELETEs are published must use only
columns of the replica identity; PostgreSQL checks it only when an UPDATE or DELETE runs, and
then refuses the application's statement. So the bridge asks PostgreSQL's own check (EXPLAIN of
an UPDATE and a DELETE that touch nothing) when it sets them, and refuses a configuration that
would break the operator's writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from services.replicator import ddl_capture
from services.replicator.errors import PermanentError
from shared.published import published_tables_query
from shared.tables import TableName

log = logging.getLogger(__name__)

MANAGED_COMMENT = "managed by pg-nats-bridge: its tables follow the bridge's --table setting"
# The comment of a managed publication with column lists or row filters ends with them, as
# configured (JSON), so that a change of the settings is noticed without comparing SQL texts.
_PARTS_MARK = "\nparts: "

# Column list and row filter of one table, as configured (None: every column, every row).
Parts = tuple[tuple[str, ...] | None, str | None]


@dataclass(frozen=True, slots=True)
class Publication:
    all_tables: bool
    via_root: bool
    stored_generated: bool  # publish_generated_columns = stored (PostgreSQL 18+)
    managed: bool
    members: frozenset[TableName]
    parts: str = ""  # a managed publication's configured column lists and row filters


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
    managed = comment == MANAGED_COMMENT or comment.startswith(MANAGED_COMMENT + _PARTS_MARK)
    return Publication(
        all_tables=all_tables,
        via_root=via_root,
        stored_generated=stored_generated,
        managed=managed,
        members=frozenset(TableName(s, n) for s, n in members),
        parts=comment.partition(_PARTS_MARK)[2] if managed else "",
    )


def _parts_json(parts: dict[TableName, Parts]) -> str:
    return json.dumps(
        {str(t): [list(c) if c else None, f] for t, (c, f) in sorted(parts.items(), key=str)},
        sort_keys=True,
    )


def _member_sql(table: TableName, parts: dict[TableName, Parts]) -> sql.Composable:
    """`t`, `t (a, b)`, `t WHERE (condition)`: one table of FOR TABLE / SET TABLE.

    The condition is the operator's own SQL (`--row-filter`), given to PostgreSQL as written:
    it parses and checks it (row filters admit only simple expressions over the table's
    columns), and a statement sent this way cannot carry a second one."""
    columns, row_filter = parts.get(table, (None, None))
    out: list[sql.Composable] = [_only(table)]
    if columns:
        out.append(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, columns))))
    if row_filter:
        out.append(sql.SQL("WHERE ({})").format(sql.SQL(row_filter)))  # type: ignore[arg-type]
    return sql.SQL(" ").join(out)


def _only(table: TableName) -> sql.Composable:
    """`ONLY t`: the table, not its inheritance children. Without ONLY, PostgreSQL publishes
    every descendant too, and then refuses UPDATE and DELETE on a child without a replica
    identity, in the application's own statements (`UPDATE parent …` reaches the children).
    The snapshotter reads a parent's own rows, as CDC then carries them; a partitioned table's
    partitions are published with it either way."""
    return sql.SQL("ONLY {}").format(table.ident())


def _comment_sql(name: str, parts: dict[TableName, Parts]) -> sql.Composed:
    comment = MANAGED_COMMENT + (_PARTS_MARK + _parts_json(parts) if parts else "")
    return sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
        sql.Identifier(name), sql.Literal(comment)
    )


def check_replica_identity(conn: psycopg.Connection, tables: list[TableName]) -> None:
    """PostgreSQL's own check that UPDATE and DELETE on each table still work under the
    publication's column lists and row filters (EXPLAIN runs it, touching nothing)."""
    for table in tables:
        row = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum LIMIT 1",
            (table.ident().as_string(conn),),
        ).fetchone()
        statements = [sql.SQL("EXPLAIN DELETE FROM {} WHERE false").format(table.ident())]
        if row is not None:
            column = sql.Identifier(row[0])
            statements.append(
                sql.SQL("EXPLAIN UPDATE {} SET {} = {} WHERE false").format(
                    table.ident(), column, column
                )
            )
        for statement in statements:
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.errors.InvalidColumnReference as exc:
                detail = exc.diag.message_detail or ""
                raise PermanentError(
                    f"the publication's column list or row filter of {table} would make "
                    f"PostgreSQL refuse every UPDATE and DELETE on it ({str(exc).splitlines()[0]}"
                    f": {detail}); filter on and list the replica identity's columns (its "
                    f"primary key), or run ALTER TABLE {table.ident().as_string(conn)} REPLICA "
                    "IDENTITY FULL"
                ) from None


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
    parts: dict[TableName, Parts] | None = None,
) -> None:
    """Make `name` publish exactly `tables` as the contract needs, or say why it cannot.
    `partitioned` names the configured tables that are partitioned; `parts` their column
    lists and row filters, for a publication the bridge manages."""
    parts = parts or {}
    current = read_publication(conn, name)
    options = wanted_options(conn.info.server_version)
    if parts and conn.info.server_version < 150000:
        raise PermanentError(
            "column lists (--table 'people(id,name)') and row filters (--row-filter) need "
            f"PostgreSQL 15 or later; this server is {conn.info.server_version // 10000}"
        )
    try:
        if current is None:
            _create(conn, name, tables, options, parts)
        elif current.managed:
            _follow_settings(conn, name, tables, current, options, parts)
        else:
            if parts:
                log.warning(
                    "publication %s was not created by the bridge, which leaves it alone: the "
                    "column lists and row filters configured here are not applied (the "
                    "publication's own are)",
                    name,
                )
            _check_operator_publication(name, tables, partitioned, current)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _privilege_error(conn, name, tables, exc) from exc


def _oid(conn: psycopg.Connection, table: TableName) -> int:
    found = conn.execute("SELECT %s::regclass::oid", (table.ident().as_string(conn),)).fetchone()
    assert found is not None
    return int(found[0])


def _create(
    conn: psycopg.Connection,
    name: str,
    tables: list[TableName],
    options: dict[str, str],
    parts: dict[TableName, Parts],
) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
                sql.Identifier(name),
                sql.SQL(", ").join(_member_sql(t, parts) for t in tables),
                _options_sql(options),
            )
        )
        conn.execute(_comment_sql(name, parts))
        check_replica_identity(conn, list(parts))
    log.info("created publication %s for %s", name, ", ".join(map(str, tables)))
    for table, (columns, row_filter) in parts.items():
        log.info(
            "publication %s publishes of %s: %s, %s",
            name,
            table,
            f"columns {', '.join(columns)}" if columns else "every column",
            f"rows where {row_filter}" if row_filter else "every row",
        )


def _follow_settings(
    conn: psycopg.Connection,
    name: str,
    tables: list[TableName],
    current: Publication,
    options: dict[str, str],
    parts: dict[TableName, Parts],
) -> None:
    ident = sql.Identifier(name)
    if not current.via_root or (
        "publish_generated_columns" in options and not current.stored_generated
    ):
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET ({})").format(ident, _options_sql(options)))
        log.info("publication %s: set %s", name, ", ".join(f"{k}={v}" for k, v in options.items()))
    if current.all_tables:
        return
    # Where the event trigger does not say these changes to consumers, the replicator does.
    announcing = not ddl_capture.installed(conn, name)
    wanted = set(tables)
    for table in tables:
        if table not in current.members:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(ident, _only(table))
                )
                if announcing:
                    ddl_capture.announce(conn, name, [_oid(conn, table)], [])
            log.warning(
                "added %s to publication %s: its changes stream from now on; consumers need a "
                "snapshot of it for the rows it had (bridge snapshot %s, or the snapshotter's "
                "--snapshot-on-start)",
                table,
                name,
                table,
            )
    for table in sorted(current.members - wanted, key=str):
        with conn.transaction():
            left = [(_oid(conn, table), table.schema, table.name)] if announcing else []
            conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(ident, table.ident()))
            if announcing:
                ddl_capture.announce(conn, name, [], left)
        log.warning("removed %s from publication %s: it is no longer in --table", table, name)
    wanted_parts = _parts_json(parts) if parts else ""
    if wanted_parts == current.parts:
        return
    with conn.transaction():
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                ident, sql.SQL(", ").join(_member_sql(t, parts) for t in tables)
            )
        )
        conn.execute(_comment_sql(name, parts))
        check_replica_identity(conn, list(parts))
        if announcing:
            ddl_capture.announce(conn, name, [_oid(conn, t) for t in tables], [])
    before = json.loads(current.parts) if current.parts else {}
    after = json.loads(wanted_parts) if wanted_parts else {}
    for table in sorted(set(before) | set(after)):
        was, now = before.get(table, [None, None]), after.get(table, [None, None])
        if was != now:
            log.warning(
                "publication %s now publishes of %s: %s, %s (was %s, %s); the snapshotter "
                "republishes its schema document: consumers take a new snapshot of it to hold "
                "exactly what is published now",
                name,
                table,
                f"columns {', '.join(now[0])}" if now[0] else "every column",
                f"rows where {now[1]}" if now[1] else "every row",
                f"columns {', '.join(was[0])}" if was[0] else "every column",
                f"rows where {was[1]}" if was[1] else "every row",
            )


def _check_operator_publication(
    name: str, tables: list[TableName], partitioned: frozenset[TableName], current: Publication
) -> None:
    if partitioned and not current.via_root:
        raise _not_via_root(name, f"partitioned {', '.join(sorted(map(str, partitioned)))}")
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


def _not_via_root(name: str, tables: str) -> PermanentError:
    return PermanentError(
        f"publication {name!r} does not publish via the partition root, so {tables} would "
        f"stream as its partitions; run ALTER PUBLICATION {sql.Identifier(name).as_string(None)} "
        "SET (publish_via_partition_root = true)"
    )


def check_followed_publication(conn: psycopg.Connection, name: str) -> list[TableName]:
    """With no --table, the bridge follows an operator's publication (`FOR ALL TABLES`, `FOR
    TABLES IN SCHEMA`, or a list): whatever it publishes, tables added to it later included,
    streams as it is. Its tables now; a PermanentError naming what to do when there is no
    such publication, or it cannot stream as the contract says."""
    current = read_publication(conn, name)
    quoted = sql.Identifier(name).as_string(None)
    if current is None:
        raise PermanentError(
            f"no tables configured and no publication {name!r} to follow: set --table "
            f"(BRIDGE_TABLE), or have an administrator run CREATE PUBLICATION {quoted} FOR ALL "
            "TABLES (or FOR TABLES IN SCHEMA …) WITH (publish_via_partition_root = true); the "
            "bridge then follows its tables"
        )
    if current.managed:
        raise PermanentError(
            f"no tables configured: publication {name!r} is the bridge's own, which follows "
            "--table; set --table (BRIDGE_TABLE), or name an operator's publication with "
            "--publication to follow its tables"
        )
    if not current.via_root:
        raise _not_via_root(name, "a partitioned table")
    query = published_tables_query(conn.info.server_version)
    rows = conn.execute(query, {"publication": name}).fetchall()
    tables = sorted((TableName(s, t) for _, s, t in rows), key=str)
    shown = ", ".join(map(str, tables[:10])) + (
        f" and {len(tables) - 10} more" if len(tables) > 10 else ""
    )
    log.info(
        "following publication %s (%s): %d tables now (%s); tables added to it later stream "
        "from then on",
        name,
        "every table" if current.all_tables else "its tables and schemas",
        len(tables),
        shown or "none yet",
    )
    return tables
