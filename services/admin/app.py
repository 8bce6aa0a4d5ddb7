"""The admin HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

Read-only endpoints are open; mutating ones need `Authorization: Bearer $BRIDGE_ADMIN_TOKEN`
and answer 403 while no token is configured. Nothing secret (database passwords, the token)
appears in responses or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from pg_nats_bridge.contract import control_subject, reserved_subjects, subjects_overlap
from services.admin.http_protocol import BoundedH11Protocol, LimitHeaders
from services.admin.metrics_merge import merge, values
from services.admin.probes import SharedProbe
from services.admin.settings import AdminSettings
from shared import postgres
from shared.control import request_headers
from shared.lsn import Lsn
from shared.nats_connection import NatsRefused, connect, shown_servers
from shared.redact import redact

log = logging.getLogger("bridge.admin")
logging.getLogger("httpx").setLevel(logging.WARNING)

STREAM_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(r"^[^\s.*>]+$")
STATUS_PAGE = Path(__file__).with_name("status.html")


class Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_subjects(text: str) -> list[str]:
    """Comma-separated subjects; each token non-empty, `>` only as the last token."""
    out = []
    for subject in (part.strip() for part in text.split(",")):
        tokens = subject.split(".")
        for i, token in enumerate(tokens):
            if token in ("*", ">"):
                if token == ">" and i != len(tokens) - 1:
                    raise Error(400, f"subject {subject!r}: '>' must be the last token")
                continue
            if not _TOKEN.match(token):
                raise Error(
                    400,
                    f"subject {subject!r}: token {i + 1} is empty or holds a space, "
                    "'.', '*' or '>'",
                )
        out.append(subject)
    return out


class AdminState:
    """What the endpoints share: settings, the NATS connection, the HTTP client, own metrics."""

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
        # Fetched once for any number of callers (probes.py): PostgreSQL's check at most
        # every 2 s on one connection, the services' pages and the streams' state every 1 s.
        self.postgres = SharedProbe(self.postgres_ok, max_age=2.0)
        self.pages = {
            (name, path): SharedProbe(functools.partial(self.fetch, base, path), max_age=1.0)
            for name, base in (
                ("replicator", settings.replicator_url),
                ("snapshotter", settings.snapshotter_url),
            )
            for path in ("/health", "/metrics")
        }
        self.streams = SharedProbe(lambda: _streams_state(self), max_age=1.0)

    def page(self, service: str, path: str) -> Awaitable[httpx.Response | None]:
        return self.pages[(service, path)].get()

    def probes(self) -> list[SharedProbe[Any]]:
        return [self.postgres, self.streams, *self.pages.values()]

    @property
    def own_streams(self) -> set[str]:
        """The streams the bridge keeps its data in (the KV bucket is a stream too)."""
        s = self.settings
        return {s.cdc_stream, s.init_stream, f"KV_{s.kv_bucket}"}

    @property
    def reserved_subjects(self) -> list[str]:
        """Subjects the bridge publishes or serves: a stream over any of them would store
        (and answer with a PubAck) what is meant for the bridge or its consumers."""
        s = self.settings
        return reserved_subjects(s.snapshot_prefix, s.control_prefix, s.kv_bucket)

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


def require_token(state: AdminState) -> Any:
    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        token = state.settings.admin_token
        if token is None or not token.get_secret_value():
            raise Error(
                403,
                "mutating endpoints are disabled: set BRIDGE_ADMIN_TOKEN on the "
                "admin service and send 'Authorization: Bearer <token>'",
            )
        given = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), token.get_secret_value().encode()
        ):
            raise Error(401, "missing or wrong bearer token")

    return Depends(check)


def create_app(settings: AdminSettings) -> FastAPI:
    state = AdminState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=8))
        nats_task = asyncio.create_task(state.keep_nats())
        try:
            yield
        finally:
            nats_task.cancel()
            for probe in state.probes():
                probe.cancel()
            with contextlib.suppress(BaseException):
                await nats_task
            if state.nc is not None and not state.nc.is_closed:
                await state.nc.close()
            await state.http.aclose()

    app = FastAPI(
        title="pg-nats-bridge admin",
        version="0.1.0",
        description="Health, status, metrics and JetStream stream management for the bridge.",
        lifespan=lifespan,
    )
    app.state.admin = state
    app.add_middleware(LimitHeaders)
    auth = require_token(state)

    @app.exception_handler(Error)
    async def on_error(request: Request, exc: Error) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {reasons}"}, status_code=400)

    @app.exception_handler(APIError)
    async def on_jetstream(request: Request, exc: APIError) -> JSONResponse:
        # 10058: the stream exists with another configuration; 10065: subjects overlap
        if exc.err_code in (10058, 10065) or exc.code == 409:
            code = 409
        elif exc.code == 400 or exc.err_code == 10052:
            code = 400  # JetStream refused what was asked (10052: an invalid configuration,
            # e.g. subjects over its own API), though it reports some of them as a 500
        else:
            code = 502
        return JSONResponse({"error": f"JetStream: {exc.description}"}, status_code=code)

    # -- read-only ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(STATUS_PAGE.read_text())

    @app.get(
        "/health",
        summary="200 when PostgreSQL, NATS, the replicator and the snapshotter answer",
        responses={503: {"description": "Something is down; the body names it"}},
    )
    async def health() -> JSONResponse:
        state.requests.labels("health").inc()
        pg_detail, replicator, snapshotter = await asyncio.gather(
            state.postgres.get(),
            state.page("replicator", "/health"),
            state.page("snapshotter", "/health"),
        )
        checks = {
            "postgres": pg_detail,
            "nats": "ok" if state.nc is not None and state.nc.is_connected else "unreachable",
            "replicator": _describe(replicator),
            "snapshotter": _describe(snapshotter),
        }
        down = [name for name, detail in checks.items() if detail != "ok"]
        if not down:
            return JSONResponse({"status": "ok", "checks": checks})
        return JSONResponse(
            {"status": "unavailable", "down": down, "checks": checks}, status_code=503
        )

    @app.get(
        "/status",
        summary="The replicator's figures (the seed's fields), the snapshotter's, the streams'",
    )
    async def status() -> dict[str, Any]:
        state.requests.labels("status").inc()
        rep_resp, snap_resp, streams = await asyncio.gather(
            state.page("replicator", "/metrics"),
            state.page("snapshotter", "/metrics"),
            state.streams.get(),
        )
        rep = _values(rep_resp)
        snap = _values(snap_resp)
        lag = int(rep.get("bridge_wal_lag_bytes", 0))
        body: dict[str, Any] = {
            "status": "ok"
            if rep_resp is not None and rep.get("bridge_connected") == 1
            else "degraded",
            "uptime_seconds": round(rep.get("bridge_uptime_seconds", 0.0), 1),
            "wal_messages_received": int(rep.get("bridge_wal_messages_received_total", 0)),
            "cdc_events_published": int(rep.get("bridge_cdc_events_published_total", 0)),
            "current_lsn": str(Lsn(int(rep.get("bridge_last_ack_lsn", 0)))),
            "is_connected": rep.get("bridge_connected") == 1,
            "reconnect_count": int(rep.get("bridge_reconnects_total", 0)),
            "last_processing_time_us": round(rep.get("bridge_last_processing_time_us", 0.0), 2),
            "slot_active": rep.get("bridge_slot_active") == 1,
            "wal_lag_bytes": lag,
            "wal_lag_mb": round(lag / 1048576, 3),
            "replicator": {"up": rep_resp is not None},
            "snapshotter": {
                "up": snap_resp is not None,
                "snapshots_in_progress": int(snap.get("bridge_snapshots_in_progress", 0)),
                "rows_published": int(snap.get("bridge_snapshot_rows_published_total", 0)),
                "chunks_published": int(snap.get("bridge_snapshot_chunks_published_total", 0)),
                "snapshots_completed": int(snap.get("bridge_snapshot_duration_seconds_count", 0)),
            },
            "streams": streams,
            "timestamp": time.time(),
        }
        return body

    @app.get(
        "/metrics",
        summary="Every service's Prometheus metrics, labelled by service",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        state.requests.labels("metrics").inc()
        scrapes = []
        for name in ("replicator", "snapshotter"):
            resp = await state.page(name, "/metrics")
            up = resp is not None and resp.status_code == 200
            state.service_up.labels(name).set(1 if up else 0)
            if up:
                assert resp is not None
                scrapes.append((name, resp.text))
        scrapes.append(("admin", generate_latest(state.registry).decode()))
        return PlainTextResponse(merge(scrapes), media_type="text/plain; version=0.0.4")

    @app.get(
        "/streams/info",
        summary="A JetStream stream's configuration and state",
        responses={404: {"description": "No such stream"}},
    )
    async def stream_info(stream: Annotated[str, Query(pattern=STREAM_NAME)]) -> dict[str, Any]:
        state.requests.labels("streams_info").inc()
        try:
            info = await state.js().stream_info(stream)
        except NotFoundError:
            raise Error(404, f"stream {stream} does not exist") from None
        return _jsonable(info.as_dict())

    # -- mutating -------------------------------------------------------------------------

    @app.post(
        "/streams/create",
        status_code=201,
        dependencies=[auth],
        summary="Create a file-backed stream on the given subjects",
        responses={401: {}, 403: {}, 409: {"description": "Exists, or subjects overlap"}},
    )
    async def stream_create(
        stream: Annotated[str, Query(pattern=STREAM_NAME)],
        subjects: Annotated[str, Query(min_length=1, max_length=2000)],
    ) -> dict[str, Any]:
        state.requests.labels("streams_create").inc()
        parsed = parse_subjects(subjects)
        for subject in parsed:
            taken = [r for r in state.reserved_subjects if subjects_overlap(subject, r)]
            if taken:
                raise Error(
                    400,
                    f"subject {subject!r} overlaps {', '.join(taken)}, which the bridge "
                    "publishes or serves; a stream there would capture its messages",
                )
        js = state.js()
        try:
            await js.stream_info(stream)
            raise Error(409, f"stream {stream} already exists")
        except NotFoundError:
            pass
        info = await js.add_stream(
            StreamConfig(name=stream, subjects=parsed, storage=StorageType.FILE)
        )
        log.info("created stream %s subjects=%s", stream, parsed)
        return _jsonable(info.as_dict())

    destructive: dict[int | str, dict[str, Any]] = {
        401: {},
        403: {},
        404: {},
        409: {"description": "A bridge stream without force=true"},
    }

    @app.post(
        "/streams/delete", dependencies=[auth], summary="Delete a stream", responses=destructive
    )
    async def stream_delete(
        stream: Annotated[str, Query(pattern=STREAM_NAME)], force: bool = False
    ) -> dict[str, Any]:
        await _destroy(state, stream, force, "delete")
        return {"deleted": stream}

    @app.post(
        "/streams/purge",
        dependencies=[auth],
        summary="Remove every message of a stream",
        responses=destructive,
    )
    async def stream_purge(
        stream: Annotated[str, Query(pattern=STREAM_NAME)], force: bool = False
    ) -> dict[str, Any]:
        await _destroy(state, stream, force, "purge")
        return {"purged": stream}

    @app.post(
        "/shutdown",
        status_code=202,
        dependencies=[auth],
        summary="Ask the replicator and the snapshotter to shut down gracefully",
        responses={401: {}, 403: {}, 503: {"description": "NATS unreachable"}},
    )
    async def shutdown() -> dict[str, str]:
        state.requests.labels("shutdown").inc()
        if state.nc is None or not state.nc.is_connected:
            raise Error(503, "NATS is unreachable: the shutdown requests cannot be sent")
        answers = {}
        for service in ("replicator", "snapshotter"):
            subject = control_subject(service, prefix=settings.control_prefix)
            try:
                reply = await state.nc.request(
                    subject, b"", timeout=5, headers=request_headers(settings.control_token)
                )
                answer = json.loads(reply.data)
                answers[service] = answer.get("status") or f"refused: {answer.get('error')}"
            except Exception as exc:
                answers[service] = f"no answer ({type(exc).__name__})"
        log.warning("shutdown requested: %s", answers)
        return answers

    return app


async def _destroy(state: AdminState, stream: str, force: bool, action: str) -> None:
    """Delete or purge: the bridge's own streams only with `force`; 404 when missing."""
    state.requests.labels(f"streams_{action}").inc()
    if stream in state.own_streams and not force:
        raise Error(
            409,
            f"{stream} is one of the bridge's own streams; {action} it with force=true "
            "if you mean it (consumers lose their data)",
        )
    js = state.js()
    try:
        await (js.delete_stream(stream) if action == "delete" else js.purge_stream(stream))
    except NotFoundError:
        raise Error(404, f"stream {stream} does not exist") from None
    log.warning("%s stream %s", "deleted" if action == "delete" else "purged", stream)


def _describe(resp: httpx.Response | None) -> str:
    if resp is None:
        return "unreachable"
    return "ok" if resp.status_code == 200 else f"unhealthy (HTTP {resp.status_code})"


def _values(resp: httpx.Response | None) -> dict[str, float]:
    if resp is None or resp.status_code != 200:
        return {}
    try:
        return values(resp.text)
    except ValueError:
        return {}


async def _streams_state(state: AdminState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        js = state.js()
    except Error as exc:
        return {"error": exc.message}
    for name in sorted(state.own_streams):
        try:
            s = (await js.stream_info(name)).state
            out[name] = {
                "messages": s.messages,
                "bytes": s.bytes,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "consumers": s.consumer_count,
            }
        except NotFoundError:
            out[name] = {"error": "missing"}
        except Exception as exc:
            out[name] = {"error": type(exc).__name__}
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run(settings: AdminSettings) -> int:
    import uvicorn

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            http=BoundedH11Protocol,
        )
    )
    state: AdminState = app.state.admin
    state.stop_server = lambda: setattr(server, "should_exit", True)
    server.run()
    return state.exit_code
