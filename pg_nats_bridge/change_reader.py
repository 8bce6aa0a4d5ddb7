"""What one CDC event asks of a copy, by the rules of docs/wire-format.md: the table its
subject names, whether the table's snapshot already holds it, whether it falls in a chunked
snapshot's replay window, which row it locates. No I/O: the follower feeds it every event it
pulls, and sets the tables' snapshot points, windows and schemas as it loads them."""

from __future__ import annotations

import logging
from typing import Any

import msgpack

from pg_nats_bridge import contract
from pg_nats_bridge.changes import (
    Delete,
    Insert,
    Oversized,
    Row,
    SchemaChanged,
    TableFailed,
    TableSchema,
    Truncate,
    Update,
)
from pg_nats_bridge.follow_errors import FollowError, Undecodable
from pg_nats_bridge.lsn import Lsn
from shared import compiled

log = logging.getLogger("pg_nats_bridge.follower")

CdcChange = Insert | Update | Delete | Truncate | Oversized
"""What one CDC change event becomes."""

# What a subject carries (`route`).
_CHANGE, _OVERSIZED, _SCHEMA = 0, 1, 2


class Reload:
    """A schema change the copy cannot follow in place (a column added, retyped, renamed; a
    new key): existing rows may hold values PostgreSQL changed without row changes (a
    DEFAULT, a rewrite), so the table is read again from a snapshot taken after it. The
    follower asks for one; the table's changes until then are in that snapshot."""

    __slots__ = ("commit_lsn", "seq", "table", "why")

    def __init__(self, table: str, why: str, seq: int, commit_lsn: str) -> None:
        self.table, self.why, self.seq, self.commit_lsn = table, why, seq, commit_lsn


ShapeChange = SchemaChanged | TableFailed | Reload
"""What a schema change on the stream asks of a copy (`ChangeReader.shape`)."""

UNPACK = contract.UNPACK_OPTIONS


class ChangeReader:
    def __init__(self, by_token: dict[str, str], cdc_prefix: str = contract.CDC) -> None:
        self.compiled = compiled.changes  # None: every event unpacked whole (a test sets it)
        self.by_token = by_token  # subject token → the copy's table name
        self.cdc_prefix = cdc_prefix  # the subjects' first token (docs/wire-format.md)
        self.schemas: dict[str, TableSchema] = {}
        self.snapshots: dict[str, Lsn] = {}  # each loaded table's snapshot LSN
        # Tables loaded from a chunked snapshot whose replay window is still open: changes
        # committed below this LSN are handed out with `replay` (docs/wire-format.md).
        self.replay_until: dict[str, Lsn] = {}
        # A window stays in the state until the position passes the change that closed it, so
        # that the state before a change in front of that one still replays (`windows`).
        self.replay_open: set[str] = set()
        self.replay_closed: dict[str, int] = {}  # table → CDC sequence that closed its window
        # Tables an event committed at or after the snapshot was seen for: commit LSNs only
        # grow along the stream, so later events of these tables need no comparison.
        self.past_snapshot: set[str] = set()
        self.routes: dict[bytes, tuple[str, int]] = {}  # subject → what `route` says
        # Tables being read again after a schema change (`Reload`): the snapshot asked for
        # holds every change of theirs until it is loaded.
        self.reloading: set[str] = set()
        self.last_commit_time: str | None = None

    def reset(self, snapshots: dict[str, Lsn], replay_until: dict[str, Lsn]) -> None:
        """The tables' snapshot points and open windows, as a stored state or a bootstrap
        has them."""
        self.snapshots = dict(snapshots)
        self.replay_until = dict(replay_until)
        self.replay_open, self.replay_closed = set(self.replay_until), {}
        self.past_snapshot = set()

    def loaded(self, table: str, lsn: Lsn) -> None:
        """The table was (re)loaded from a snapshot at `lsn`."""
        self.snapshots[table] = lsn
        self.past_snapshot.discard(table)
        self.reloading.discard(table)

    def open_window(self, table: str, until: Lsn) -> None:
        """Changes of the table committed below `until` replay (a chunked snapshot's or a
        backfill's window)."""
        self.replay_until[table] = until
        self.replay_open.add(table)
        self.replay_closed.pop(table, None)

    def windows(self, seq: int) -> dict[str, str]:
        """The replay windows a copy at CDC sequence `seq` is still in."""
        return {
            t: str(lsn)
            for t, lsn in self.replay_until.items()
            if self.replay_closed.get(t, seq + 1) > seq
        }

    def read(self, subject: bytes, seq: int, data: bytes) -> CdcChange | ShapeChange | None:
        """The change one CDC event asks for, or None when the snapshot already holds it.
        (Every event passes here: the common path is kept to a few operations. Where the
        compiled reader is built, a change event's entries read below are picked from its
        bytes, the other six not built; anything it does not take is unpacked whole.)"""
        route = self.routes.get(subject)
        if route is None:
            route = self.route(subject)
        table, kind = route
        event = None
        if kind == _CHANGE and self.compiled is not None:
            if table in self.past_snapshot and not self.replay_open:
                # Nothing to compare an insert's LSN with: the compiled reader builds it.
                read = self.compiled.read_insert(data, table, seq, Insert)
                if type(read) is Insert:
                    self.last_commit_time = read.commit_time
                    return read
                event = read
            else:
                event = self.compiled.read_change(data)
        if event is None:
            try:
                event = msgpack.unpackb(data, **UNPACK)
            except (ValueError, TypeError) as exc:  # msgpack's own errors are ValueErrors
                raise Undecodable(f"not MessagePack ({type(exc).__name__})") from None
        lsn = event["commit_lsn"]
        if kind == _SCHEMA and table not in self.snapshots and table not in self.reloading:
            return self.published_again(table, contract.SchemaChange.model_validate(event), seq)
        if table not in self.past_snapshot and self.before_snapshot(table, lsn):
            return None  # committed before the snapshot: already in it
        if kind:
            if kind == _SCHEMA:
                return self.shape(table, contract.SchemaChange.model_validate(event), seq)
            log.error(
                "%s: a %s of %d bytes did not fit NATS and is missing from the copy (key %s)",
                table,
                event.get("operation"),
                event.get("size", 0),
                event.get("key"),
            )
            return Oversized(table, event, seq)
        when = self.last_commit_time = event["commit_time"]
        op = event["operation"]
        replay = bool(self.replay_open) and self.replaying(table, lsn, seq)
        if op == "insert":
            return Insert(table, event["data"], seq, lsn, when, replay)
        if op == "update":
            new = event["data"]
            match = self.match(table, event["old"] or new, event)
            keep = tuple(event.get("unchanged") or ())
            return Update(table, match, new, keep, seq, lsn, when, replay)
        if op == "delete":
            match = self.match(table, event["old"] or {}, event)
            return Delete(table, match, seq, lsn, when, replay)
        if op == "truncate":
            return Truncate(table, seq, lsn, when)
        raise FollowError(f"{table}: unknown operation {op!r} at CDC sequence {seq}")

    def route(self, subject: bytes) -> tuple[str, int]:
        """The table a subject is about, and what it carries: a change, an oversized row's
        marker or a schema change (KeyError for another table's)."""
        try:
            parsed = contract.parse_cdc_subject(subject.decode(), self.cdc_prefix)
        except contract.SubjectError:
            raise KeyError(subject) from None  # not one of ours: skipped as foreign
        if parsed.message:
            raise KeyError(subject)
        if parsed.operation is None:
            kind = _OVERSIZED
        elif parsed.operation == contract.SCHEMA_CHANGE:
            kind = _SCHEMA
        else:
            kind = _CHANGE
        route = (self.by_token[parsed.token], kind)
        if len(self.routes) < 1024:  # a few per table; foreign ones may be any
            self.routes[subject] = route
        return route

    def replaying(self, table: str, commit_lsn: str, seq: int) -> bool:
        """Whether a change of `table` falls in its chunked snapshot's replay window (which
        closes for good at the first change past it, at `seq`: commit LSNs only grow)."""
        if table not in self.replay_open:
            return False
        if Lsn.parse(commit_lsn) < self.replay_until[table]:
            return True
        self.replay_open.discard(table)
        self.replay_closed[table] = seq
        return False

    def before_snapshot(self, table: str, commit_lsn: str) -> bool:
        """Whether the snapshot holds the change already (every change, for a table left out:
        the copy has nothing of it to change)."""
        loaded_at = self.snapshots.get(table)
        if loaded_at is None or table in self.reloading or Lsn.parse(commit_lsn) < loaded_at:
            return True
        self.past_snapshot.add(table)
        return False

    def match(self, table: str, row: Row, event: dict[str, Any]) -> Row:
        """The columns locating the row an update or delete is about: the primary key when
        `row` (the old key or row, else the new row) has it, otherwise the whole old row."""
        key = self.schemas[table].primary_key
        if key and all(k in row for k in key):
            return {k: row[k] for k in key}
        if event.get("old") is not None:  # {} for a table whose columns were all dropped
            return dict(event["old"])
        raise FollowError(
            f"{table}: a {event['operation']} at {event['commit_lsn']} carries no old row and "
            "the table has no primary key: give it one or set REPLICA IDENTITY FULL"
        )

    def published_again(
        self, table: str, event: contract.SchemaChange, seq: int
    ) -> ShapeChange | None:
        """A schema change of a table the copy left out: read it when the DDL put it (back)
        in the publication."""
        if not (event.published and event.source == "ddl" and event.command == _JOINED):
            return None
        if f"{event.schema_}.{event.table}" != table:
            return None
        self.reloading.add(table)
        return Reload(
            table, f"published at {event.commit_lsn} (CDC sequence {seq})", seq, event.commit_lsn
        )

    def shape(self, table: str, event: contract.SchemaChange, seq: int) -> ShapeChange | None:
        """What a schema change asks of the copy (docs/wire-format.md, "Schema changes"):
        nothing when the table has the shape the copy holds (the replicator says a table's
        shape again after it restarts); the copy's columns dropped in place when only columns
        went away; the table read again otherwise; dropped from the copy when it was renamed,
        dropped or taken out of the publication."""
        name = f"{event.schema_}.{event.table}"
        gone = None
        if name != table:
            gone = f"renamed to {name} at {event.commit_lsn} (CDC sequence {seq}): follow {name}"
        elif not event.published:
            gone = (
                f"{'dropped' if event.command == 'DROP TABLE' else 'taken out of the publication'}"
                f" at {event.commit_lsn} (CDC sequence {seq})"
            )
        if gone is not None:
            self.snapshots.pop(table, None)
            self.reloading.discard(table)
            self.past_snapshot.discard(table)
            return TableFailed(table, gone, dropped=True)
        known = self.schemas.get(table)
        if known is None:
            return None
        differs = _differences(known, event)
        if not differs:
            return None
        names = [c.name for c in event.columns]
        if differs == {"dropped"}:
            kept = [c for c in known.document.columns if c.name in names]
            document = known.document.model_copy(update={"columns": kept})
            schema = self.schemas[table] = TableSchema.from_document(document)
            log.info(
                "%s: columns %s dropped at %s (CDC sequence %d)",
                table,
                ", ".join(c for c in known.columns if c not in names),
                event.commit_lsn,
                seq,
            )
            return SchemaChanged(table, schema)
        self.reloading.add(table)
        self.past_snapshot.discard(table)
        return Reload(
            table,
            f"{', '.join(sorted(differs))} at {event.commit_lsn} (CDC sequence {seq}): "
            f"columns {list(known.columns)} -> {names}",
            seq,
            event.commit_lsn,
        )


_IDENTITY_KEY_ALL = "full"
_JOINED = "ALTER PUBLICATION"  # the command that puts a table in a publication


def _differences(known: TableSchema, event: contract.SchemaChange) -> set[str]:
    """How the shape a schema change says differs from the one the copy holds: `dropped`
    (columns gone, the others as they were), `columns` (added, renamed, reordered), `types`
    (a type or its modifier: numeric's scale, a varchar's length; also when the copy's
    document does not say its types), `rewritten` (the DDL rewrote the table), `row filter`
    (the publication's; only the DDL's own announcement says it), `key`, `replica identity`."""
    differs: set[str] = set()
    document = known.document
    by_name = {c.name: c for c in document.columns}
    names = [c.name for c in event.columns]
    if names != list(known.columns):
        if [c for c in known.columns if c in names] == names:
            differs.add("dropped")
        else:
            differs.add("columns")
    for column in event.columns:
        was = by_name.get(column.name)
        if was is not None and (was.type_oid, was.type_modifier) != (
            column.type_oid,
            column.type_modifier,
        ):
            differs.add("types")
    if event.rewritten:
        differs.add("rewritten")
    if event.source == "ddl" and event.row_filter != document.row_filter:
        differs.add("row filter")  # rows it let through, or not, that no change says
    if event.replica_identity != known.replica_identity:
        differs.add("replica identity")
    key = {c.name for c in event.columns if c.key}
    if event.replica_identity == "default":
        expected = set(document.primary_key)
    elif event.replica_identity == _IDENTITY_KEY_ALL:
        expected = set(names)
    else:
        expected = key  # nothing: none; index: the copy's document does not say which
    if key != expected:
        differs.add("key")
    return differs
