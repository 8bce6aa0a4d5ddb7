"""What a JetStream PubAck says: the message was stored, or why it was not.

The replicator reads one per CDC message and the snapshotter one per chunk; both ask here. A
PubAck is parsed only when it mentions an error (the common one is never decoded): the hot
path of the replicator reads tens of thousands a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg


@dataclass(frozen=True, slots=True)
class PubAckRefusal:
    no_responders: bool  # 503: no stream answered (missing, or between leaders)
    error: Any = None  # JetStream's error object, or the reply itself when unreadable


_NO_RESPONDERS = b"NATS/1.0 503"


def refusal(msg: Msg) -> PubAckRefusal | None:
    """Why JetStream did not store the message; None when it did."""
    if msg.headers and msg.headers.get("Status") == "503":
        return PubAckRefusal(no_responders=True)
    return _error_in(msg.data)


def raw_refusal(payload: bytes, headers: bytes | None) -> PubAckRefusal | None:
    """`refusal` of a PubAck as the protocol carried it (payload and raw header block)."""
    if headers is not None and headers.startswith(_NO_RESPONDERS):
        return PubAckRefusal(no_responders=True)
    return _error_in(payload)


def _error_in(payload: bytes) -> PubAckRefusal | None:
    if b'"error"' not in payload:  # cheap pre-check
        return None
    try:
        error = json.loads(payload).get("error")
    except ValueError:
        error = payload[:200]
    return None if error is None else PubAckRefusal(no_responders=False, error=error)
