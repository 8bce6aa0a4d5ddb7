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


def refusal(msg: Msg) -> PubAckRefusal | None:
    """Why JetStream did not store the message; None when it did."""
    if msg.headers and msg.headers.get("Status") == "503":
        return PubAckRefusal(no_responders=True)
    if b'"error"' not in msg.data:  # cheap pre-check
        return None
    try:
        error = json.loads(msg.data).get("error")
    except ValueError:
        error = msg.data[:200]
    return None if error is None else PubAckRefusal(no_responders=False, error=error)
