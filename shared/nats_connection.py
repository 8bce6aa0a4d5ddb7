"""Opening a NATS connection from the settings, with errors an operator can act on."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

log = logging.getLogger(__name__)


class NatsUnavailable(ConnectionError):
    """No NATS server answered at the configured URL(s)."""


async def connect(url: str, name: str, *, reconnect: bool = False) -> Client:
    """Connect to the comma-separated `url`. With `reconnect`, the client keeps retrying after
    a later outage (services); without, a lost server is an error (one-shot commands)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]

    async def one_line_error(exc: Exception) -> None:
        log.warning("NATS: %s: %s", type(exc).__name__, exc)

    try:
        return await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=5,
            allow_reconnect=reconnect,
            # nats-py reads 0 as "no limit"; 1 means one retry per server, then give up.
            max_reconnect_attempts=-1 if reconnect else 1,
            reconnect_time_wait=0.5 if not reconnect else 2,
            error_cb=one_line_error,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        raise NatsUnavailable(
            f"no NATS server answered at {', '.join(servers)} ({type(exc).__name__}: {exc}); "
            "check BRIDGE_NATS_URL and that nats-server runs with JetStream (-js)"
        ) from exc
