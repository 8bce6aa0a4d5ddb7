"""What the admin's endpoints share: settings, the NATS connection, the probes of the other
services and of PostgreSQL (fetched once for any number of callers, probes.py), the admin's
own metrics, and the bearer-token check of mutating endpoints."""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import httpx
from fastapi import Depends, Header, Request
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.admin.probes import SharedProbe
from services.admin.settings import AdminSettings
from shared import postgres
from shared.nats_connection import NatsRefused, connect, shown_servers
from shared.redact import redact

log = logging.getLogger("bridge.admin")

SERVICES = ("replicator", "snapshotter")


class Error(Exception):
    """An answer other than success: its HTTP status and what to tell the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminState:
    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        self.nc: Client | None = None
        self.http: httpx.AsyncClient | None = None
        self.started = time.time()
        self.secrets = settings.secrets()
        self.exit_code = 0
        self.stop_server: Callable[[], None] = lambda: None  # set by `run`
        self.registry = CollectorRegistry()
        uptime = Gauge(
            "bridge_uptime_seconds", "Seconds since the service started", registry=self.registry
        )
        uptime.set_function(lambda: time.time() - self.started)
        self.service_up = Gauge(
            "bridge_service_up",
            "1 when the service answered its /metrics",
            ["target"],
            registry=self.registry,
        )
        self.requests = Counter(
            "bridge_admin_requests", "Admin API requests", ["endpoint"], registry=self.registry
        )
        # The bridge's streams against their limits (JetStream's -1: no limit), set at scrape.
        self.stream_figures = {
            key: Gauge(f"bridge_stream_{key}", doc, ["stream"], registry=self.registry)
            for key, doc in (
                ("messages", "Messages in the stream"),
                ("bytes", "Bytes in the stream"),
                ("max_msgs", "The stream's message limit (-1: none)"),
                ("max_bytes", "The stream's byte limit (-1: none)"),
                ("consumers", "Consumers of the stream"),
            )
        }
        # PostgreSQL's check at most every 2 s on one connection, the services' pages and the
        # streams' state at most every second, whatever the request rate.
        self.postgres = SharedProbe(self.postgres_ok, max_age=2.0)
        bases = {"replicator": settings.replicator_url, "snapshotter": settings.snapshotter_url}
        self.pages = {
            (name, path): SharedProbe(functools.partial(self.fetch, base, path), max_age=1.0)
            for name, base in bases.items()
            for path in ("/health", "/metrics")
        }
        self.streams: SharedProbe[dict[str, Any]] | None = None  # set by streams.py's router

    def page(self, service: str, path: str) -> Awaitable[httpx.Response | None]:
        return self.pages[(service, path)].get()

    def probes(self) -> list[SharedProbe[Any]]:
        streams = [self.streams] if self.streams is not None else []
        return [self.postgres, *streams, *self.pages.values()]

    def js(self) -> Any:
        if self.nc is None or not self.nc.is_connected:
            raise Error(503, f"NATS is unreachable at {shown_servers(self.settings)}")
        return self.nc.jetstream()

    async def keep_nats(self) -> None:
        """Connect (waiting while no server answers); a refusal (credentials, TLS) stops the
        admin with exit code 2, as it does the other services."""
        try:
            self.nc = await connect(self.settings, "bridge-admin", reconnect=True)
        except NatsRefused as exc:
            log.error("stopping: %s", redact(str(exc), *self.secrets))
            self.exit_code = 2
            self.stop_server()

    async def fetch(self, base: str, path: str) -> httpx.Response | None:
        assert self.http is not None
        try:
            return await self.http.get(
                f"{base.rstrip('/')}{path}", timeout=self.settings.probe_timeout_seconds
            )
        except httpx.HTTPError:
            return None

    async def postgres_ok(self) -> str:
        """'ok', or why PostgreSQL does not answer (passwords redacted)."""
        try:
            async with await postgres.connect_async(
                self.settings.database_dsn(),
                connect_timeout=max(1, int(self.settings.probe_timeout_seconds)),
                application_name="bridge-admin",
            ) as conn:
                await conn.execute("SELECT 1")
            return "ok"
        except Exception as exc:
            text = str(exc).strip()
            return redact(text.splitlines()[0] if text else type(exc).__name__, *self.secrets)


def admin_state(request: Request) -> AdminState:
    state: AdminState = request.app.state.admin
    return state


State = Annotated[AdminState, Depends(admin_state)]


async def require_token(
    state: State, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Mutating endpoints: `Authorization: Bearer $BRIDGE_ADMIN_TOKEN`, compared in constant
    time; 403 while no token is configured, 401 without it or with a wrong one."""
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise Error(
            403,
            "mutating endpoints are disabled: set BRIDGE_ADMIN_TOKEN on the admin service and "
            "send 'Authorization: Bearer <token>'",
        )
    given = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
    if not hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.get_secret_value().encode()
    ):
        raise Error(401, "missing or wrong bearer token")
