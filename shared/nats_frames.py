"""Pre-built protocol frames written on a nats-py connection, bypassing its per-message publish.

nats-py's `publish` validates the subject, encodes the header dict and formats one HPUB per
call, a few microseconds each: at a hundred thousand messages a second that is most of a core.
The replicator builds its frames itself (`hpub`) and writes a whole batch with one call into
the client's own outgoing buffer, so the client's flusher, its ordering against PINGs and
SUBs, and its TLS/auth handling stay as they are.

This reaches into nats-py's outgoing buffer (`_send_command`, `_flush_pending`), which its
`publish` uses the same way; `FrameWriter` checks at construction that they exist, so a nats-py
that changed them fails at start with a clear error, not mid-stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError

from shared.pinned import PINNED

_NEEDS = ("_send_command", "_flush_pending", "_flush_queue", "_pending_data_size", "_process_msg")

_NOW_LIMIT = 1 << 20

RawHandler = Callable[[bytes, bytes, bytes | None], None]
"""Called with a message's subject, payload and raw header block (None without headers)."""

_EXPECTED = b"\r\nNats-Expected-Last-Sequence: "
_EXPECTED_ID = b"\r\nNats-Expected-Last-Msg-Id: "
_HEADER_END = b"\r\n\r\n"
_HEADER_FIXED = len(b"NATS/1.0\r\nNats-Msg-Id: ") + len(_EXPECTED) + len(_HEADER_END)
_HEADER_FIXED_ID = _HEADER_FIXED + len(_EXPECTED_ID)


def hpub(
    subject: bytes,
    reply: bytes,
    msg_id: bytes,
    expected_last: int,
    payload: bytes,
    expected_last_id: bytes = b"",
) -> bytes:
    """One HPUB frame with `Nats-Msg-Id`, `Nats-Expected-Last-Sequence` and, when given,
    `Nats-Expected-Last-Msg-Id` (`reply` empty for none). Subjects and ids are the
    replicator's own (table tokens, LSNs): no spaces or line breaks, nothing to escape.
    One formatting per frame (the replicator writes one per message)."""
    last = b"%d" % expected_last
    if expected_last_id:
        hlen = _HEADER_FIXED_ID + len(msg_id) + len(last) + len(expected_last_id)
        if reply:
            return (
                b"HPUB %b %b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b"
                b"\r\nNats-Expected-Last-Sequence: %b\r\nNats-Expected-Last-Msg-Id: %b"
                b"\r\n\r\n%b\r\n"
            ) % (subject, reply, hlen, hlen + len(payload), msg_id, last, expected_last_id, payload)
        return (
            b"HPUB %b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b"
            b"\r\nNats-Expected-Last-Sequence: %b\r\nNats-Expected-Last-Msg-Id: %b"
            b"\r\n\r\n%b\r\n"
        ) % (subject, hlen, hlen + len(payload), msg_id, last, expected_last_id, payload)
    hlen = _HEADER_FIXED + len(msg_id) + len(last)
    if reply:
        return b"HPUB %b %b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b%b%b%b%b\r\n" % (
            subject, reply, hlen, hlen + len(payload), msg_id, _EXPECTED, last, _HEADER_END,
            payload,
        )  # fmt: skip
    return b"HPUB %b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b%b%b%b%b\r\n" % (
        subject, hlen, hlen + len(payload), msg_id, _EXPECTED, last, _HEADER_END, payload,
    )  # fmt: skip


class FrameWriter:
    """Writes ready frames on a connected nats-py client, and hands one subscription's messages
    over as the client's parser reads them.

    Frames go straight to the transport when the client has nothing queued (the usual case):
    its flusher is a task, and waking it costs a turn of the event loop per write. When the
    client has something queued (a PING, a SUB), frames go behind it through the flusher, so
    the bytes on the wire keep the order in which they were written."""

    def __init__(self, nc: Client) -> None:
        missing = [name for name in _NEEDS if not hasattr(nc, name)]
        if missing:
            import nats

            raise RuntimeError(
                f"nats-py {getattr(nats, '__version__', '?')} lacks {', '.join(missing)}, which "
                "the replicator's batched publishing uses: install nats-py "
                f"{PINNED['nats-py']}, the release it was tested with (requirements.lock)"
            )
        self.nc: Any = nc

    async def write(self, frames: bytes) -> None:
        nc = self.nc
        if nc.is_closed or not nc.is_connected:
            raise ConnectionClosedError
        if nc._pending_data_size == 0:
            nc._transport.write(frames)
            await nc._transport.drain()  # waits only while the socket's buffer is full
            return
        await nc._send_command(frames)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def can_write_now(self) -> bool:
        """`write_now` may be used: connected, nothing queued in the client, and the socket's
        buffer below `_NOW_LIMIT` (past that, `write` waits for it to drain)."""
        nc = self.nc
        if nc.is_closed or not nc.is_connected or nc._pending_data_size:
            return False
        writer = getattr(nc._transport, "_io_writer", None)  # TCP and TLS transports
        if writer is None:
            return False
        return bool(writer.transport.get_write_buffer_size() < _NOW_LIMIT)

    def write_now(self, frames: bytes) -> None:
        """`write` without waiting, after `can_write_now` said yes (the buffer may then pass
        `_NOW_LIMIT` by these frames: a batch at most, bounded by the in-flight limits)."""
        self.nc._transport.write(frames)

    def deliver_inline(self, sid: int, handler: RawHandler) -> None:
        """Messages of the subscription `sid` go to `handler` from the client's parser, before
        nats-py builds a `Msg`, parses its headers and queues it for a task of its own (a
        turn of the event loop and two objects per message). `handler` must not block."""
        nc = self.nc
        process_msg: Callable[..., Awaitable[None]] = nc._process_msg

        async def process(
            msg_sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if msg_sid == sid:
                handler(subject, data, headers)
            else:
                await process_msg(msg_sid, subject, reply, data, headers)

        nc._process_msg = process
