"""The `bridge` commands for people at a console: `tail`, `snapshot`, `status`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from nats.js.api import DeliverPolicy
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from pg_nats_bridge import contract
from pg_nats_bridge.snapshot_request import SnapshotRefused, ask_for_snapshot
from services.tools.arguments import (
    SnapshotArguments,
    StatusArguments,
    TailArguments,
    parse_condition,
)
from shared.nats_connection import connect
from shared.tables import TableName
from shared.wire import unpack

console = Console(highlight=False)
COLORS = {"insert": "green", "update": "yellow", "delete": "red", "truncate": "magenta"}


def _token(table: str) -> str:
    name = TableName.parse(table)
    return contract.table_token(name.schema, name.name)


def format_event(event: dict[str, Any]) -> str:
    """One event as a console line; every value escaped, so that nothing in a row (or in a
    message someone else published) is read as console markup."""
    if not isinstance(event, dict):
        raise TypeError("not a CDC event")
    if "operation" not in event:  # a logical decoding message
        return f"[cyan]message[/] {escape(str(event.get('prefix')))}: " + escape(
            repr(event.get("content"))
        )
    if not all(
        isinstance(event.get(k), str) for k in ("operation", "schema", "table", "commit_lsn")
    ):
        raise TypeError("not a CDC event")
    op = event["operation"]
    when = str(event.get("commit_time", ""))[11:23]
    head = (
        f"[dim]{escape(when)} {escape(str(event.get('commit_lsn', '')))}[/] "
        f"[{COLORS.get(op, 'white')}]{escape(op):<8}[/] "
        f"[bold]{escape(event['schema'])}.{escape(event['table'])}[/]"
    )
    parts = []
    if op == contract.SCHEMA_CHANGE and isinstance(event.get("columns"), list):
        names = [c.get("name") for c in event["columns"] if isinstance(c, dict)]
        parts.append(f"columns={names} replica_identity={event.get('replica_identity')}")
    if event.get("old"):
        parts.append(f"old={event['old']}")
    if event.get("data") is not None:
        parts.append(f"data={event['data']}")
    if event.get("unchanged"):
        parts.append(f"unchanged={event['unchanged']}")
    return head + " " + escape(" ".join(parts))


def tail(settings: TailArguments) -> int:
    table = settings.tail_table
    subject = contract.cdc_filter(_token(table) if table else None)

    async def run() -> int:
        nc = await connect(settings, "bridge-tail", reconnect=True)
        try:
            js = nc.jetstream()
            policy = DeliverPolicy.ALL if settings.from_start else DeliverPolicy.NEW
            sub = await js.subscribe(
                subject, stream=settings.cdc_stream, ordered_consumer=True, deliver_policy=policy
            )
            console.print(
                f"[dim]following {subject} on {settings.cdc_stream} "
                f"({'from the start' if settings.from_start else 'from now'}); Ctrl-C stops[/]"
            )
            seen = skipped = 0
            async for msg in sub.messages:
                try:
                    line = format_event(unpack(msg.data))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    # Anyone on the account can publish on cdc.>: one foreign message is
                    # shown as such, never the end of the tail.
                    skipped += 1
                    why = "not MessagePack" if isinstance(exc, ValueError) else "not a CDC event"
                    seq = msg.metadata.sequence.stream
                    console.print(
                        f"[yellow]skipped[/] {settings.cdc_stream} sequence {seq} "
                        f"({escape(msg.subject)}): {why}",
                        soft_wrap=True,
                    )
                    continue
                console.print(line, soft_wrap=True)
                if not contract.is_schema_change(msg.subject):  # shown, not counted
                    seen += 1
                if settings.count and seen >= settings.count:
                    break
            if skipped:
                console.print(f"[dim]{skipped} foreign message(s) skipped[/]")
            return 0
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


class ChunkCount:
    """Rows of the chunks seen so far, against the estimate they carry: what `bridge snapshot`
    shows while it waits (a message that is not a chunk of the bridge's counts nothing)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rows = 0
        self.estimated: int | None = None

    def add(self, payload: bytes) -> None:
        try:
            header = contract.chunk_header(payload)
        except ValueError:  # anyone on the account may publish on the subject
            return
        self.rows += header.rows
        if header.estimated_rows is not None:
            self.estimated = header.estimated_rows

    def __str__(self) -> str:
        rate = self.rows / max(time.monotonic() - self.started, 1e-3)
        left = None
        if self.estimated and rate > 0:
            left = max(self.estimated - self.rows, 0) / rate
        return describe_progress(
            {
                "rows_done": self.rows,
                "rows_estimated": self.estimated,
                "rows_per_second": round(rate),
                "seconds_left": left,
            }
        )


def snapshot(settings: SnapshotArguments) -> int:
    table_name = settings.snapshot_table
    token = _token(table_name)
    try:
        where = [parse_condition(text) for text in settings.where]
    except ValueError as exc:
        console.print(f"[red]--where:[/] {escape(str(exc))}")
        return 2
    options = {"chunk_size": settings.chunk_size, "mode": settings.snapshot_mode, "where": where}
    request = {k: v for k, v in options.items() if v}

    async def run() -> int:
        nc = await connect(settings, "bridge-snapshot")
        try:
            seen = ChunkCount()
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), console=console
            ) as bar:
                task = bar.add_task(f"snapshot of {table_name}: waiting", total=None)

                def on_chunk(msg: Any) -> None:
                    seen.add(msg.data)
                    shown = f"snapshot of {escape(table_name)}: {seen}"
                    bar.update(task, description=shown)

                # Asked again when nobody answers or the reader dies (a chunked snapshot: as
                # soon as its progress record says it can be continued).
                try:
                    answer = await ask_for_snapshot(
                        nc,
                        nc.jetstream(),
                        token,
                        request,
                        table=table_name,
                        request_prefix=settings.snapshot_prefix,
                        init_stream=settings.init_stream,
                        on_chunk=on_chunk,
                        # An operator is told of a pause, a cancel, an error; a snapshotter
                        # that is busy or stopping is asked again.
                        give_up=contract.REFUSALS - {"busy", "shutting_down"},
                    )
                except SnapshotRefused as exc:
                    reason = escape(exc.reply.reason)
                    console.print(f"[red]snapshot failed ({reason}):[/] ", end="")
                    console.print(escape(exc.reply.error))
                    return 1
            reply = contract.SnapshotMeta.model_validate(answer)
            title = "backfill" if reply.partial else "snapshot"
            table = Table(title=f"{title} of {table_name}")
            for key in ("snapshot_id", "mode", "lsn", "replay_until", "row_count", "batch_count"):
                if getattr(reply, key) is not None:
                    table.add_row(key, str(getattr(reply, key)))
            table.add_row("timestamp", str(reply.timestamp))
            console.print(table)
            return 0
        finally:
            await nc.close()

    return asyncio.run(run())


def status(own: StatusArguments) -> int:
    try:
        body = httpx.get(f"{own.admin_url.rstrip('/')}/status", timeout=10).json()
        health = httpx.get(f"{own.admin_url.rstrip('/')}/health", timeout=10).json()
    except httpx.HTTPError as exc:
        console.print(f"[red]the admin API at {own.admin_url} does not answer:[/] {exc}")
        return 1
    table = Table(title=f"pg-nats-bridge — {health.get('status')}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, detail in health.get("checks", {}).items():
        table.add_row(name, detail)
    for key in (
        "status",
        "cdc_events_published",
        "wal_messages_received",
        "current_lsn",
        "wal_lag_mb",
        "slot_active",
        "reconnect_count",
        "uptime_seconds",
    ):
        table.add_row(key, str(body.get(key)))
    for name, stream in body.get("streams", {}).items():
        if isinstance(stream, dict):
            table.add_row(f"stream {name}", str(stream.get("messages", stream.get("error"))))
    for running in (body.get("snapshotter") or {}).get("running") or ():
        table.add_row(escape(f"snapshot of {running.get('table')}"), describe_progress(running))
    console.print(table)
    return 0


def describe_progress(running: dict[str, Any]) -> str:
    """One running snapshot as the admin's /status gives it, in a line."""
    done, estimated = running.get("rows_done") or 0, running.get("rows_estimated")
    text = f"{done:,} rows"
    if estimated:
        text += f" of ~{estimated:,} ({min(100.0, 100 * done / estimated):.0f}%)"
    text += f", {running.get('rows_per_second') or 0:,} rows/s"
    if running.get("seconds_left") is not None:
        text += f", ~{running['seconds_left']:.0f} s left"
    return escape(text)
