"""The read-only endpoints, open to whoever reaches the port: the status page, `/health`,
`/status`, `/metrics` (their answers: report.py), `/asyncapi.json` (the NATS interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from pg_nats_bridge.contract.asyncapi import document as asyncapi_document
from services.admin import report
from services.admin.state import State
from services.admin.streams import streams_probe
from shared.build import version as package_version

STATUS_PAGE = Path(__file__).with_name("status.html")


router = APIRouter()


@router.get("/", include_in_schema=False)
async def status_page() -> HTMLResponse:
    return HTMLResponse(STATUS_PAGE.read_text())


@router.get(
    "/health",
    summary="200 when PostgreSQL, NATS, the replicator and the snapshotter answer",
    responses={503: {"description": "Something is down; the body names it"}},
)
async def health(state: State) -> JSONResponse:
    state.requests.labels("health").inc()
    code, body = await report.health(state)
    return JSONResponse(body, status_code=code)


@router.get(
    "/status",
    summary="The replicator's figures (the seed's fields), the snapshotter's, the streams'",
)
async def status(state: State) -> dict[str, Any]:
    state.requests.labels("status").inc()
    return await report.status(state, await streams_probe(state).get())


@router.get(
    "/metrics",
    summary="Every service's Prometheus metrics, labelled by service",
    response_class=PlainTextResponse,
)
async def metrics(state: State) -> PlainTextResponse:
    state.requests.labels("metrics").inc()
    text = await report.metrics(state, await streams_probe(state).get())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get(
    "/asyncapi.json",
    summary="The bridge's NATS interface as an AsyncAPI 3.0 document (from the contract's models)",
)
async def asyncapi(state: State) -> dict[str, Any]:
    state.requests.labels("asyncapi").inc()
    return asyncapi_document(package_version())
