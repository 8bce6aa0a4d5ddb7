"""The admin HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs): routers over plain
functions — reads.py (status page, /health, /status, /metrics), streams.py (stream
management), control.py (/shutdown) — sharing one `AdminState` (state.py).

Read-only endpoints are open; mutating ones need `Authorization: Bearer $BRIDGE_ADMIN_TOKEN`
and answer 403 while no token is configured. Nothing secret (database passwords, the tokens)
appears in responses or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.js.errors import APIError

from services.admin import control, reads, streams
from services.admin.http_protocol import BoundedH11Protocol, LimitHeaders
from services.admin.settings import AdminSettings
from services.admin.state import AdminState, Error

log = logging.getLogger("bridge.admin")
logging.getLogger("httpx").setLevel(logging.WARNING)


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
    for router in (reads.router, streams.router, control.router):
        app.include_router(router)

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

    return app


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
    # uvicorn shuts down on SIGTERM/SIGINT, then raises the signal again under the handlers
    # it found: with the defaults that killed the finished process (exit -15). The shutdown is
    # done by then, so these handlers ignore it and the admin exits 0, as the others do.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return state.exit_code
