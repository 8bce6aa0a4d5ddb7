"""The admin's HTTP/1.1 protocol: uvicorn's h11 one, answering oversized headers with a 431
the client can read, whatever their size.

Headers over `MAX_HEADER_BYTES` get 431 either way: those that arrived whole in one read
(h11 checks its limit only on what is still incomplete) from `LimitHeaders`, in front of the
app; those larger than h11's buffer from the protocol.

uvicorn answers a request whose headers exceed h11's buffer (16 kB by default) with a 400 and
closes the connection at once; with the rest of a large request still unread in the socket,
closing sends a TCP reset, and the client (sending 1 MB of `Authorization`, say) saw its
connection reset without any answer. Here the answer is 431 (400 for other malformed
requests), the sending side is closed after it, and what the client still sends is read and
discarded, up to `_DRAIN_BYTES` or `_DRAIN_SECONDS`, before the connection closes.
"""

from __future__ import annotations

import asyncio

import h11
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024
_DRAIN_BYTES = 16 * 1024 * 1024
_DRAIN_SECONDS = 2.0


class BoundedH11Protocol(H11Protocol):
    draining = False
    drained = 0

    def data_received(self, data: bytes) -> None:
        if self.draining:
            self.drained += len(data)
            if self.drained > _DRAIN_BYTES:
                self.transport.close()
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        too_long = len(self.conn.trailing_data[0]) > limit
        status, text = (
            (431, f"Request header fields too large (over {MAX_HEADER_BYTES} bytes)")
            if too_long
            else (400, msg)
        )
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=text.encode("ascii")),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_DRAIN_SECONDS, self.transport.close)


class LimitHeaders:
    """ASGI middleware: a request whose headers add up to more than `MAX_HEADER_BYTES` is
    answered 431 before the app sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > MAX_HEADER_BYTES:
                text = f"Request header fields too large (over {MAX_HEADER_BYTES} bytes)"
                await PlainTextResponse(text, status_code=431)(scope, receive, send)
                return
        await self.app(scope, receive, send)
