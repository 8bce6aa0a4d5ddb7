"""How a snapshot request fails: a reason code for the reply (pg_nats_bridge.contract's
REFUSALS) and a message for the requester."""

from __future__ import annotations


def init_stream_missing(stream: str) -> SnapshotError:
    return SnapshotError(
        "init_stream_missing",
        f"stream {stream} does not exist; run `bridge provision` or restart the snapshotter "
        "to create it",
    )


class SnapshotError(Exception):
    """A snapshot request that cannot be served; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
