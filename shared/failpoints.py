"""Named failpoints: a test makes a stage crash, stall or fail at an exact point instead of
sleeping and killing at a guessed moment.

`BRIDGE_FAILPOINTS="reader.after_acked=exit@5,publisher.after_write=sleep:2"` — at the named
point: `exit` ends the process at once like kill -9 (no cleanup, no final status update),
`sleep:S` stalls the calling thread S seconds, `error` raises `FailpointError`; `@N` fires on
the N-th time the point is reached (default the first), and only then. Unset (production), a
point costs one global lookup.

Points: `reader.after_acked` (the reader took an acknowledgement, before any status update
about it), `reader.after_status` (a status update was sent), `publisher.after_write` (a
batch's messages were written to NATS, before any PubAck), `snapshot.after_chunk` (a snapshot
chunk was sent to JetStream, before the next), `snapshot.before_readers` (a parallel exported
snapshot was exported; its reader processes are about to start), `snapshot.after_read` (every
chunk is stored; the schema document and the meta are not published yet).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


class FailpointError(RuntimeError):
    """Raised by a failpoint set to `error`."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    points: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        points[name.strip()] = (action.strip(), int(nth) if nth else 1)
    return points


_POINTS = _parse(os.environ.get("BRIDGE_FAILPOINTS", ""))
_HITS: dict[str, int] = {}


def hit(name: str) -> None:
    if not _POINTS:
        return
    point = _POINTS.get(name)
    if point is None:
        return
    action, nth = point
    count = _HITS[name] = _HITS.get(name, 0) + 1
    if count != nth:
        return
    log.warning("failpoint %s: %s", name, action)
    if action == "exit":
        os._exit(137)
    if action.startswith("sleep:"):
        time.sleep(float(action[6:]))
    elif action == "error":
        raise FailpointError(f"failpoint {name}")
