"""Stream management: `/streams/info`, `/streams/create`, `/streams/delete`,
`/streams/purge`. The bridge's own streams (CDC, INIT and the KV bucket's) need `force` to be
deleted or purged, and no stream may be created over the subjects the bridge publishes or
serves: such a stream would store (and answer with a PubAck) what is meant for the bridge or
its consumers."""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from pg_nats_bridge.contract import reserved_subjects, subjects_overlap
from services.admin.probes import SharedProbe
from services.admin.state import AdminState, Error, State, require_token

log = logging.getLogger("bridge.admin")

STREAM_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(r"^[^\s.*>]+$")

router = APIRouter()


def own_streams(state: AdminState) -> set[str]:
    """The streams the bridge keeps its data in (the KV bucket is a stream too)."""
    s = state.settings
    return {s.cdc_stream, s.init_stream, f"KV_{s.kv_bucket}"}


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


def refuse_reserved(state: AdminState, subjects: list[str]) -> None:
    s = state.settings
    reserved = reserved_subjects(s.snapshot_prefix, s.control_prefix, s.kv_bucket)
    for subject in subjects:
        taken = [r for r in reserved if subjects_overlap(subject, r)]
        if taken:
            raise Error(
                400,
                f"subject {subject!r} overlaps {', '.join(taken)}, which the bridge publishes "
                "or serves; a stream there would capture its messages",
            )


async def create(state: AdminState, stream: str, subjects: str) -> dict[str, Any]:
    parsed = parse_subjects(subjects)
    refuse_reserved(state, parsed)
    js = state.js()
    try:
        await js.stream_info(stream)
        raise Error(409, f"stream {stream} already exists")
    except NotFoundError:
        pass
    info = await js.add_stream(StreamConfig(name=stream, subjects=parsed, storage=StorageType.FILE))
    log.info("created stream %s subjects=%s", stream, parsed)
    return _jsonable(info.as_dict())


async def destroy(state: AdminState, stream: str, force: bool, action: str) -> None:
    """Delete or purge: the bridge's own streams only with `force`; 404 when missing."""
    if stream in own_streams(state) and not force:
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


async def own_streams_state(state: AdminState) -> dict[str, Any]:
    """Messages, bytes, sequences and consumers of the bridge's CDC and INIT streams."""
    out: dict[str, Any] = {}
    try:
        js = state.js()
    except Error as exc:
        return {"error": exc.message}
    for name in sorted({state.settings.cdc_stream, state.settings.init_stream}):
        try:
            info = await js.stream_info(name)
            s, config = info.state, info.config
            out[name] = {
                "messages": s.messages,
                "bytes": s.bytes,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "consumers": s.consumer_count,
                "max_msgs": config.max_msgs if config.max_msgs is not None else -1,
                "max_bytes": config.max_bytes if config.max_bytes is not None else -1,
            }
        except NotFoundError:
            out[name] = {"error": "missing"}
        except Exception as exc:
            out[name] = {"error": type(exc).__name__}
    return out


def streams_probe(state: AdminState) -> SharedProbe[dict[str, Any]]:
    if state.streams is None:
        state.streams = SharedProbe(lambda: own_streams_state(state), max_age=1.0)
    return state.streams


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- the endpoints ----------------------------------------------------------------------------

Stream = Annotated[str, Query(pattern=STREAM_NAME)]
destructive: dict[int | str, dict[str, Any]] = {
    401: {},
    403: {},
    404: {},
    409: {"description": "A bridge stream without force=true"},
}


@router.get(
    "/streams/info",
    summary="A JetStream stream's configuration and state",
    responses={404: {"description": "No such stream"}},
)
async def stream_info(state: State, stream: Stream) -> dict[str, Any]:
    state.requests.labels("streams_info").inc()
    try:
        info = await state.js().stream_info(stream)
    except NotFoundError:
        raise Error(404, f"stream {stream} does not exist") from None
    return _jsonable(info.as_dict())


@router.post(
    "/streams/create",
    status_code=201,
    dependencies=[Depends(require_token)],
    summary="Create a file-backed stream on the given subjects",
    responses={
        400: {"description": "Invalid, or over the bridge's own subjects"},
        401: {},
        403: {},
        409: {"description": "Exists, or subjects overlap"},
    },
)
async def stream_create(
    state: State,
    stream: Stream,
    subjects: Annotated[str, Query(min_length=1, max_length=2000)],
) -> dict[str, Any]:
    state.requests.labels("streams_create").inc()
    return await create(state, stream, subjects)


@router.post(
    "/streams/delete",
    dependencies=[Depends(require_token)],
    summary="Delete a stream",
    responses=destructive,
)
async def stream_delete(state: State, stream: Stream, force: bool = False) -> dict[str, Any]:
    state.requests.labels("streams_delete").inc()
    await destroy(state, stream, force, "delete")
    return {"deleted": stream}


@router.post(
    "/streams/purge",
    dependencies=[Depends(require_token)],
    summary="Remove every message of a stream",
    responses=destructive,
)
async def stream_purge(state: State, stream: Stream, force: bool = False) -> dict[str, Any]:
    state.requests.labels("streams_purge").inc()
    await destroy(state, stream, force, "purge")
    return {"purged": stream}
