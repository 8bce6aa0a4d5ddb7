"""Runs the three services as child processes, restarts one that crashes, stops all on Ctrl-C."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.dev.servers import NatsProcess, PostgresProcess, ServerError
from services.dev.settings import DevSettings
from shared import postgres
from shared.tables import TableName

BRIDGE = str(Path(sys.executable).parent / "bridge")


@dataclass
class Child:
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen([BRIDGE, self.name], env=self.env)
        self.started = time.monotonic()


def say(text: str) -> None:
    print(f"[bridge dev] {text}", flush=True)


def ensure_demo_table(url: str, tables: list[str]) -> list[str]:
    """With no table configured, `bridge dev` replicates a demo table it creates."""
    if tables:
        return tables
    with postgres.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text,"
            " created_at timestamptz DEFAULT now())"
        )
    return ["demo"]


def run(settings: DevSettings, embedded: bool) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pg = nats = None
    database_url = settings.database_url.get_secret_value()
    nats_url = settings.nats_url
    try:
        if embedded:
            pg = PostgresProcess(settings.data_dir / "postgres", settings.pg_port, announce=say)
            nats = NatsProcess(settings.data_dir / "nats", settings.nats_port)
            say(f"starting PostgreSQL (data in {pg.root}) and nats-server (data in {nats.root})")
            pg.start()
            nats.start()
            database_url, nats_url = pg.url(), nats.url
        tables = ensure_demo_table(database_url, settings.table) if embedded else settings.table
        if not tables:
            say("no tables configured: set --table / BRIDGE_TABLE")
            return 2
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        base.update(
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_NATS_URL=nats_url,
            BRIDGE_TABLE=",".join(tables),
            BRIDGE_SLOT=settings.slot,
            BRIDGE_PUBLICATION=settings.publication,
            BRIDGE_STREAM=",".join(settings.stream),
            BRIDGE_VALUE_MODE=settings.value_mode.value,
            BRIDGE_LOG_LEVEL=settings.log_level,
        )
        for key in ("BRIDGE_ADMIN_TOKEN",):
            if key in os.environ:
                base[key] = os.environ[key]
        # The services obey control requests (the admin's /shutdown) only with this token;
        # one made up for this run unless given.
        base["BRIDGE_CONTROL_TOKEN"] = os.environ.get(
            "BRIDGE_CONTROL_TOKEN", secrets.token_urlsafe(24)
        )
        rep, snap = (
            f"http://127.0.0.1:{settings.replicator_port}",
            f"http://127.0.0.1:{settings.snapshotter_port}",
        )
        children = [
            Child("replicator", {**base, "BRIDGE_PORT": str(settings.replicator_port)}),
            Child("snapshotter", {**base, "BRIDGE_PORT": str(settings.snapshotter_port)}),
            Child(
                "admin",
                {
                    **base,
                    "BRIDGE_PORT": str(settings.port),
                    "BRIDGE_REPLICATOR_URL": rep,
                    "BRIDGE_SNAPSHOTTER_URL": snap,
                },
            ),
        ]
        for child in children:
            child.start()
        table = TableName.parse(tables[0])
        say("up:")
        say(f"  admin      http://127.0.0.1:{settings.port}/  (status page, /health, /metrics)")
        say(f"  NATS       {nats_url}")
        if pg is not None:
            say(f"  psql       {pg.psql}")
        say(f"  tables     {', '.join(tables)}")
        example = (
            "INSERT INTO demo (note) VALUES ('hello')"
            if tables == ["demo"]
            else f"-- change a row of {table}"
        )
        say(f"  try:       bridge tail   (in another terminal), then: {example}")
        while not stop.wait(1.0):
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None and not stop.is_set():
                    child.restarts += 1
                    delay = min(30, 2 ** min(child.restarts, 5))
                    say(
                        f"{child.name} exited with code {code}; restarting in {delay} s "
                        f"(restart #{child.restarts})"
                    )
                    if stop.wait(delay):
                        break
                    child.start()
        say("stopping")
        for child in reversed(children):
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(children):
            if child.process is not None:
                try:
                    child.process.wait(30)
                except subprocess.TimeoutExpired:
                    child.process.kill()
        return 0
    except ServerError as exc:
        say(str(exc))
        return 1
    finally:
        if nats is not None:
            nats.stop()
        if pg is not None:
            pg.stop()
        say("stopped")
