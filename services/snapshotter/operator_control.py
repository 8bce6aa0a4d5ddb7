"""An operator's pause, resume and cancel of a chunked snapshot, over NATS
(`<control_prefix>.snapshotter.snapshot`, a `contract.SnapshotControl` with the control token).

Every snapshotter hears it; the one that acts answers (the one reading the snapshot pauses or
cancels it after its current range; any one marks a paused snapshot resumable and continues
it, or cancels one nobody reads), the others stay silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from pydantic import ValidationError

from pg_nats_bridge import contract
from pg_nats_bridge.contract.control import ControlReply, SnapshotControl
from services.snapshotter.resume import change_state
from services.snapshotter.running import RunningSnapshots
from shared.control import ControlEndpoint
from shared.wire import to_json

log = logging.getLogger("bridge.snapshotter")

_EXPECTED = 'expected {"action": "pause"|"resume"|"cancel", "table": <a configured table>}'


class SnapshotOperator:
    def __init__(
        self,
        control: ControlEndpoint,
        running: RunningSnapshots,
        tables: Callable[[], list[tuple[str, str]]],
        resume: Callable[[str, str], None],
        init_stream: str,
    ) -> None:
        self.control, self.running, self.tables = control, running, tables
        self.resume = resume  # continues a resumed snapshot in the background
        self.init_stream = init_stream
        self.js: JetStreamContext | None = None  # set once connected

    async def handle(self, msg: Any) -> None:
        """One request (a nats-py message): authorized, read, obeyed, answered if this
        snapshotter acted."""
        if not await self.control.authorized(msg):
            return
        try:
            request = SnapshotControl.model_validate_json(
                msg.data[: contract.MAX_REQUEST_BYTES + 1] or b"{}"
            )
            schema, table = self._table(request.table)
        except (ValidationError, LookupError):
            if msg.reply:
                await msg.respond(to_json({"error": _EXPECTED, "reason": "bad_request"}))
            return
        answer = await self.operate(request.action, schema, table)
        if answer is not None and msg.reply:
            await msg.respond(answer.encode())

    def _table(self, name: str) -> tuple[str, str]:
        for schema, table in self.tables():
            if name in (f"{schema}.{table}", table, contract.table_token(schema, table)):
                return schema, table
        raise LookupError(name)

    async def operate(self, action: str, schema: str, table: str) -> ControlReply | None:
        assert self.js is not None
        running = self.running.full(schema, table)
        if running is not None and action in ("pause", "cancel"):
            running.operator.action = action
            log.warning("%s of the chunked snapshot of %s.%s requested", action, schema, table)
            return ControlReply(
                status=f"{action} requested: the reader stops after its current range"
            )
        token = contract.table_token(schema, table)
        if action == "resume":
            record = await change_state(self.js, self.init_stream, token, ("paused",), "stopped")
            if record is None:
                return None
            log.warning(
                "the chunked snapshot %s of %s.%s resumed", record.snapshot_id, schema, table
            )
            self.resume(schema, table)
            return ControlReply(status="resumed", snapshot_id=record.snapshot_id)
        if action == "cancel":
            record = await change_state(
                self.js, self.init_stream, token, ("paused", "stopped"), "cancelled"
            )
            if record is not None:
                return ControlReply(status="cancelled", snapshot_id=record.snapshot_id)
        return None
