"""The snapshotter service: a FastStream NATS app answering snapshot requests, plus the schema
publisher, the snapshot-at-start option and the /metrics and /health endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faststream import FastStream, Path
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import NatsBroker, NatsMessage
from faststream.nats.annotations import NatsMessage as Request  # the message, from context
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from pg_nats_bridge import contract
from pg_nats_bridge.contract import Condition
from pg_nats_bridge.contract.control import SnapshotRunning
from services.snapshotter import metrics
from services.snapshotter.errors import SnapshotError, init_stream_missing
from services.snapshotter.operator_control import SnapshotOperator
from services.snapshotter.publishing import PipelinedPublisher
from services.snapshotter.requests import BadRequest, SnapshotRequest, decode_body, describe
from services.snapshotter.running import RunningSnapshots
from services.snapshotter.schema_watch import SchemaWatcher
from services.snapshotter.settings import SnapshotterSettings
from services.snapshotter.snapshot import SnapshotContext, SnapshotOptions, take_snapshot
from shared.control import ControlEndpoint
from shared.http_endpoint import serve
from shared.log_throttle import ThrottledLog
from shared.nats_connection import NatsRefused, broker_security, connect, servers
from shared.provisioning import provision
from shared.redact import redact
from shared.tables import TableName
from shared.wire import to_json

log = logging.getLogger("bridge.snapshotter")

# Requests one snapshotter lets wait for a snapshot before it answers `busy`.
MAX_WAITING_REQUESTS = 1024
# Partial backfills one snapshotter runs or queues at once: each reads on its own (a backfill
# joins no other snapshot), so unlike full snapshots a flood of them would not collapse.
MAX_BACKFILLS = 8


class Snapshotter:
    def __init__(self, settings: SnapshotterSettings) -> None:
        self.settings = settings
        self.tables = [(t.schema, t.name) for t in map(TableName.parse, settings.table)]
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.running = RunningSnapshots()
        self.slots = asyncio.Semaphore(settings.max_concurrent_snapshots)
        # No --table: the tables of the publication, followed as it publishes them.
        self.watcher = SchemaWatcher(
            self.tables, settings.kv_bucket, settings.publication, not self.tables
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.snapshots: set[asyncio.Task[dict[str, Any]]] = set()  # running take_snapshot
        self.stopping = False
        self.waiting = 0  # requests awaiting a snapshot (their own or one they joined)
        self.db_ok = False
        self.on_shutdown_request: Callable[[], None] = lambda: None
        self.exit_code = 0
        self.secrets = settings.secrets()
        self.refusals = ThrottledLog(log)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.control = ControlEndpoint(
            settings.control_token,
            lambda: self.on_shutdown_request(),  # set by the runner after this
            log,
            on_refused=metrics.control_refused.inc,
        )
        self.operator = SnapshotOperator(
            self.control, self.running, lambda: self.tables, self.resume, settings.init_stream
        )

    def options(
        self,
        chunk_size: int | None = None,
        mode: str | None = None,
        fresh: bool = False,
        where: tuple[Condition, ...] = (),
    ) -> SnapshotOptions:
        """A snapshot's options: a request's own, the settings for the rest."""
        return SnapshotOptions(
            chunk_size or self.settings.chunk_size,
            mode or "exported",
            self.settings.snapshot_transaction_seconds,
            self.settings.snapshot_takeover_seconds,
            fresh,
            where,
            self.settings.snapshot_readers,
            self.settings.snapshot_rows_per_reader,
        )

    def by_token(self) -> dict[str, tuple[str, str]]:
        """The configured tables by subject token, under their current names (a rename is
        followed by the schema watcher)."""
        return {contract.table_token(s, t): (s, t) for s, t in self.tables}

    @property
    def database_url(self) -> str:
        return self.settings.database_dsn()

    def health(self) -> tuple[bool, dict[str, Any]]:
        nats_ok = self.nc is not None and self.nc.is_connected
        return nats_ok and self.db_ok, {
            "nats": nats_ok,
            "postgres": self.db_ok,
            "snapshots_in_progress": len(self.running),
            "snapshots": self.running.progress(),
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        # A snapshot holds a worker thread while its slot is created (which can wait long for
        # open transactions) and while its table is read: with the default pool (6 threads on
        # 2 cores) the 7th of `max_concurrent_snapshots` running at once would wait for one.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self.settings.max_concurrent_snapshots + 4, "snapshot")
        )
        self.nc = await connect(self.settings, "bridge-snapshotter", reconnect=True)
        self.js = self.operator.js = self.nc.jetstream()
        await provision(self.js, self.settings)
        self.tasks.append(asyncio.create_task(self._watch_schemas()))
        if self.settings.snapshot_on_start:
            self.tasks.append(asyncio.create_task(self._snapshot_missing()))

    async def stop(self) -> None:
        """Running snapshots are stopped, not waited for (one can take long, or wait without
        end for a transaction or a lock elsewhere): their requests are answered
        `shutting_down` (what they published has no meta, so no consumer uses it) and their
        temporary slots dropped; FastStream sends the answers before it closes."""
        self.stopping = True
        for work in self.snapshots:
            work.cancel()
        if self.snapshots:
            await asyncio.wait(self.snapshots, timeout=30)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.nc is not None:
            await self.nc.close()

    async def _watch_schemas(self) -> None:
        assert self.js is not None

        def db_ok(ok: bool) -> None:
            self.db_ok = ok

        await self.watcher.run(
            self.database_url,
            self.js,
            self.settings.schema_poll_seconds,
            db_ok,
            self.stop_for,
            self.shown,
        )

    def stop_for(self, reason: str) -> None:
        """A permanent error: say what to fix, and end the service with exit code 2."""
        log.error("stopping: %s", self.shown(reason))
        self.exit_code = 2
        self.on_shutdown_request()

    def shown(self, text: str) -> str:
        """`text` as it may be logged or sent: no part of the database password in it."""
        return redact(text, *self.secrets)

    async def _snapshot_missing(self) -> None:
        assert self.js is not None
        await self.watcher.polled.wait()  # the tables are known (a publication's: found)
        for schema, table in self.tables:
            subject = contract.snapshot_meta_subject(schema, table)
            try:
                await self.js.get_last_msg(self.settings.init_stream, subject)
                continue
            except NotFoundError:
                pass
            try:
                meta = await self.snapshot(schema, table, self.options())
                log.info("start-up snapshot of %s.%s: %s", schema, table, meta["snapshot_id"])
            except SnapshotError as exc:
                if exc.reason == "shutting_down":
                    log.info("start-up snapshot of %s.%s stopped: shutting down", schema, table)
                    return
                log.error("start-up snapshot of %s.%s failed: %s", schema, table, exc)

    def resume(self, schema: str, table: str) -> None:
        """Continue a snapshot an operator resumed, in the background."""
        options = self.options(mode="chunked")
        self.tasks.append(asyncio.create_task(self._continue(schema, table, options)))

    async def _continue(self, schema: str, table: str, options: SnapshotOptions) -> None:
        try:
            meta = await self.snapshot(schema, table, options)
            log.info("resumed snapshot %s of %s.%s done", meta["snapshot_id"], schema, table)
        except SnapshotError as exc:
            log.warning("resumed snapshot of %s.%s: %s", schema, table, self.shown(str(exc)))

    # -- snapshots ------------------------------------------------------------------------

    async def handle_request(self, token: str, request: SnapshotRequest) -> bytes:
        """A request on `<prefix>.<table>`: the meta as JSON, or `{"error": …, "reason": …}`.

        Requests for a table whose snapshot runs here join it, so however many arrive, at
        most one snapshot per configured table runs (and `max_concurrent_snapshots` of them
        read at once); past `MAX_WAITING_REQUESTS` waiting, a request is answered `busy` at
        once rather than left unanswered behind the others."""
        try:
            try:
                schema, table = self.by_token()[token]
            except KeyError:
                configured = ", ".join(f"{s}.{t}" for s, t in self.tables)
                raise SnapshotError(
                    "unknown_table",
                    f"table {token!r} is not configured here (configured: {configured})",
                ) from None
            if self.stopping:
                raise _shutting_down()
            if self.waiting >= MAX_WAITING_REQUESTS:
                raise SnapshotError(
                    "busy",
                    f"{self.waiting} snapshot requests are waiting on this snapshotter; "
                    "ask again later",
                )
            options = self.options(
                request.chunk_size, request.mode, bool(request.fresh), tuple(request.where or ())
            )
            self.waiting += 1
            try:
                return to_json(await self.snapshot(schema, table, options))
            finally:
                self.waiting -= 1
        except SnapshotError as exc:
            return self.refusal(token, exc)
        except Exception as exc:
            metrics.errors.labels("internal").inc()
            error = self.shown(f"snapshot failed: {type(exc).__name__}: {exc}")
            log.error("snapshot request for %s failed: %s", token, error)
            return to_json({"error": error, "reason": "internal"})

    async def heartbeats(self, reply: str, seconds: float) -> None:
        """While a request that asked for them waits, an interim message every `seconds` to its
        inbox: a requester that stops getting them knows this snapshotter died (its answer
        will never come) and asks again, whatever the snapshot's mode."""
        body = SnapshotRunning().encode()
        while True:  # the first at once: a reader that dies within `seconds` is noticed too
            if self.nc is not None and self.nc.is_connected:
                with contextlib.suppress(Exception):  # the next one may get through
                    await self.nc.publish(reply, body, headers={contract.STATUS_HEADER: "running"})
            await asyncio.sleep(seconds)

    def refusal(self, token: str, exc: SnapshotError) -> bytes:
        """The reply to a request that cannot be served, counted and logged (requests any
        client can send are logged at most once every 10 s per reason)."""
        metrics.errors.labels(exc.reason).inc()
        self.refusals.warning(
            exc.reason, "snapshot request for %s refused: %s", token[:100], self.shown(str(exc))
        )
        return to_json({"error": self.shown(str(exc)), "reason": exc.reason})

    async def snapshot(self, schema: str, table: str, options: SnapshotOptions) -> dict[str, Any]:
        """Run one snapshot of the table; requests arriving meanwhile join it (registered
        before the first `await`, so that two requests never both start one). A partial
        backfill joins nothing and nothing joins it: its requester counts on its `lsn` being
        taken after the request (docs/wire-format.md, "Partial backfills")."""
        assert self.js is not None and self.nc is not None
        js = self.js
        if options.where:
            if self.running.backfills() >= MAX_BACKFILLS:
                raise SnapshotError(
                    "busy",
                    f"{MAX_BACKFILLS} backfills are running on this snapshotter; ask again later",
                )
        else:
            running = self.running.full(schema, table)
            if running is not None:
                return {**await asyncio.shield(running.result), "joined": True}
        entry = self.running.add(schema, table, backfill=bool(options.where))
        metrics.in_progress.inc()
        started = time.monotonic()

        def on_chunk(rows: int) -> None:
            metrics.chunks.inc()
            metrics.rows.inc(rows)

        try:
            try:
                await js.stream_info(self.settings.init_stream)
            except NotFoundError:
                raise init_stream_missing(self.settings.init_stream) from None
            async with (
                self.slots,
                PipelinedPublisher(self.nc, self.settings.init_stream) as publisher,
            ):
                if self.stopping:  # asked, or let through a full `slots`, during the stop
                    raise _shutting_down()
                context = SnapshotContext(
                    self.database_url,
                    self.settings.publication,
                    self.settings.value_mode,
                    self.nc.max_payload,
                    primary_url=self.settings.primary_dsn(),
                    init_stream=self.settings.init_stream,
                    js=self.js,
                    owner=self.owner,
                    publish_schema=lambda conn, schema, table: self.watcher.publish_now(
                        conn, js, schema, table
                    ),
                )
                work = asyncio.ensure_future(
                    take_snapshot(
                        context,
                        schema,
                        table,
                        options,
                        publisher,
                        entry.progress,
                        entry.operator,
                        on_chunk,
                    )
                )
                self.snapshots.add(work)
                try:
                    meta = await work
                except asyncio.CancelledError:
                    if not (self.stopping and work.cancelled()):
                        raise  # the request itself was cancelled
                    raise _shutting_down() from None
                finally:
                    self.snapshots.discard(work)
            metrics.duration.observe(time.monotonic() - started)
            entry.result.set_result(meta)
            return meta
        except BaseException as exc:
            entry.result.set_exception(exc)
            entry.result.exception()  # joined requests see it; nobody else must
            raise
        finally:
            metrics.in_progress.dec()
            self.running.remove(entry)


def _shutting_down() -> SnapshotError:
    return SnapshotError(
        "shutting_down",
        "the snapshotter is shutting down; ask again (another snapshotter of the queue group, "
        "or this one once restarted, takes it)",
    )


def _token(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def build_app(settings: SnapshotterSettings) -> tuple[FastStream, Snapshotter]:
    service = Snapshotter(settings)
    # A body that is not a request is answered at once, whatever is wrong with it.
    bad_requests = ExceptionMiddleware()

    @bad_requests.add_handler(BadRequest, publish=True)
    async def on_bad_body(exc: BadRequest, msg: NatsMessage) -> bytes:
        return service.refusal(
            _token(msg.raw_message.subject), SnapshotError("bad_request", str(exc))
        )

    @bad_requests.add_handler(ValidationError, publish=True)
    async def on_bad_options(exc: ValidationError, msg: NatsMessage) -> bytes:
        return service.refusal(
            _token(msg.raw_message.subject), SnapshotError("bad_request", describe(exc))
        )

    # The broker keeps reconnecting through any outage (nats-py's default gives up after 60
    # attempts, leaving a snapshotter that answers nothing); a refusal was caught by
    # `service.start`, which connects first.
    broker = NatsBroker(
        servers(settings),
        security=broker_security(settings),
        max_reconnect_attempts=-1,
        logger=log,
        middlewares=[bad_requests],
    )
    app = FastStream(broker, logger=log)

    # Handlers are cheap while they wait (a join awaits a future; snapshots are bounded by
    # the tables configured and by `max_concurrent_snapshots`), so many run at once: a flood
    # of requests is answered, not queued behind joins waiting for a long snapshot.
    @broker.subscriber(
        f"{settings.snapshot_prefix}.{{table}}",
        queue=settings.queue_group,
        max_workers=MAX_WAITING_REQUESTS + 64,
        decoder=decode_body,
    )
    async def on_snapshot_request(
        request: SnapshotRequest, message: Request, table: str = Path()
    ) -> bytes:
        raw = message.raw_message
        beat = contract.heartbeat_seconds(raw.headers)
        beats = (
            asyncio.create_task(service.heartbeats(raw.reply, beat))
            if beat is not None and raw.reply
            else None
        )
        try:
            return await service.handle_request(table, request)
        finally:
            if beats is not None:
                beats.cancel()

    # Operator control (shutdown; a chunked snapshot's pause, resume, cancel): heard by every
    # snapshotter (no queue group), answered by the one that acts, so FastStream sends no
    # reply of its own; the token is checked before the body is read.
    prefix = settings.control_prefix

    async def body_unread(msg: NatsMessage) -> None:
        """The handlers read the raw message themselves, once the token is checked."""

    @broker.subscriber(
        contract.control_subject("snapshotter", prefix=prefix), no_reply=True, decoder=body_unread
    )
    async def on_shutdown_request(message: Request) -> None:
        await service.control.handle(message.raw_message)

    @broker.subscriber(
        contract.control_subject("snapshotter", "snapshot", prefix=prefix),
        no_reply=True,
        decoder=body_unread,
    )
    async def on_operator_request(message: Request) -> None:
        await service.operator.handle(message.raw_message)

    server_holder: dict[str, Any] = {}
    service.on_shutdown_request = app.exit

    @app.on_startup
    async def startup() -> None:
        server_holder["http"] = serve(settings.port, metrics.REGISTRY, service.health)
        await service.start()

    @app.on_shutdown
    async def shutdown() -> None:
        await service.stop()
        if "http" in server_holder:
            server_holder["http"].shutdown()

    return app, service


def run(settings: SnapshotterSettings) -> int:
    app, service = build_app(settings)
    try:
        asyncio.run(app.run())
    except NatsRefused as exc:
        log.error("stopping: %s", service.shown(str(exc)))
        return 2
    return service.exit_code
