"""Snapshot requests as they arrive over NATS: a bounded body, parsed by us, checked by a model.

Anyone on the NATS account can send a request, so nothing in its body is trusted: FastStream's
own decoding lets some bodies raise something other than a JSON error (100,000 nested `[`
raise RecursionError, a 5,000-digit integer Python's int-string limit), and such a request
got no reply at all. Here the body is capped before it is parsed, every parse failure is a
`BadRequest`, and the options are a strict pydantic model (`contract.SnapshotRequest`); the
app's exception middleware turns both into the `bad_request` reply at once
(docs/wire-format.md, "Control plane").
"""

from __future__ import annotations

import json
from typing import Any

from faststream.nats import NatsMessage
from pydantic import ValidationError

from pg_nats_bridge.contract import MAX_REQUEST_BYTES, SnapshotRequest

__all__ = ["BadRequest", "SnapshotRequest", "decode_body", "describe"]


class BadRequest(Exception):
    """A request body that is not a request; the message says what is wrong with it."""


async def decode_body(msg: NatsMessage) -> Any:
    """The body as JSON for the handler's model; `{}` when empty. Used as the subscriber's
    decoder, so FastStream's own (which fails in ways it does not answer) never runs."""
    body = msg.body
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(
            f"the request body is {len(body)} bytes; a request is a JSON object of at most "
            f"{MAX_REQUEST_BYTES} bytes"
        )
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError as exc:  # JSON and UTF-8 errors, an integer over Python's digit limit
        raise BadRequest(f"the request body is not JSON: {exc}") from None


def describe(exc: ValidationError) -> str:
    """A model's refusal in one line: each field, what is wrong, what came."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"  # [0]: the model
        if error.get("type") == "model_type":
            parts.append("the request body must be a JSON object of options")
            continue
        given = error.get("input")
        shown = repr(given) if len(repr(given)) <= 40 else repr(given)[:37] + "..."
        parts.append(f"{where}: {error.get('msg')} (got {shown})")
    known = ", ".join(SnapshotRequest.model_fields)
    return "; ".join(parts) + f"; known options: {known}"
