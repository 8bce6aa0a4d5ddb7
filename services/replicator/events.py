"""pgoutput messages → CDC messages ready to publish (pure: no I/O, no threads).

Owns what the wire contract says about an event: subject, Msg-Id, payload fields, the
`old`/`unchanged` rules, and what happens to a row too large for NATS.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from services.replicator import pgoutput as po
from services.replicator.errors import OversizedRowError
from services.replicator.protocol import parse_copy_data, pg_time_to_datetime
from shared import subjects
from shared.codec import RowCodec, ValueMode
from shared.codec.domains import oids_to_resolve, with_base_types
from shared.lsn import Lsn, lsn_from_u64, lsn_text
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

_XLOG_HEADER = 25  # 'w', data start, WAL end, send time: then the pgoutput message
_U64 = struct.Struct("!Q")

# A change event is an 11-entry map whose keys and most values repeat: the entries that are
# the same for a table and operation, or for a transaction, are packed once and the event is
# joined from packed pieces (a third of the cost of packing a fresh dict per event). Entry
# order is the documented one: schema, table, operation, lsn, commit_lsn, xid, ordinal,
# commit_time, data, old, unchanged.
_MAP11 = b"\x8b"
_K_LSN = msgpack.packb("lsn")
_K_ORDINAL = msgpack.packb("ordinal")
_K_DATA = msgpack.packb("data")
_K_OLD = msgpack.packb("old")
_K_UNCHANGED = msgpack.packb("unchanged")
_NO_OLD = _K_OLD + msgpack.packb(None)
_NONE_UNCHANGED = _K_UNCHANGED + msgpack.packb([])


@dataclass(slots=True)
class Outgoing:
    """One message as the publisher writes it (subject and Msg-Id already bytes)."""

    subject: bytes
    payload: bytes
    msg_id: bytes


@dataclass(slots=True)
class _RelationInfo:
    relation: po.Relation
    codec: RowCodec
    token: str
    key_columns: frozenset[str]
    subjects: dict[str, bytes] = field(default_factory=dict)
    heads: dict[str, bytes] = field(default_factory=dict)
    """Per operation: the packed map header and its schema/table/operation entries."""


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
        self._commit_lsn_bytes = b""
        self._commit_time_text = ""
        self._tx_middle = b""  # packed commit_lsn and xid entries
        self._tx_time = b""  # packed commit_time entry
        self._packer = msgpack.Packer(use_bin_type=True)
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

    def feed(self, raw: bytes, out: list[Outgoing]) -> None:
        """One XLogData CopyData message (`w` and its header included), as the reader read it."""
        if len(raw) < _XLOG_HEADER:
            parse_copy_data(raw)  # raises the framing error
        message = self.decoder.decode(raw[_XLOG_HEADER:])
        kind = type(message)
        if kind is po.Insert or kind is po.Update or kind is po.Delete:
            self._change(message, _U64.unpack_from(raw, 1)[0], out)  # type: ignore[arg-type]
        elif kind is po.Begin:
            assert isinstance(message, po.Begin)
            self._begin = message
            self._ordinal = 0
            self._commit_lsn_text = text = str(message.final_lsn)
            self._commit_lsn_bytes = text.encode() + b":"
            self._commit_time_text = self._time_text(message.commit_time)
            pack = self._packer.pack
            self._tx_middle = pack("commit_lsn") + pack(text) + pack("xid") + pack(message.xid)
            self._tx_time = pack("commit_time") + pack(self._commit_time_text)
        elif kind is po.Commit:
            assert isinstance(message, po.Commit)
            self._begin = None
            self.last_commit_end = message.end_lsn
        elif kind is po.Relation:
            assert isinstance(message, po.Relation)
            self._relation(message)
        elif kind is po.Truncate:
            assert isinstance(message, po.Truncate)
            self._truncate(message, lsn_from_u64(_U64.unpack_from(raw, 1)[0]), out)
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

    def _subject(self, info: _RelationInfo, operation: str) -> bytes:
        subject = info.subjects.get(operation)
        if subject is None:
            subject = f"{self.prefix}.{info.token}.{operation}".encode()
            info.subjects[operation] = subject
        return subject

    def _head(self, info: _RelationInfo, operation: str) -> bytes:
        head = info.heads.get(operation)
        if head is None:
            rel = info.relation
            pack = self._packer.pack
            entries = (("schema", rel.namespace), ("table", rel.name), ("operation", operation))
            head = _MAP11 + b"".join(pack(k) + pack(v) for k, v in entries)
            info.heads[operation] = head
        return head

    def _next_ordinal(self) -> int:
        ordinal = self._ordinal
        self._ordinal += 1
        return ordinal

    def _envelope(
        self, info: _RelationInfo, operation: str, lsn: str, ordinal: int
    ) -> dict[str, Any]:
        begin = self._begin
        if begin is None:
            raise po.DecodeError("pgoutput", 0, f"{operation} outside a transaction")
        rel = info.relation
        return {
            "schema": rel.namespace,
            "table": rel.name,
            "operation": operation,
            "lsn": lsn,
            "commit_lsn": self._commit_lsn_text,
            "xid": begin.xid,
            "ordinal": ordinal,
            "commit_time": self._commit_time_text,
        }

    def _change(
        self, message: po.Insert | po.Update | po.Delete, lsn: int, out: list[Outgoing]
    ) -> None:
        info = self._info(message.relation_oid)
        codec = info.codec
        kind = type(message)
        if kind is po.Insert:
            operation = "insert"
            data, unchanged = codec.decode(message.new)  # type: ignore[union-attr]
            old = None
        elif kind is po.Update:
            assert isinstance(message, po.Update)
            operation = "update"
            data, unchanged = codec.decode(message.new)
            old = self._old(info, message.old_kind, message.old)
        else:
            assert isinstance(message, po.Delete)
            operation = "delete"
            data, unchanged = None, []
            old = self._old(info, message.old_kind, message.old)
        if self._begin is None:
            raise po.DecodeError("pgoutput", 0, f"{operation} outside a transaction")
        ordinal = self._ordinal
        self._ordinal = ordinal + 1
        pack = self._packer.pack
        lsn_str = lsn_text(lsn)
        payload = b"".join(
            (
                self._head(info, operation),
                _K_LSN,
                pack(lsn_str),
                self._tx_middle,
                _K_ORDINAL,
                pack(ordinal),
                self._tx_time,
                _K_DATA,
                pack(data),
                _NO_OLD if old is None else _K_OLD + pack(old),
                _K_UNCHANGED + pack(unchanged) if unchanged else _NONE_UNCHANGED,
            )
        )
        msg_id = self._commit_lsn_bytes + b"%d" % ordinal
        if len(payload) + _HEADER_ALLOWANCE > self.max_payload:
            event = self._envelope(info, operation, lsn_str, ordinal)
            event.update(data=data, old=old, unchanged=unchanged)
            self._dead_letter(info, event, len(payload), old or data, msg_id, out)
            return
        out.append(Outgoing(self._subject(info, operation), payload, msg_id))

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
            event = self._envelope(info, "truncate", str(lsn), ordinal)
            event.update(
                data=None,
                old=None,
                unchanged=[],
                cascade=message.cascade,
                restart_identity=message.restart_identity,
            )
            payload = pack(event)
            msg_id = self._commit_lsn_bytes + b"%d" % ordinal
            if len(payload) + _HEADER_ALLOWANCE > self.max_payload:
                self._dead_letter(info, event, len(payload), None, msg_id, out)
            else:
                out.append(Outgoing(self._subject(info, "truncate"), payload, msg_id))

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
        out.append(Outgoing(subject.encode(), pack(event), msg_id.encode()))

    def _dead_letter(
        self,
        info: _RelationInfo,
        event: dict[str, Any],
        size: int,
        key: dict[str, Any] | None,
        msg_id: bytes,
        out: list[Outgoing],
    ) -> None:
        """A row too large for NATS: stop, or publish its marker in its place (same Msg-Id,
        so a replay deduplicates it like the row)."""
        payload = self._oversized(info, event, size, key)
        subject = f"{self.prefix}.{OVERSIZED_TOKEN}.{info.token}".encode()
        out.append(Outgoing(subject, payload, msg_id))

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
