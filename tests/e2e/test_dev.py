"""`bridge dev`: a newcomer's first ten minutes, as one command, with the embedded servers."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from services.dev.servers import SHARED_ROOT
from tests.harness.processes import free_port
from tests.harness.services import BRIDGE


def wait(condition, timeout: float, what: str, log: Path, process=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"bridge dev exited while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def children(pid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
            except (OSError, IndexError, ValueError):
                pass
    return out


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_dev(data: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    args = [BRIDGE, "dev", "--data-dir", str(data)]
    for key, port in ports.items():
        args += [f"--{key}", str(port)]
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_bridge_dev_brings_up_a_working_stack_from_a_private_directory() -> None:
    # A data directory inside a mode-0700 directory, as in a clone under /root: as root,
    # PostgreSQL runs as another account, which cannot reach it, so bridge dev moves the data
    # where it can and says so.
    tmp_path = Path(tempfile.mkdtemp(prefix="bridge-dev-"))
    assert tmp_path.stat().st_mode & 0o777 == 0o700
    digest = hashlib.sha256(str(tmp_path / "data" / "postgres").encode()).hexdigest()[:12]
    moved = SHARED_ROOT / f"data-{digest}"
    try:
        _exercise(tmp_path)
        if os.geteuid() == 0:
            assert f"its data is in {moved}" in (tmp_path / "dev.log").read_text()
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
        shutil.rmtree(moved, ignore_errors=True)


def _exercise(tmp_path: Path) -> None:
    ports = {
        k: free_port()
        for k in ("port", "replicator-port", "snapshotter-port", "pg-port", "nats-port")
    }
    log = tmp_path / "dev.log"
    dev = start_dev(tmp_path / "data", ports, log)
    try:
        wait(lambda: healthy(ports["port"]), 90, "the admin's /health", log, dev)
        text = log.read_text()
        assert f"http://127.0.0.1:{ports['port']}/" in text and "INSERT INTO demo" in text
        psql_url = re.search(r'psql\s+\S+ "([^"]+)"', text)
        assert psql_url, text
        nats_url = f"nats://127.0.0.1:{ports['nats-port']}"

        tail = subprocess.Popen(
            [BRIDGE, "tail", "--nats-url", nats_url, "--count", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert tail.stdout is not None
        first = tail.stdout.readline()
        assert "following cdc.>" in first, first
        with psycopg.connect(psql_url.group(1), autocommit=True) as conn:
            conn.execute("INSERT INTO demo (note) VALUES ('hello from the test')")
        out, _ = tail.communicate(timeout=30)
        assert tail.returncode == 0
        assert "insert" in out and "public.demo" in out and "hello from the test" in out, out

        snap = subprocess.run(
            [BRIDGE, "snapshot", "demo", "--nats-url", nats_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert snap.returncode == 0 and "row_count" in snap.stdout and "│ 1 " in snap.stdout, (
            snap.stdout
        )
        status = subprocess.run(
            [BRIDGE, "status", "--admin-url", f"http://127.0.0.1:{ports['port']}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0 and "cdc_events_published" in status.stdout

        replicator = next(
            pid for pid, cmd in children(dev.pid).items() if cmd.endswith("replicator ")
        )
        os.kill(replicator, signal.SIGKILL)
        wait(
            lambda: "replicator exited with code -9; restarting" in log.read_text(),
            20,
            "the restart notice",
            log,
        )
        wait(lambda: healthy(ports["port"]), 60, "health after the restart", log)

        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
        assert "[bridge dev] stopped" in log.read_text()
        for port in (ports["pg-port"], ports["nats-port"], ports["port"]):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(30)
        for pid in children(dev.pid):
            os.kill(pid, signal.SIGKILL)

    # The data stays under the data directory: a second run still has the row.
    dev = start_dev(tmp_path / "data", ports, log)
    try:
        wait(lambda: healthy(ports["port"]), 90, "the second start", log, dev)
        with psycopg.connect(psql_url.group(1)) as conn:
            assert conn.execute("SELECT note FROM demo").fetchall() == [("hello from the test",)]
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0


def test_bridge_help_lists_the_people_commands() -> None:
    out = subprocess.run([BRIDGE, "--help"], capture_output=True, text=True, check=True).stdout
    for command in (
        "dev",
        "run",
        "tail",
        "snapshot",
        "status",
        "replicator",
        "snapshotter",
        "admin",
    ):
        assert command in out
    assert sys.executable
