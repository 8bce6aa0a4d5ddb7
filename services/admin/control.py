"""`/shutdown`: the replicator and the snapshotter asked over NATS, with the control token
(shared/control.py), to shut down gracefully; `/snapshots/{table}/{action}`: a chunked
snapshot paused, resumed or cancelled the same way."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends

from pg_nats_bridge.contract import control_subject
from services.admin.state import SERVICES, AdminState, Error, State, require_token
from shared.control import request_headers

log = logging.getLogger("bridge.admin")

router = APIRouter()


async def shutdown_services(state: AdminState) -> dict[str, str]:
    """Each service's answer: `shutting down`, a refusal, or no answer."""
    if state.nc is None or not state.nc.is_connected:
        raise Error(503, "NATS is unreachable: the shutdown requests cannot be sent")
    settings = state.settings
    answers = {}
    for service in SERVICES:
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


@router.post(
    "/shutdown",
    status_code=202,
    dependencies=[Depends(require_token)],
    summary="Ask the replicator and the snapshotter to shut down gracefully",
    responses={
        401: {},
        403: {"description": "every service that answered refused (the control token)"},
        503: {"description": "NATS unreachable, or no service answered"},
    },
)
async def shutdown(state: State) -> dict[str, str]:
    """202 when at least one service is shutting down (the body says what each answered); a
    refusal or silence from all of them is not a success."""
    state.requests.labels("shutdown").inc()
    answers = await shutdown_services(state)
    if any(a == "shutting down" for a in answers.values()):
        return answers
    said = "; ".join(f"{service}: {answer}" for service, answer in answers.items())
    if any(a.startswith("refused") for a in answers.values()):
        raise Error(403, f"no service is shutting down ({said}): is BRIDGE_CONTROL_TOKEN the same?")
    raise Error(503, f"no service is shutting down ({said})")


@router.post(
    "/snapshots/{table}/{action}",
    dependencies=[Depends(require_token)],
    summary="Pause, resume or cancel a chunked snapshot of a table",
    responses={
        401: {},
        403: {},
        404: {"description": "no chunked snapshot of the table to act on"},
        503: {"description": "NATS unreachable"},
    },
)
async def snapshot_control(
    state: State, table: str, action: Literal["pause", "resume", "cancel"]
) -> dict[str, Any]:
    """Asks the snapshotters over NATS (`<control_prefix>.snapshotter.snapshot`); the one
    that acts answers: pause and cancel stop the reader after its current range (the progress
    stays recorded), resume continues a paused one from there."""
    state.requests.labels("snapshot_control").inc()
    if state.nc is None or not state.nc.is_connected:
        raise Error(503, "NATS is unreachable: the request cannot be sent")
    settings = state.settings
    subject = control_subject("snapshotter", "snapshot", prefix=settings.control_prefix)
    body = json.dumps({"action": action, "table": table}).encode()
    try:
        reply = await state.nc.request(
            subject, body, timeout=5, headers=request_headers(settings.control_token)
        )
    except Exception:
        raise Error(
            404,
            f"no snapshotter has a chunked snapshot of {table!r} to {action} (none running, "
            "paused or stopped)",
        ) from None
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        raise Error(400 if answer.get("reason") == "bad_request" else 403, answer["error"])
    log.warning("snapshot %s of %s: %s", action, table, answer)
    return answer
