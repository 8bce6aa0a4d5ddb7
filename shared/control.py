"""Control requests over NATS (`<control_prefix>.<service>.shutdown`) and who may make them.

Anyone on the NATS account can publish to any subject its permissions allow, so a control
request is obeyed only when it carries the control token (`Authorization: Bearer <token>` in
its headers), compared in constant time, like the admin's HTTP twin of it. With no token
configured, control requests are refused: a bridge nobody secured cannot be stopped by a
stranger. A refusal is answered (the caller learns why) and logged, at most once every 10 s
with the count in between (log_throttle.py), so a flood cannot flood the log too.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from pg_nats_bridge.contract.control import AUTHORIZATION, ControlReply
from shared.log_throttle import ThrottledLog
from shared.wire import to_json


def request_headers(token: SecretStr | None) -> dict[str, str] | None:
    """The headers a control request carries (the admin's, the tools')."""
    if token is None or not token.get_secret_value():
        return None
    return {AUTHORIZATION: f"Bearer {token.get_secret_value()}"}


def refusal(headers: dict[str, str] | None, token: SecretStr | None) -> str | None:
    """Why a request with these headers may not control the service, or None."""
    if token is None or not token.get_secret_value():
        return (
            "control requests are disabled: set BRIDGE_CONTROL_TOKEN on the services and the "
            "admin, and send 'Authorization: Bearer <token>' as a header of the request"
        )
    given = (headers or {}).get(AUTHORIZATION, "")
    given = given[7:] if given.startswith("Bearer ") else ""
    expected = token.get_secret_value().encode()
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        return "missing or wrong control token"
    return None


class ControlEndpoint:
    """The shutdown request handler of one service; `handle` is the subscription callback, and
    `authorized` the token check any other control request of the service goes through."""

    def __init__(
        self,
        token: SecretStr | None,
        on_shutdown: Callable[[], None],
        log: logging.Logger,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_refused = on_refused
        self.token = token
        self.on_shutdown = on_shutdown
        self.log = log
        self.refusals = ThrottledLog(log)

    async def authorized(self, msg: Any) -> bool:
        """Whether `msg` carries the token; if not, it is answered, logged and counted."""
        problem = refusal(msg.headers, self.token)
        if problem is None:
            return True
        self.on_refused()
        self.refusals.warning(
            "refused", "refused a control request on %s: %s", msg.subject, problem
        )
        if msg.reply:
            await msg.respond(to_json({"error": problem, "reason": "unauthorized"}))
        return False

    async def handle(self, msg: Any) -> None:
        if not await self.authorized(msg):
            return
        self.log.info("shutdown requested on %s", msg.subject)
        if msg.reply:
            await msg.respond(ControlReply(status="shutting down").encode())
        self.on_shutdown()
