"""pgoutput messages → CDC messages ready to publish (pure: no I/O, no threads).

Owns what the wire contract says about an event: subject, Msg-Id, payload fields, the
`old`/`unchanged` rules, and what happens to a row too large for NATS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from services.replicator import pgoutput as po
from services.replicator.errors import OversizedRowError
from services.replicator.protocol import XLogData, pg_time_to_datetime
from shared import subjects
from shared.codec import RowCodec, ValueMode
from shared.codec.domains import oids_to_resolve, with_base_types
from shared.lsn import Lsn
from shared.wire import pack

MESSAGE_TOKEN = "~message"
"""`cdc.~message.<prefix>`: logical decoding messages. No table maps to a token starting
with `~` followed by a non-hex letter, so this never collides with a table."""
OVERSIZED_TOKEN = "~oversized"
"""`cdc.~oversized.<table>`: the dead-letter marker of a row larger than max_payload."""

TypeResolver = Callable[[list[int]], list[tuple[int, int]]]
"""Given type OIDs that may be domains, returns (oid, base type oid) pairs (a catalog query)."""

# Room for the headers and protocol framing next to the payload.
_HEADER_ALLOWANCE = 512


@dataclass(slots=True)
class Outgoing:
    subject: str
    payload: bytes
    msg_id: str


@dataclass(slots=True)
class _RelationInfo:
    relation: po.Relation
    codec: RowCodec
    token: str
    key_columns: frozenset[str]
    subjects: dict[str, str] = field(default_factory=dict)


class UnknownRelationError(po.DecodeError):
    def __init__(self, oid: int) -> None:
        super().__init__(
            "pgoutput", 0, f"change for relation OID {oid} before its Relation message"
        )


class EventBuilder:
    """Turns one slot's XLogData frames, in order, into `Outgoing` messages.

    Keeps the relation cache (pgoutput sends a Relation before the first change of a table and
    again after its schema changes) and the current transaction's ordinal counter.
    """

    def __init__(
        self,
        mode: ValueMode,
        max_payload: int,
        oversized_policy: Literal["dead-letter", "stop"] = "dead-letter",
        prefix: str = "cdc",
        resolve_types: TypeResolver | None = None,
    ) -> None:
        self.mode = mode
        self.resolve_types = resolve_types
        self._base_types: dict[int, int] = {}
        self.max_payload = max_payload
        self.oversized_policy = oversized_policy
        self.prefix = prefix
        self.decoder = po.PgOutputDecoder()
        self.relations: dict[int, _RelationInfo] = {}
        self.oversized_count = 0
        self._begin: po.Begin | None = None
        self._commit_lsn_text = ""
        self._commit_time_text = ""
        self._second = -1  # the second `_second_text` formats (commit times repeat it)
        self._second_text = ""
        self._ordinal = 0
        self.last_commit_end: Lsn | None = None

    def _time_text(self, pg_us: int) -> str:
        """ISO 8601 UTC with microseconds; the date-and-second part is formatted once per
        second, not once per transaction."""
        second, micro = divmod(pg_us, 1_000_000)
        if second != self._second:
            self._second = second
            self._second_text = pg_time_to_datetime(second * 1_000_000).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        return f"{self._second_text}.{micro:06d}Z"

    def feed(self, frame: XLogData, out: list[Outgoing]) -> None:
        message = self.decoder.decode(frame.payload)
        kind = type(message)
        if kind is po.Insert or kind is po.Update or kind is po.Delete:
            self._change(message, frame.data_start, out)  # type: ignore[arg-type]
        elif kind is po.Begin:
            assert isinstance(message, po.Begin)
            self._begin = message
            self._ordinal = 0
            self._commit_lsn_text = str(message.final_lsn)
            self._commit_time_text = self._time_text(message.commit_time)
        elif kind is po.Commit:
            assert isinstance(message, po.Commit)
            self._begin = None
            self.last_commit_end = message.end_lsn
        elif kind is po.Relation:
            assert isinstance(message, po.Relation)
            self._relation(message)
        elif kind is po.Truncate:
            assert isinstance(message, po.Truncate)
            self._truncate(message, frame.data_start, out)
        elif kind is po.LogicalMessage:
            assert isinstance(message, po.LogicalMessage)
            self._logical_message(message, out)
        # Origin and Type need nothing: origins are not filtered, and Relation already gives
        # every column's type OID (user-defined types are sent as text output).

    def _relation(self, rel: po.Relation) -> None:
        names = [c.name for c in rel.columns]
        oids = [c.type_oid for c in rel.columns]
        unknown = [oid for oid in oids_to_resolve(oids) if oid not in self._base_types]
        if unknown and self.resolve_types is not None:
            self._base_types.update(self.resolve_types(unknown))
        self.relations[rel.oid] = _RelationInfo(
            relation=rel,
            codec=RowCodec(names, with_base_types(oids, self._base_types.items()), self.mode),
            token=subjects.table_token(rel.namespace, rel.name),
            key_columns=frozenset(c.name for c in rel.columns if c.is_key),
        )

    def _info(self, oid: int) -> _RelationInfo:
        info = self.relations.get(oid)
        if info is None:
            raise UnknownRelationError(oid)
        return info

    def _subject(self, info: _RelationInfo, operation: str) -> str:
        subject = info.subjects.get(operation)
        if subject is None:
            subject = info.subjects[operation] = f"{self.prefix}.{info.token}.{operation}"
        return subject

    def _next_ordinal(self) -> int:
        ordinal = self._ordinal
        self._ordinal += 1
        return ordinal

    def _envelope(
        self, info: _RelationInfo, operation: str, lsn: Lsn, ordinal: int
    ) -> dict[str, Any]:
        begin = self._begin
        if begin is None:
            raise po.DecodeError("pgoutput", 0, f"{operation} outside a transaction")
        rel = info.relation
        return {
            "schema": rel.namespace,
            "table": rel.name,
            "operation": operation,
            "lsn": str(lsn),
            "commit_lsn": self._commit_lsn_text,
            "xid": begin.xid,
            "ordinal": ordinal,
            "commit_time": self._commit_time_text,
        }

    def _change(
        self, message: po.Insert | po.Update | po.Delete, lsn: Lsn, out: list[Outgoing]
    ) -> None:
        info = self._info(message.relation_oid)
        codec = info.codec
        if type(message) is po.Insert:
            operation = "insert"
            data, unchanged = codec.decode(message.new)
            old = None
        elif type(message) is po.Update:
            operation = "update"
            data, unchanged = codec.decode(message.new)
            old = self._old(info, message.old_kind, message.old)
        else:
            assert isinstance(message, po.Delete)
            operation = "delete"
            data, unchanged = None, []
            old = self._old(info, message.old_kind, message.old)
        ordinal = self._next_ordinal()
        event = self._envelope(info, operation, lsn, ordinal)
        event["data"] = data
        event["old"] = old
        event["unchanged"] = unchanged
        self._emit(info, operation, event, ordinal, out, key=old or data)

    def _old(
        self, info: _RelationInfo, kind: str | None, raw: po.RawTuple | None
    ) -> dict[str, Any] | None:
        if raw is None:
            return None
        row, _ = info.codec.decode(raw)
        if kind == "K":
            # A key tuple holds NULLs for every non-key column; they are not old values.
            return {k: v for k, v in row.items() if k in info.key_columns}
        return row

    def _truncate(self, message: po.Truncate, lsn: Lsn, out: list[Outgoing]) -> None:
        for oid in message.relation_oids:
            info = self._info(oid)
            ordinal = self._next_ordinal()
            event = self._envelope(info, "truncate", lsn, ordinal)
            event.update(
                data=None,
                old=None,
                unchanged=[],
                cascade=message.cascade,
                restart_identity=message.restart_identity,
            )
            self._emit(info, "truncate", event, ordinal, out, key=None)

    def _logical_message(self, message: po.LogicalMessage, out: list[Outgoing]) -> None:
        event: dict[str, Any] = {
            "prefix": message.prefix,
            "content": message.content,
            "transactional": message.transactional,
            "lsn": str(message.lsn),
        }
        if message.transactional and self._begin is not None:
            ordinal = self._next_ordinal()
            event.update(
                commit_lsn=self._commit_lsn_text,
                xid=self._begin.xid,
                ordinal=ordinal,
                commit_time=self._commit_time_text,
            )
            msg_id = subjects.change_msg_id(self._begin.final_lsn, ordinal)
        else:
            msg_id = f"message:{message.lsn}"
        subject = f"{self.prefix}.{MESSAGE_TOKEN}.{subjects.escape_name(message.prefix or '_')}"
        out.append(Outgoing(subject, pack(event), msg_id))

    def _emit(
        self,
        info: _RelationInfo,
        operation: str,
        event: dict[str, Any],
        ordinal: int,
        out: list[Outgoing],
        key: dict[str, Any] | None,
    ) -> None:
        assert self._begin is not None
        payload = pack(event)
        msg_id = subjects.change_msg_id(self._begin.final_lsn, ordinal)
        if len(payload) + _HEADER_ALLOWANCE > self.max_payload:
            payload = self._oversized(info, event, len(payload), key)
            out.append(Outgoing(f"{self.prefix}.{OVERSIZED_TOKEN}.{info.token}", payload, msg_id))
            return
        out.append(Outgoing(self._subject(info, operation), payload, msg_id))

    def _oversized(
        self, info: _RelationInfo, event: dict[str, Any], size: int, key: dict[str, Any] | None
    ) -> bytes:
        where = (
            f"{event['schema']}.{event['table']} {event['operation']} at {event['lsn']} "
            f"(commit {event['commit_lsn']}, ordinal {event['ordinal']})"
        )
        if self.oversized_policy == "stop":
            raise OversizedRowError(
                f"row of {where} is {size} bytes encoded, more than NATS max_payload "
                f"{self.max_payload}; raise max_payload on the server or run with "
                "--oversized-policy dead-letter"
            )
        self.oversized_count += 1
        marker = {
            k: event[k]
            for k in (
                "schema",
                "table",
                "operation",
                "lsn",
                "commit_lsn",
                "xid",
                "ordinal",
                "commit_time",
            )
        }
        marker["key"] = {k: v for k, v in (key or {}).items() if k in info.key_columns} or None
        marker["size"] = size
        marker["max_payload"] = self.max_payload
        packed = pack(marker)
        if len(packed) * 4 > self.max_payload:  # a huge key (REPLICA IDENTITY FULL) stays out
            marker["key"] = None
            packed = pack(marker)
        return packed
