"""pgoutput messages → CDC messages ready to publish (pure: no I/O, no threads).

Owns what the wire contract says about an event: subject, Msg-Id, payload fields, the
`old`/`unchanged` rules, and what happens to a row too large for NATS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from pg_nats_bridge import contract
from services.replicator import pgoutput as po
from services.replicator.ddl_capture import MESSAGE_PREFIX as DDL_MESSAGE_PREFIX
from services.replicator.errors import OversizedRowError
from services.replicator.protocol import (
    parse_copy_data,
    pg_time_to_datetime,
    xlog_data_start,
    xlog_data_start_text,
)
from shared import compiled
from shared.codec import RowCodec, ValueMode
from shared.codec.domains import oids_to_resolve, with_base_types
from shared.lsn import Lsn, lsn_from_u64

log = logging.getLogger(__name__)

TypeResolver = Callable[[list[int]], list[tuple[int, int]]]
"""Given type OIDs that may be domains, returns (oid, base type oid) pairs (a catalog query)."""

# Room for the headers and protocol framing next to the payload.
_HEADER_ALLOWANCE = 512

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
_K_COMMIT_LSN = msgpack.packb("commit_lsn")
_K_XID = msgpack.packb("xid")
_K_COMMIT_TIME = msgpack.packb("commit_time")
# A commit record (contract.CommitRecord): a 6-entry map, commit_lsn, xid and commit_time packed
# as the changes have them.
_COMMIT_HEAD = b"\x86"
_K_EVENT_COUNT = msgpack.packb("event_count")
_K_TABLES = msgpack.packb("tables")
_K_MESSAGES = msgpack.packb("messages")
_NO_MESSAGES = _K_MESSAGES + msgpack.packb(0)
# The record ends of one-table transactions kept per table (event counts 1 to this, usually).
_TAILS_PER_TABLE = 64


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


_OPERATIONS = ("insert", "update", "delete")  # the compiled loop's order


_IDENTITIES: dict[str, Literal["default", "nothing", "full", "index"]] = {
    "d": "default", "n": "nothing", "f": "full", "i": "index",
}  # fmt: skip

# Messages of a transaction streamed before it commits (protocol 2+ with `streaming`).
_K_RELATION = 0x52  # R
_STREAMED = (po.StreamStart, po.StreamStop, po.StreamCommit, po.StreamAbort, po.StreamPrepare)


class UnknownRelationError(po.DecodeError):
    def __init__(self, oid: int) -> None:
        super().__init__(
            "pgoutput", 0, f"change for relation OID {oid} before its Relation message"
        )


@dataclass(frozen=True)
class PublishedNames:
    """The publication's tables' subject tokens by OID, as the catalog had them at WAL
    position `at` (services/replicator/pipeline.py reads them when a run begins)."""

    tokens: dict[int, str]
    at: int


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
        replayed_through: int = 0,
        publication: str | None = None,
        names: PublishedNames | None = None,
    ) -> None:
        self.mode = mode
        self.publication = publication  # whose DDL messages to read (None: any)
        # The published tables' names when the run began (their subject tokens by OID) and
        # the WAL position then: a table renamed in a transaction after that position, before
        # any change of it in this run, is announced on its old name's subject too.
        self.names = names or PublishedNames({}, 0)
        # Transactions committed at or below this LSN are in the stream already (a restart
        # replays them): a schema change is announced for none of them, since one the first
        # run did not announce (PostgreSQL describes a table once per session) would be stored
        # after the changes that follow it.
        self.replayed_through = replayed_through
        self.resolve_types = resolve_types
        self._base_types: dict[int, int] = {}
        self.max_payload = max_payload
        self.oversized_policy = oversized_policy
        self.prefix = prefix
        self.decoder = po.PgOutputDecoder()
        self.read_fast = po.read_fast  # the decoder's shortcut (a test switches it off)
        # The compiled row changes (shared/compiled), asked before anything else; None: the
        # pure-Python path only (a test switches it off before the first Relation).
        self.compiled = compiled.rows
        self.relations: dict[int, _RelationInfo] = {}
        self._shapes: dict[int, Any] = {}  # relation OID → its compiled `ChangeShape`
        self.oversized_count = 0
        self._xid: int | None = None  # the open transaction's xid; None between transactions
        self._final_lsn = 0  # its commit LSN, as Begin announced it
        self._commit_lsn_bytes = b""  # `<commit LSN>:`, each change's Msg-Id before its ordinal
        self._tx_middle = b""  # packed commit_lsn and xid entries
        self._tx_time = b""  # packed commit_time entry
        self._packer = contract.packer()
        self._second = -1  # the second `_second_bytes` formats (commit times repeat it)
        self._second_bytes = b""
        self._ordinal = 0
        # The open transaction's changes per table token, and its transactional messages: its
        # commit record (`_commit`) says them.
        self._counts: dict[str, int] = {}
        self._messages = 0
        self._commit_subject = contract.commit_subject(prefix).encode()
        # relation OID → the transaction of its last schema change, and how many it had (their
        # Msg-Ids count them)
        self._schema_changes: dict[int, tuple[str, int]] = {}
        # token → event count → the end of a one-table transaction's record, packed
        self._one_table: dict[str, dict[int, bytes]] = {}

    def feed_all(self, frames: list[bytes], out: list[Outgoing]) -> None:
        """A read's frames, in order, each as `feed` takes one; runs of row changes go to the
        compiled loop whole (one call for the run, not one per frame), the rest frame by
        frame."""
        compiled_changes = self.compiled.encode_changes if self.compiled is not None else None
        i, n = 0, len(frames)
        while i < n:
            if (
                compiled_changes is not None
                and self._shapes
                and self._xid is not None
                and not self.decoder.in_stream
            ):
                i, self._ordinal = compiled_changes(
                    frames, i, self._shapes, self._tx_middle, self._tx_time, self._ordinal,
                    self._commit_lsn_bytes, self._counts, self.max_payload - _HEADER_ALLOWANCE,
                    out, Outgoing,
                )  # fmt: skip
                if i == n:
                    return
            self._feed_one(frames[i], out)
            i += 1

    def feed(self, raw: bytes, out: list[Outgoing]) -> None:
        """One XLogData CopyData message (`w` and its header included), as the reader read it."""
        self.feed_all([raw], out)

    def _feed_one(self, raw: bytes, out: list[Outgoing]) -> None:
        """One frame, the pure-Python way (the compiled loop's reference).

        Begin, Commit and row changes, nearly every frame of a stream, are read in place from
        the frame (`_fast`); anything else, or anything the fast path finds malformed, goes
        through `PgOutputDecoder`, which alone decides what a frame means and names what is
        wrong with it. The two agree on every well-formed frame (a unit test holds them to it).
        """
        if not self.decoder.in_stream:
            fast = self.read_fast(raw)
            if fast is not None:
                if len(fast) == 5:  # a row change, nearly every frame
                    kind, oid, new, old_kind, old = fast
                    self._change(oid, kind, new, old_kind, old, raw, out)
                elif fast:  # a Begin
                    self._start_transaction(*fast)
                else:  # a Commit
                    self._commit(out)
                return
        if len(raw) < po.XLOG_HEADER:
            parse_copy_data(raw)  # raises the framing error
        message = self.decoder.decode(raw[po.XLOG_HEADER :])
        kind = type(message)
        if self.decoder.in_stream or kind in _STREAMED:
            # The replicator asks for protocol 1, which never streams a transaction before it
            # commits; publishing the changes of one could publish a transaction that aborts.
            raise po.DecodeError(
                "pgoutput",
                0,
                f"{po.MESSAGE_NAMES.get(chr(raw[po.XLOG_HEADER]), kind.__name__)} of a streamed "
                "(in-progress) transaction: the bridge decodes only committed transactions "
                "(protocol 1, no streaming)",
            )
        if kind is po.Insert:
            assert isinstance(message, po.Insert)
            self._change(message.relation_oid, po.KIND_INSERT, message.new, None, None, raw, out)
        elif kind is po.Update:
            assert isinstance(message, po.Update)
            self._change(
                message.relation_oid, po.KIND_UPDATE, message.new, message.old_kind, message.old,
                raw, out,
            )  # fmt: skip
        elif kind is po.Delete:
            assert isinstance(message, po.Delete)
            self._change(
                message.relation_oid, po.KIND_DELETE, None, message.old_kind, message.old, raw, out
            )
        elif kind is po.Begin:
            assert isinstance(message, po.Begin)
            self._start_transaction(int(message.final_lsn), message.commit_time, message.xid)
        elif kind is po.Commit:
            assert isinstance(message, po.Commit)
            self._commit(out)
        elif kind is po.Relation:
            assert isinstance(message, po.Relation)
            self._relation(message, raw, out)
        elif kind is po.Truncate:
            assert isinstance(message, po.Truncate)
            self._truncate(message, xlog_data_start(raw), out)
        elif kind is po.LogicalMessage:
            assert isinstance(message, po.LogicalMessage)
            self._logical_message(message, out)
        # Origin and Type need nothing: origins are not filtered, and Relation already gives
        # every column's type OID (user-defined types are sent as text output).

    def _start_transaction(self, final_lsn: int, commit_time: int, xid: int) -> None:
        """What every change and the commit record of the transaction repeat, packed once as
        bytes (the texts the rare paths need are read back from them): a cost per transaction,
        so per event for single-row ones."""
        self._xid = xid
        self._final_lsn = final_lsn
        self._ordinal = 0
        self._counts = {}
        self._messages = 0
        lsn = b"%X/%X" % (final_lsn >> 32, final_lsn & 0xFFFFFFFF)  # lsn_text's, as bytes
        self._commit_lsn_bytes = lsn + b":"  # contract.change_msg_id_prefix
        second, micro = divmod(commit_time, 1_000_000)
        if second != self._second:
            self._set_second(second)
        moment = b"%b.%06dZ" % (self._second_bytes, micro)
        # Both texts are fixstr (at most 17 and 27 bytes): a one-byte header, 0xa0 | length.
        self._tx_middle = b"%b%c%b%b%b" % (
            _K_COMMIT_LSN, 0xA0 | len(lsn), lsn, _K_XID, self._packer.pack(xid),
        )  # fmt: skip
        self._tx_time = b"%b%c%b" % (_K_COMMIT_TIME, 0xA0 | len(moment), moment)

    def _set_second(self, second: int) -> None:
        self._second = second
        self._second_bytes = (
            pg_time_to_datetime(second * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S").encode()
        )

    @property
    def _commit_lsn_text(self) -> str:
        """The open transaction's commit LSN (`X/Y`)."""
        return self._commit_lsn_bytes[:-1].decode()

    @property
    def _commit_time_text(self) -> str:
        """The open transaction's commit time, ISO 8601 UTC with microseconds."""
        return self._tx_time[len(_K_COMMIT_TIME) + 1 :].decode()

    def _commit(self, out: list[Outgoing]) -> None:
        """The transaction ends: its commit record after its last change, when it published
        anything (docs/wire-format.md, "Transactions")."""
        counts, messages = self._counts, self._messages
        if self._xid is not None and (counts or messages):
            if len(counts) == 1 and not messages:  # nearly every transaction: one table
                ((token, n),) = counts.items()
                tails = self._one_table.get(token)
                if tails is None:
                    tails = self._one_table[token] = {}
                tail = tails.get(n)
                if tail is None:
                    pack = self._packer.pack
                    packed = pack(n)
                    tail = b"".join(
                        (
                            _K_EVENT_COUNT, packed, _K_TABLES, b"\x81", pack(token), packed,
                            _NO_MESSAGES,
                        )
                    )  # fmt: skip
                    if len(tails) < _TAILS_PER_TABLE:
                        tails[n] = tail
            else:
                pack = self._packer.pack
                tail = b"".join(
                    (
                        _K_EVENT_COUNT, pack(sum(counts.values()) + messages), _K_TABLES,
                        pack(counts), _K_MESSAGES, pack(messages),
                    )
                )  # fmt: skip
            out.append(
                Outgoing(
                    self._commit_subject,
                    b"%b%b%b%b" % (_COMMIT_HEAD, self._tx_middle, self._tx_time, tail),
                    self._commit_lsn_bytes + b"commit",
                )
            )
        self._xid = None

    def types_to_resolve(self, frames: list[bytes]) -> list[int]:
        """The types of `frames`' Relation messages that may be domains and were never looked
        up: the decoder has them resolved (`learn_types`) off the event loop before it feeds
        the frames. A Relation comes before a table's first change and after its DDL, so
        nearly every batch has none: one byte per frame is looked at."""
        if self.resolve_types is None:
            return []
        try:
            relations = [raw for raw in frames if raw[po.XLOG_HEADER] == _K_RELATION]
        except IndexError:  # a frame too short to hold a message: `feed` names it
            relations = [raw for raw in frames if raw[po.XLOG_HEADER : po.XLOG_HEADER + 1] == b"R"]
        unknown: set[int] = set()
        for raw in relations:
            try:
                rel = po.PgOutputDecoder().decode(raw[po.XLOG_HEADER :])
            except po.DecodeError:
                continue  # `feed` names it
            if isinstance(rel, po.Relation):
                unknown.update(c.type_oid for c in rel.columns)
        return [oid for oid in oids_to_resolve(unknown) if oid not in self._base_types]

    def learn_types(self, oids: list[int], resolved: list[tuple[int, int]]) -> None:
        """What `resolve_types` said of `oids` (one not said of is no domain: itself)."""
        self._base_types.update((oid, oid) for oid in oids)
        self._base_types.update(resolved)

    def _relation(self, rel: po.Relation, raw: bytes, out: list[Outgoing]) -> None:
        names = [c.name for c in rel.columns]
        oids = [c.type_oid for c in rel.columns]
        unknown = [oid for oid in oids_to_resolve(oids) if oid not in self._base_types]
        if unknown and self.resolve_types is not None:
            # Fed without the decoder's `types_to_resolve` first (a test, a tool): ask now.
            self.learn_types(unknown, self.resolve_types(unknown))
        before = self.relations.get(rel.oid)
        old = self._known_token(rel.oid)
        info = self.relations[rel.oid] = _RelationInfo(
            relation=rel,
            codec=RowCodec(names, with_base_types(oids, self._base_types.items()), self.mode),
            token=contract.table_token(rel.namespace, rel.name),
            key_columns=frozenset(c.name for c in rel.columns if c.is_key),
        )
        if self.compiled is not None:
            self._shapes[rel.oid] = self.compiled.ChangeShape(
                names,
                info.codec.kinds,
                bytes(c.is_key for c in rel.columns),
                [self._head(info, operation) for operation in _OPERATIONS],
                [self._subject(info, operation) for operation in _OPERATIONS],
                info.token,
            )
        if self._xid is None or self._final_lsn <= self.replayed_through:
            return  # outside a transaction (pgoutput describes a table inside one), a replay
        shape = (rel.namespace, rel.name, rel.replica_identity, rel.columns)
        if before is not None:
            was = before.relation
            if (was.namespace, was.name, was.replica_identity, was.columns) == shape:
                return  # described again (a new session, an invalidation), unchanged
        self._schema_change(info, raw, old, out)

    def _known_token(self, oid: int) -> str | None:
        """The name consumers know a table by before this transaction: the one of its last
        description in this run, else the catalog's when the run began (for a transaction
        after that position only: one before it may carry a name the catalog had not yet)."""
        known = self.relations.get(oid)
        if known is not None:
            return known.token
        if self._final_lsn > self.names.at:
            return self.names.tokens.get(oid)
        return None

    def _publish_schema_change(
        self, payload: bytes, msg_id: bytes, token: str, old: str | None, out: list[Outgoing]
    ) -> None:
        """On the table's subject, and after a rename on its old name's too, for consumers
        that know it by that (with a Msg-Id of its own: JetStream would drop it as a
        duplicate)."""
        out.append(
            Outgoing(contract.schema_change_subject(token, self.prefix).encode(), payload, msg_id)
        )
        if old is not None and old != token:
            subject = contract.schema_change_subject(old, self.prefix).encode()
            out.append(Outgoing(subject, payload, msg_id + b":was"))

    def _schema_change(
        self, info: _RelationInfo, raw: bytes, old: str | None, out: list[Outgoing]
    ) -> None:
        """The table's shape at its place among the changes (contract.SchemaChange): every
        change of it after this was written under this shape."""
        rel = info.relation
        lsn = xlog_data_start_text(raw)
        commit_lsn = self._commit_lsn_text
        event = contract.SchemaChange(
            schema=rel.namespace,
            table=rel.name,
            lsn=lsn,
            commit_lsn=commit_lsn,
            xid=self._xid or 0,
            commit_time=self._commit_time_text,
            version=lsn,
            relation_oid=rel.oid,
            columns=[
                contract.RelationColumn(
                    name=c.name, type_oid=c.type_oid, type_modifier=c.type_modifier, key=c.is_key
                )
                for c in rel.columns
            ],
            replica_identity=_IDENTITIES[rel.replica_identity],
        )
        seen = self._schema_changes.get(rel.oid)
        n = seen[1] + 1 if seen is not None and seen[0] == commit_lsn else 0
        self._schema_changes[rel.oid] = (commit_lsn, n)
        msg_id = contract.schema_change_msg_id(commit_lsn, rel.oid, n).encode()
        self._publish_schema_change(event.encode(), msg_id, info.token, old, out)

    def _info(self, oid: int) -> _RelationInfo:
        info = self.relations.get(oid)
        if info is None:
            raise UnknownRelationError(oid)
        return info

    def _subject(self, info: _RelationInfo, operation: str) -> bytes:
        subject = info.subjects.get(operation)
        if subject is None:
            subject = contract.token_cdc_subject(info.token, operation, self.prefix).encode()
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
        if self._xid is None:
            raise po.DecodeError("pgoutput", 0, f"{operation} outside a transaction")
        rel = info.relation
        return {
            "schema": rel.namespace,
            "table": rel.name,
            "operation": operation,
            "lsn": lsn,
            "commit_lsn": self._commit_lsn_text,
            "xid": self._xid,
            "ordinal": ordinal,
            "commit_time": self._commit_time_text,
        }

    def _change(
        self,
        relation_oid: int,
        kind: int,
        new: po.RawTuple | None,
        old_kind: str | None,
        old_raw: po.RawTuple | None,
        raw: bytes,
        out: list[Outgoing],
    ) -> None:
        """One row change (`kind` its pgoutput type byte) of the frame `raw`."""
        info = self._info(relation_oid)
        codec = info.codec
        old = None if old_raw is None else self._old(info, old_kind, old_raw)
        if kind == po.KIND_INSERT:
            operation = "insert"
            data, unchanged = codec.decode(new)  # type: ignore[arg-type]
        elif kind == po.KIND_UPDATE:
            operation = "update"
            data, unchanged = codec.decode(new)  # type: ignore[arg-type]
        else:
            operation = "delete"
            data, unchanged = None, []
        if self._xid is None:
            raise po.DecodeError("pgoutput", 0, f"{operation} outside a transaction")
        ordinal = self._ordinal
        self._ordinal = ordinal + 1
        pack = self._packer.pack
        lsn_str = xlog_data_start_text(raw)
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
        counts = self._counts
        counts[info.token] = counts.get(info.token, 0) + 1
        if len(payload) + _HEADER_ALLOWANCE > self.max_payload:
            event = self._envelope(info, operation, lsn_str, ordinal)
            event.update(data=data, old=old, unchanged=unchanged)
            self._dead_letter(info, event, len(payload), old or data, msg_id, out)
            return
        out.append(Outgoing(self._subject(info, operation), payload, msg_id))

    def _old(self, info: _RelationInfo, kind: str | None, raw: po.RawTuple) -> dict[str, Any]:
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
            payload = contract.ChangeEvent.model_validate(event).encode()
            msg_id = self._commit_lsn_bytes + b"%d" % ordinal
            self._counts[info.token] = self._counts.get(info.token, 0) + 1
            if len(payload) + _HEADER_ALLOWANCE > self.max_payload:
                self._dead_letter(info, event, len(payload), None, msg_id, out)
            else:
                out.append(Outgoing(self._subject(info, "truncate"), payload, msg_id))

    def _logical_message(self, message: po.LogicalMessage, out: list[Outgoing]) -> None:
        transactional = message.transactional and self._xid is not None
        if transactional and message.prefix == DDL_MESSAGE_PREFIX:
            self._ddl(message, out)
            return
        ordinal = self._next_ordinal() if transactional else None
        if transactional:
            self._messages += 1
        event = contract.LogicalMessage(
            prefix=message.prefix,
            content=message.content,
            transactional=message.transactional,
            lsn=str(message.lsn),
            commit_lsn=self._commit_lsn_text if transactional else None,
            xid=self._xid if transactional else None,
            ordinal=ordinal,
            commit_time=self._commit_time_text if transactional else None,
        )
        if ordinal is not None:
            msg_id = contract.change_msg_id(lsn_from_u64(self._final_lsn), ordinal)
        else:
            msg_id = contract.message_msg_id(message.lsn)
        subject = contract.message_subject(contract.escape_name(message.prefix or "_"), self.prefix)
        out.append(Outgoing(subject.encode(), event.encode(), msg_id.encode()))

    def _ddl(self, message: po.LogicalMessage, out: list[Outgoing]) -> None:
        """The bridge's event trigger's message (services/replicator/ddl_capture.py): the
        new shape of each published table the DDL changed, as a schema change here, at the
        DDL. Not published itself, nor counted. Anything unreadable in it is said and passed
        over: the shape is then said with the table's next change."""
        lsn = str(message.lsn)
        try:
            body = json.loads(message.content)
            if self.publication is not None and body["publication"] != self.publication:
                return  # another bridge's
            tables = list(body["tables"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("DDL message at %s not read (%s): %r", lsn, exc, message.content[:200])
            return
        commit_lsn = self._commit_lsn_text
        for table in tables:
            try:
                event = contract.SchemaChange(
                    schema=table["schema"],
                    table=table["table"],
                    lsn=lsn,
                    commit_lsn=commit_lsn,
                    xid=self._xid or 0,
                    commit_time=self._commit_time_text,
                    version=lsn,
                    relation_oid=table["oid"],
                    columns=table.get("columns", []),
                    replica_identity=table.get("replica_identity", "default"),
                    source="ddl",
                    rewritten=bool(table.get("rewritten")),
                    command=body.get("command"),
                    published=table.get("published", True),
                    row_filter=table.get("row_filter"),
                )
            except (ValueError, KeyError, TypeError) as exc:  # ValidationError is a ValueError
                log.warning("DDL message at %s: a table not read (%s)", lsn, exc)
                continue
            msg_id = contract.ddl_change_msg_id(commit_lsn, lsn, event.relation_oid).encode()
            self._publish_schema_change(
                event.encode(),
                msg_id,
                contract.table_token(event.schema_, event.table),
                self._known_token(event.relation_oid),
                out,
            )

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
        subject = contract.oversized_subject(info.token, self.prefix).encode()
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
        marker = contract.OversizedMarker(
            **{
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
            },
            key={k: v for k, v in (key or {}).items() if k in info.key_columns} or None,
            size=size,
            max_payload=self.max_payload,
        )
        packed = marker.encode()
        if len(packed) * 4 > self.max_payload:  # a huge key (REPLICA IDENTITY FULL) stays out
            packed = marker.model_copy(update={"key": None}).encode()
        return packed
