"""Bounds-checked reading of the big-endian binary messages of the replication protocol."""

from __future__ import annotations

import struct

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


class DecodeError(ValueError):
    """Bytes that are not a well-formed replication message.

    Names the message type and the byte offset within the message where reading failed, so a
    log line points at the fault without a hex dump.
    """

    def __init__(self, message_type: str, offset: int, reason: str) -> None:
        self.message_type = message_type
        self.offset = offset
        self.reason = reason
        super().__init__(f"malformed {message_type} message at byte {offset}: {reason}")


class Reader:
    """A cursor over one message. Every read checks that the bytes are there."""

    __slots__ = ("buf", "kind", "pos")

    def __init__(self, buf: bytes, kind: str, pos: int = 0) -> None:
        self.buf = buf
        self.kind = kind
        self.pos = pos

    def fail(self, reason: str, at: int | None = None) -> DecodeError:
        return DecodeError(self.kind, self.pos if at is None else at, reason)

    def _need(self, n: int) -> int:
        start = self.pos
        if start + n > len(self.buf):
            raise self.fail(f"needs {n} more bytes, {len(self.buf) - start} left")
        self.pos = start + n
        return start

    def byte(self) -> int:
        return self.buf[self._need(1)]

    def i8(self) -> int:
        return int(_I8.unpack_from(self.buf, self._need(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack_from(self.buf, self._need(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.buf, self._need(4))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.buf, self._need(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack_from(self.buf, self._need(8))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.buf, self._need(8))[0])

    def take(self, n: int) -> bytes:
        if n < 0:
            raise self.fail(f"negative length {n}")
        start = self._need(n)
        return bytes(self.buf[start : start + n])

    def cstring(self) -> str:
        """A NUL-terminated string (names and prefixes: UTF-8 in a UTF-8 database)."""
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise self.fail("string has no terminating NUL byte")
        raw = self.buf[self.pos : end]
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError as exc:
            raise self.fail(f"string is not UTF-8 ({exc.reason})") from None
        self.pos = end + 1
        return text

    def rest(self) -> bytes:
        start = self.pos
        self.pos = len(self.buf)
        return bytes(self.buf[start:])

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def end(self) -> None:
        """Insist the message was read to its last byte: trailing bytes mean misframing."""
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} unexpected trailing bytes")
