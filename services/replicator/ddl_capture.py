"""Schema changes announced at the DDL itself: an event trigger writes a logical decoding
message in the DDL's transaction with the new shape of every published table it changed
(docs/wire-format.md, "Schema changes"), so the replicator publishes the schema change where
the DDL committed, and says a rewrite (ALTER COLUMN … TYPE … USING, a volatile DEFAULT) that
keeps the shape but changes stored values, which nothing else in the WAL says.

Creating an event trigger takes a superuser. Without one, schema changes are said where
logical decoding describes the table anew: with the table's next change after the DDL (the
replicator says so at start). Idempotent: installed or replaced at every start.

The trigger never fails a DDL: anything going wrong inside it is a WARNING to the session
that ran the DDL, and the schema change is then said with the table's next change."""

from __future__ import annotations

import hashlib
import json
import logging

import psycopg
from psycopg import sql

from shared.published import PINNED_SEARCH_PATH

log = logging.getLogger(__name__)

MESSAGE_PREFIX = "pg-nats-bridge.ddl"
"""The prefix of the trigger's logical decoding messages (their content is JSON)."""

SCHEMA = "nats_bridge"  # ("pg_" names are reserved for system schemas)

# The shape the publication publishes of the tables `{changed}` (an oid[]): columns as
# pgoutput describes them (key: in the replica identity's key), the row filter as the
# snapshotter deparses it (shared/published.py), whether `{rewritten}` (a text of
# comma-separated OIDs) names it. The trigger and `announce` read it alike.
_SHAPES = """
  SELECT jsonb_agg(jsonb_build_object(
      'oid', c.oid::bigint, 'schema', n.nspname, 'table', c.relname, 'published', true,
      'row_filter', (SELECT pg_get_expr(r.prqual, r.prrelid) FROM pg_publication_rel r
        JOIN pg_publication pp ON pp.oid = r.prpubid
       WHERE pp.pubname = {publication} AND r.prrelid = c.oid),
      'replica_identity', CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full'
        WHEN 'i' THEN 'index' ELSE 'nothing' END,
      'rewritten', c.oid::text = ANY (string_to_array({rewritten}, ',')),
      'columns', (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
            'name', a.attname, 'type_oid', a.atttypid::bigint, 'type_modifier', a.atttypmod,
            'key', CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false
              ELSE EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
                AND a.attnum = ANY (i.indkey)
                AND CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END)
              END) ORDER BY a.attnum), '[]')
        FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attname = ANY (p.attnames))))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_publication_tables p ON p.pubname = {publication}
      AND p.schemaname = n.nspname AND p.tablename = c.relname
   WHERE c.oid = ANY ({changed})
"""

# The tables a DDL changed (ddl_command_end: ALTER TABLE, or ALTER PUBLICATION adding one or
# changing its column list or row filter) or rewrote (table_rewrite, which comes first and is
# remembered in a transaction-local setting), with their shapes (`_SHAPES`). And (sql_drop)
# the tables that left the publication: dropped, or taken out of it (`published` false).
_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  changed oid[];
  rewritten text := coalesce(current_setting('pg_nats_bridge.rewritten', true), '');
  tables jsonb;
BEGIN
  IF tg_event = 'table_rewrite' THEN
    PERFORM set_config('pg_nats_bridge.rewritten',
      rewritten || ',' || pg_event_trigger_table_rewrite_oid()::text, true);
    RETURN;
  END IF;
  IF tg_event = 'sql_drop' THEN
    SELECT jsonb_agg(jsonb_build_object('oid', gone.oid::bigint, 'schema', gone.nspname,
        'table', gone.relname, 'published', false))
      INTO tables
      FROM (
        SELECT DISTINCT coalesce(t.objid, to_regclass(format('%I.%I', r.address_names[1],
            r.address_names[2]))::oid, 0) AS oid, r.address_names[1] AS nspname,
          r.address_names[2] AS relname
          FROM pg_event_trigger_dropped_objects() r
          LEFT JOIN pg_event_trigger_dropped_objects() t ON t.object_type = 'table'
            AND t.schema_name = r.address_names[1] AND t.object_name = r.address_names[2]
         WHERE r.object_type = 'publication relation' AND r.address_args[1] = {publication}
        UNION
        SELECT t.objid, t.schema_name, t.object_name
          FROM pg_event_trigger_dropped_objects() t
          JOIN pg_publication p ON p.pubname = {publication}
         WHERE t.object_type = 'table' AND (p.puballtables OR EXISTS (
           SELECT FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
            WHERE pn.pnpubid = p.oid AND n.nspname = t.schema_name))
      ) gone;
    IF tables IS NOT NULL THEN
      PERFORM pg_logical_emit_message(true, {prefix}, jsonb_build_object(
        'publication', {publication}, 'command', tg_tag, 'tables', tables)::text);
    END IF;
    RETURN;
  END IF;
  SELECT array_agg(DISTINCT x.objid) INTO changed FROM (
    SELECT d.objid FROM pg_event_trigger_ddl_commands() d
     WHERE d.classid = 'pg_class'::regclass AND d.object_type IN ('table', 'table column')
    UNION ALL
    SELECT r.prrelid FROM pg_event_trigger_ddl_commands() d
      JOIN pg_publication_rel r ON r.oid = d.objid
     WHERE d.object_type = 'publication relation') x;
  IF changed IS NULL THEN
    RETURN;
  END IF;
  tables := ({shapes});
  IF tables IS NOT NULL THEN
    PERFORM pg_logical_emit_message(true, {prefix},
      jsonb_build_object('publication', {publication}, 'command', tg_tag, 'tables', tables)::text);
  END IF;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'pg-nats-bridge: schema change not announced at the DDL (%): it is announced '
    'with the table''s next change', SQLERRM;
END
$fn$
"""
_FUNCTION = _FUNCTION.replace(
    "{shapes}", _SHAPES.replace("{changed}", "changed").replace("{rewritten}", "rewritten").strip()
)


_TRIGGERS = (
    ("", "ddl_command_end", ("ALTER TABLE", "ALTER PUBLICATION")),
    ("_rewrite", "table_rewrite", ("ALTER TABLE",)),
    ("_drop", "sql_drop", ("ALTER PUBLICATION", "DROP TABLE")),
)
"""Each trigger's name suffix, event and command tags."""


def names(publication: str) -> tuple[str, str]:
    """The function's and the triggers' names for a publication (one set per publication: a
    database may feed several bridges)."""
    digest = hashlib.sha256(publication.encode()).hexdigest()[:12]
    return f"ddl_{digest}", f"pg_nats_bridge_ddl_{digest}"


def install(conn: psycopg.Connection, publication: str) -> str | None:
    """Install or replace the trigger for `publication`; None when done, else why not (the
    role is not a superuser)."""
    (superuser,) = conn.execute(  # type: ignore[misc]
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not superuser:
        return "creating an event trigger takes a superuser, and the bridge's role is not one"
    if conn.info.server_version < 150000:
        return "the trigger reads publications' column lists, which PostgreSQL 15 introduced"
    function_name, trigger = names(publication)
    function = sql.Identifier(SCHEMA, function_name)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(
            sql.SQL(_FUNCTION).format(
                function=function,
                publication=sql.Literal(publication),
                prefix=sql.Literal(MESSAGE_PREFIX),
            )
        )
        for suffix, event, tags in _TRIGGERS:
            name = sql.Identifier(trigger + suffix)
            conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(name))
            conn.execute(
                sql.SQL(
                    "CREATE EVENT TRIGGER {} ON {} WHEN TAG IN ({}) EXECUTE FUNCTION {}()"
                ).format(
                    name,
                    sql.SQL(event),
                    sql.SQL(", ").join(sql.Literal(t) for t in tags),
                    function,
                )
            )
    return None


def install_sql(publication: str) -> str:
    """What `install` runs, for a superuser to run by hand (docs/services.md)."""
    function_name, trigger = names(publication)
    function = f'"{SCHEMA}"."{function_name}"'
    quoted = "'" + publication.replace("'", "''") + "'"
    body = (
        _FUNCTION.replace("{function}", function)
        .replace("{publication}", quoted)
        .replace("{prefix}", f"'{MESSAGE_PREFIX}'")
    )
    lines = [f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}";', body.strip() + ";"]
    for suffix, event, tags in _TRIGGERS:
        lines.append(f'DROP EVENT TRIGGER IF EXISTS "{trigger}{suffix}";')
        listed = ", ".join(f"'{tag}'" for tag in tags)
        lines.append(
            f'CREATE EVENT TRIGGER "{trigger}{suffix}" ON {event} WHEN TAG IN ({listed})'
            f" EXECUTE FUNCTION {function}();"
        )
    return "\n".join(lines)


def installed(conn: psycopg.Connection, publication: str) -> bool:
    """Whether the trigger of `publication` is there and enabled."""
    found = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = %s AND evtenabled <> 'D')",
        (names(publication)[1],),
    ).fetchone()
    return bool(found and found[0])


def announce(
    conn: psycopg.Connection,
    publication: str,
    joined: list[int],
    left: list[tuple[int, str, str]],
) -> None:
    """What the trigger says of an ALTER PUBLICATION, for the replicator's own changes of the
    publication it manages where the trigger is not installed: the shapes of the tables
    `joined` (OIDs: added, or given another column list or row filter) and that the tables
    `left` (OID, schema, table) are no longer published. In the caller's transaction, after
    its ALTER PUBLICATION, so that the message is at the change's place in the WAL."""
    gone = [{"oid": oid, "schema": s, "table": t, "published": False} for oid, s, t in left]
    shapes = sql.SQL(_SHAPES).format(  # type: ignore[arg-type]
        publication=sql.Literal(publication),
        changed=sql.SQL("%(joined)s::oid[]"),
        rewritten=sql.Literal(""),
    )
    conn.execute(PINNED_SEARCH_PATH)  # the row filter deparsed as the snapshotter does
    conn.execute(
        sql.SQL(
            "SELECT pg_logical_emit_message(true, {prefix}, jsonb_build_object("
            "'publication', {publication}, 'command', 'ALTER PUBLICATION', 'tables', "
            "coalesce(({shapes}), '[]'::jsonb) || %(gone)s::jsonb)::text)"
        ).format(
            prefix=sql.Literal(MESSAGE_PREFIX),
            publication=sql.Literal(publication),
            shapes=shapes,
        ),
        {"joined": joined, "gone": json.dumps(gone)},
    )
