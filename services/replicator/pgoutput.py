"""The pgoutput logical decoding protocol, versions 1 to 4: bytes in, dataclasses out, no I/O.

Reference: PostgreSQL's "Logical Streaming Replication Protocol — Message Formats". Inside a
streamed transaction (between Stream Start and Stream Stop, protocol ≥ 2) the data messages
carry the transaction's xid after their type byte; `PgOutputDecoder` tracks that state, so one
decoder must see one slot's messages in order.

Column values stay raw here (`bytes` text output, `None`, `UNCHANGED_TOAST`, `BinaryValue`);
`shared.codec.RowCodec` turns them into values once the relation's column types are known.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from services.replicator.protocol import XLOG_HEADER
from services.replicator.wire_reader import DecodeError, Reader
from shared.codec import UNCHANGED_TOAST, BinaryValue
from shared.lsn import Lsn, lsn_from_u64

RawTuple = tuple[Any, ...]
"""Column values as sent: `None` (NULL), `bytes` (text), `BinaryValue`, `UNCHANGED_TOAST`."""

REPLICA_IDENTITY_DEFAULT: Final = "d"
REPLICA_IDENTITY_NOTHING: Final = "n"
REPLICA_IDENTITY_FULL: Final = "f"
REPLICA_IDENTITY_INDEX: Final = "i"

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: Lsn
    """LSN of the transaction's commit record: the same as the Commit's `commit_lsn`."""
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    """End of the commit record: the position to confirm once the transaction is delivered."""
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    origin_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: RawTuple


@dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relation_oid: int
    old_kind: str | None
    """`K`: `old` holds the replica identity key; `O`: the whole old row; None: no old tuple."""
    old: RawTuple | None
    new: RawTuple


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relation_oid: int
    old_kind: str
    old: RawTuple


@dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """`pg_logical_emit_message`: sent only when the `messages` option is on."""

    xid: int | None
    flags: int
    lsn: Lsn
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int
    """Equal to `xid` when the whole transaction aborted, else the aborted subtransaction."""
    abort_lsn: Lsn | None
    """Protocol 4 with `streaming 'parallel'` only."""
    abort_time: int | None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)

MESSAGE_NAMES: Final = {
    "B": "Begin",
    "C": "Commit",
    "O": "Origin",
    "R": "Relation",
    "Y": "Type",
    "I": "Insert",
    "U": "Update",
    "D": "Delete",
    "T": "Truncate",
    "M": "Message",
    "S": "Stream Start",
    "E": "Stream Stop",
    "c": "Stream Commit",
    "A": "Stream Abort",
    "b": "Begin Prepare",
    "P": "Prepare",
    "K": "Commit Prepared",
    "r": "Rollback Prepared",
    "p": "Stream Prepare",
}

_I32 = struct.Struct("!i")
# The one layout of each of these two (the decoder, `read_fast` and `transaction_boundary` read
# them through it).
BEGIN_FIELDS = struct.Struct("!QqI")  # final LSN, commit time, xid
COMMIT_FIELDS = struct.Struct("!bQQq")  # flags, commit LSN, end LSN, commit time
_NULL, _UNCHANGED, _TEXT, _BINARY = 0x6E, 0x75, 0x74, 0x62  # n u t b


def read_tuple(r: Reader) -> RawTuple:
    """TupleData: Int16 column count, then per column a kind byte (n, u, t, b) and its value.

    The hot path of decoding: locals instead of `Reader` calls per column.
    """
    ncols = r.i16()
    if ncols < 0:
        raise r.fail(f"negative column count {ncols}")
    buf, pos, size = r.buf, r.pos, len(r.buf)
    values: list[Any] = []
    append = values.append
    for index in range(ncols):
        if pos >= size:
            r.pos = pos
            raise r.fail(f"tuple ends before column {index} of {ncols}")
        kind = buf[pos]
        pos += 1
        if kind in (_TEXT, _BINARY):
            if pos + 4 > size:
                r.pos = pos
                raise r.fail(f"column {index} length is cut off")
            length = _I32.unpack_from(buf, pos)[0]
            pos += 4
            if length < 0 or pos + length > size:
                r.pos = pos
                raise r.fail(f"column {index} claims {length} bytes, {size - pos} left")
            value = buf[pos : pos + length]
            pos += length
            append(value if kind == _TEXT else BinaryValue(value))
        elif kind == _NULL:
            append(None)
        elif kind == _UNCHANGED:
            append(UNCHANGED_TOAST)
        else:
            r.pos = pos - 1
            raise r.fail(f"column {index} has unknown kind byte {kind:#04x}")
    r.pos = pos
    return tuple(values)


# -- the fast path: the messages of nearly every frame, read in place --------------------------

_BEGIN_FRAME = XLOG_HEADER + 1 + BEGIN_FIELDS.size
_COMMIT_FRAME = XLOG_HEADER + 1 + COMMIT_FIELDS.size
_FAST_U32 = struct.Struct("!I")
_K_BEGIN, _K_COMMIT = 0x42, 0x43  # B C
KIND_INSERT, KIND_UPDATE, KIND_DELETE = 0x49, 0x55, 0x44  # I U D
_MARK_NEW, _MARK_KEY, _MARK_OLD = 0x4E, 0x4B, 0x4F  # N K O
_CHANGE_NAMES = {KIND_INSERT: "Insert", KIND_UPDATE: "Update", KIND_DELETE: "Delete"}
FastMessage = tuple[Any, ...]
"""By length: a row change `(kind, relation_oid, new, old_kind, old)` with `kind` one of
`KIND_INSERT/UPDATE/DELETE`; a Begin `(final_lsn, commit_time, xid)`; a Commit `()`. Plain
tuples, told apart by length: this runs for nearly every frame of a stream."""


def read_fast(raw: bytes) -> FastMessage | None:
    """Begin, Commit, Insert, Update or Delete read in place from an XLogData frame (its `w`
    and header included), as plain tuples; None for any other message, or for anything not
    well-formed: then `PgOutputDecoder` reads the frame and names what is wrong. The two agree
    on every frame a real PostgreSQL sent, and on every cut or flipped one
    (tests/integration/test_event_builder_fast_path.py). Not for frames inside a streamed
    transaction (their changes carry an xid)."""
    size = len(raw)
    if size <= XLOG_HEADER:
        return None
    kind = raw[XLOG_HEADER]
    if kind == _K_BEGIN:
        if size != _BEGIN_FRAME:
            return None
        return BEGIN_FIELDS.unpack_from(raw, XLOG_HEADER + 1)
    if kind == _K_COMMIT:
        return () if size == _COMMIT_FRAME else None
    name = _CHANGE_NAMES.get(kind)
    if name is None or size < XLOG_HEADER + 6:
        return None
    oid = _FAST_U32.unpack_from(raw, XLOG_HEADER + 1)[0]
    marker = raw[XLOG_HEADER + 5]
    r = Reader(raw, name, XLOG_HEADER + 6)
    new: RawTuple | None = None
    old: RawTuple | None = None
    old_kind: str | None = None
    try:
        if marker == _MARK_NEW and kind != KIND_DELETE:
            new = read_tuple(r)
        elif marker in (_MARK_KEY, _MARK_OLD) and kind != KIND_INSERT:
            old_kind = "K" if marker == _MARK_KEY else "O"
            old = read_tuple(r)
            if kind == KIND_UPDATE:
                if r.pos >= size or raw[r.pos] != _MARK_NEW:
                    return None
                r.pos += 1
                new = read_tuple(r)
        else:
            return None
    except DecodeError:
        return None
    if r.pos != size:
        return None
    return (kind, oid, new, old_kind, old)


def transaction_boundary(frames: list[bytes]) -> tuple[bool | None, Lsn | None]:
    """Where XLogData `frames` (in WAL order) leave the transaction stream: whether a
    transaction is open after them (None: no Begin or Commit among them) and the end LSN of
    the last transaction they complete (None: none). Read from the frames' bytes, without
    decoding them (usually the last frame says)."""
    in_transaction: bool | None = None
    for i in range(len(frames) - 1, -1, -1):
        raw = frames[i]
        kind = raw[XLOG_HEADER] if len(raw) > XLOG_HEADER else 0
        if kind == _K_COMMIT:
            if in_transaction is None:
                in_transaction = False
            if len(raw) < _COMMIT_FRAME:
                raise DecodeError("Commit", 0, f"{len(raw)} bytes, too short for a Commit")
            _, _, end_lsn, _ = COMMIT_FIELDS.unpack_from(raw, XLOG_HEADER + 1)
            return in_transaction, lsn_from_u64(end_lsn)
        if kind == _K_BEGIN and in_transaction is None:
            in_transaction = True
    return in_transaction, None


class PgOutputDecoder:
    """Decodes the pgoutput messages of one replication stream, in order (the one reading of
    pgoutput: `read_fast` is its shortcut for the common messages)."""

    def __init__(self) -> None:
        self.in_stream = False
        self._dispatch: dict[int, Callable[[Reader], Message]] = {
            ord(k): getattr(self, f"_{name.lower().replace(' ', '_')}")
            for k, name in MESSAGE_NAMES.items()
        }

    def decode(self, data: bytes) -> Message:
        """One message. Raises `DecodeError` (only) for anything malformed or truncated."""
        if not data:
            raise DecodeError("pgoutput", 0, "empty message")
        handler = self._dispatch.get(data[0])
        if handler is None:
            raise DecodeError("pgoutput", 0, f"unknown message type {chr(data[0])!r}")
        r = Reader(data, MESSAGE_NAMES[chr(data[0])], 1)
        message = handler(r)
        r.end()
        return message

    def _xid(self, r: Reader) -> int | None:
        return r.u32() if self.in_stream else None

    def _begin(self, r: Reader) -> Begin:
        final_lsn, commit_time, xid = BEGIN_FIELDS.unpack(r.take(BEGIN_FIELDS.size))
        return Begin(lsn_from_u64(final_lsn), commit_time, xid)

    def _commit(self, r: Reader) -> Commit:
        flags, commit_lsn, end_lsn, commit_time = COMMIT_FIELDS.unpack(r.take(COMMIT_FIELDS.size))
        return Commit(flags, lsn_from_u64(commit_lsn), lsn_from_u64(end_lsn), commit_time)

    def _origin(self, r: Reader) -> Origin:
        return Origin(Lsn(r.u64()), r.cstring())

    def _relation(self, r: Reader) -> Relation:
        xid, oid, namespace, name = self._xid(r), r.u32(), r.cstring(), r.cstring()
        identity = chr(r.byte())
        if identity not in "dnfi":
            raise r.fail(f"unknown replica identity {identity!r}", r.pos - 1)
        ncols = r.i16()
        if ncols < 0:
            raise r.fail(f"negative column count {ncols}")
        columns = tuple(Column(r.i8(), r.cstring(), r.u32(), r.i32()) for _ in range(ncols))
        return Relation(xid, oid, namespace, name, identity, columns)

    def _type(self, r: Reader) -> Type:
        return Type(self._xid(r), r.u32(), r.cstring(), r.cstring())

    def _tuple_marker(self, r: Reader, allowed: str) -> str:
        marker = chr(r.byte())
        if marker not in allowed:
            raise r.fail(f"expected tuple marker {' or '.join(allowed)}, got {marker!r}", r.pos - 1)
        return marker

    def _insert(self, r: Reader) -> Insert:
        xid, oid = self._xid(r), r.u32()
        self._tuple_marker(r, "N")
        return Insert(xid, oid, read_tuple(r))

    def _update(self, r: Reader) -> Update:
        xid, oid = self._xid(r), r.u32()
        marker = self._tuple_marker(r, "KON")
        if marker == "N":
            return Update(xid, oid, None, None, read_tuple(r))
        old = read_tuple(r)
        self._tuple_marker(r, "N")
        return Update(xid, oid, marker, old, read_tuple(r))

    def _delete(self, r: Reader) -> Delete:
        xid, oid = self._xid(r), r.u32()
        marker = self._tuple_marker(r, "KO")
        return Delete(xid, oid, marker, read_tuple(r))

    def _truncate(self, r: Reader) -> Truncate:
        xid, count, options = self._xid(r), r.i32(), r.i8()
        if count < 0:
            raise r.fail(f"negative relation count {count}")
        if r.remaining() != 4 * count:
            raise r.fail(f"{count} relation OIDs need {4 * count} bytes, {r.remaining()} left")
        return Truncate(xid, options, tuple(r.u32() for _ in range(count)))

    def _message(self, r: Reader) -> LogicalMessage:
        xid, flags, lsn, prefix = self._xid(r), r.i8(), Lsn(r.u64()), r.cstring()
        return LogicalMessage(xid, flags, lsn, prefix, r.take(r.i32()))

    def _stream_start(self, r: Reader) -> StreamStart:
        if self.in_stream:
            raise r.fail("Stream Start inside an open stream block", 0)
        message = StreamStart(r.u32(), r.byte() == 1)
        self.in_stream = True
        return message

    def _stream_stop(self, r: Reader) -> StreamStop:
        if not self.in_stream:
            raise r.fail("Stream Stop without Stream Start", 0)
        self.in_stream = False
        return StreamStop()

    def _stream_commit(self, r: Reader) -> StreamCommit:
        return StreamCommit(r.u32(), r.i8(), Lsn(r.u64()), Lsn(r.u64()), r.i64())

    def _stream_abort(self, r: Reader) -> StreamAbort:
        xid, subxid = r.u32(), r.u32()
        if r.remaining() == 0:
            return StreamAbort(xid, subxid, None, None)
        # Protocol 4 with parallel streaming appends the abort's LSN and time.
        return StreamAbort(xid, subxid, Lsn(r.u64()), r.i64())

    def _begin_prepare(self, r: Reader) -> BeginPrepare:
        return BeginPrepare(Lsn(r.u64()), Lsn(r.u64()), r.i64(), r.u32(), r.cstring())

    def _prepare(self, r: Reader) -> Prepare:
        return Prepare(r.i8(), Lsn(r.u64()), Lsn(r.u64()), r.i64(), r.u32(), r.cstring())

    def _commit_prepared(self, r: Reader) -> CommitPrepared:
        return CommitPrepared(r.i8(), Lsn(r.u64()), Lsn(r.u64()), r.i64(), r.u32(), r.cstring())

    def _rollback_prepared(self, r: Reader) -> RollbackPrepared:
        return RollbackPrepared(
            r.i8(), Lsn(r.u64()), Lsn(r.u64()), r.i64(), r.i64(), r.u32(), r.cstring()
        )

    def _stream_prepare(self, r: Reader) -> StreamPrepare:
        return StreamPrepare(r.i8(), Lsn(r.u64()), Lsn(r.u64()), r.i64(), r.u32(), r.cstring())
