"""Settings of every service: command-line flags and `BRIDGE_*` environment variables.

One model per service, each built on `BridgeSettings`. Flags win over the environment, which
wins over defaults; `--table a,b` and `BRIDGE_TABLE=a,b` both take a comma-separated list.
docs/configuration.md's settings tables are generated from these models
(`python -m services.settings_doc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from psycopg.conninfo import make_conninfo
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict

from pg_nats_bridge import contract
from shared.codec import ValueMode
from shared.postgres import SSL_MODES, check_database_url
from shared.redact import secrets_in_file, secrets_in_url
from shared.tables import TableName, TableNameError, split_column_list

CommaList = Annotated[list[str], NoDecode]


def split_list(text: str) -> list[str]:
    """Split on commas outside double quotes and parentheses: `a,"b,c",d` is three names
    (PostgreSQL quoting, so a table name may hold a comma), `people(id,name),orders` two."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    depth = 0  # inside a column list: `people(id,name)` is one entry
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
        if char == "," and not quoted and depth <= 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, list | tuple):
        return [part for item in value for part in split_list(str(item))]
    return value


class BridgeSettings(BaseSettings):
    """Settings every service shares: where the servers are and what to replicate."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="bridge",
        cli_show_env_vars=True,
        cli_hide_none_type=True,
        extra="ignore",
    )

    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        description="PostgreSQL connection URL (libpq form); the password is never logged",
    )
    primary_url: SecretStr | None = Field(
        None,
        description="When the database URL is a hot standby (PostgreSQL 16+): its primary's "
        "URL. The bridge then creates the publication and sets replica identity there, and "
        "asks it for a running-transactions record (pg_log_standby_snapshot()) while a slot "
        "is created on the standby. The password file and TLS settings apply to it too",
    )
    database_password_file: Path | None = Field(
        None,
        description="File holding the database password (a Docker or Kubernetes secret); "
        "wins over a password in the URL",
    )
    database_sslmode: str | None = Field(
        None,
        description="libpq sslmode (`require`, `verify-ca`, `verify-full`…); wins over the URL's",
    )
    database_sslrootcert: Path | None = Field(
        None, description="CA certificate(s) the database server's certificate must chain to"
    )
    database_sslcert: Path | None = Field(
        None, description="Client certificate presented to PostgreSQL"
    )
    database_sslkey: Path | None = Field(
        None, description="Private key of the client certificate (mode 0600)"
    )
    nats_url: str = Field(
        "nats://localhost:4222",
        description="NATS server URL(s), comma-separated; `tls://` requires TLS, "
        "`nats://user:password@…` or `nats://token@…` authenticate",
    )
    nats_user: str | None = Field(None, description="NATS user (with --nats-password)")
    nats_password: SecretStr | None = Field(None, description="NATS password")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token")
    nats_nkey_seed_file: Path | None = Field(
        None, description="File holding the NKey seed (`SU…`) the NATS user signs in with"
    )
    nats_creds_file: Path | None = Field(
        None, description="NATS credentials file (user JWT + NKey seed, as `nsc` writes it)"
    )
    nats_tls_ca_file: Path | None = Field(
        None, description="CA certificate(s) the NATS server's certificate must chain to"
    )
    nats_tls_cert_file: Path | None = Field(
        None, description="Client certificate for mutual TLS with NATS"
    )
    nats_tls_key_file: Path | None = Field(
        None, description="Private key of the NATS client certificate"
    )
    table: CommaList = Field(
        default_factory=list,
        description="Tables of interest, comma-separated; `schema.table`, or `table` for public; "
        "`people(id,name)` publishes only those columns (PostgreSQL 15+, the bridge's own "
        "publication). Left out: every table of the operator's publication (--publication, "
        "e.g. FOR ALL TABLES), tables added to it later included",
    )
    row_filter: dict[str, str] = Field(
        default_factory=dict,
        description="Row filters of the bridge's own publication (PostgreSQL 15+), JSON: "
        """`{"orders": "region = 'eu'"}` publishes only the rows the SQL condition admits""",
    )
    slot: str = Field("bridge_slot", description="Logical replication slot name")
    publication: str = Field("bridge_pub", description="Publication name")
    stream: CommaList = Field(
        default_factory=lambda: [contract.CDC_STREAM, contract.INIT_STREAM],
        description="JetStream stream names: CDC events, then snapshots and schemas",
    )
    kv_bucket: str = Field(
        contract.KV_BUCKET, description="JetStream KV bucket holding table schemas"
    )
    value_mode: ValueMode = Field(
        ValueMode.TYPED,
        description="`typed`: native numbers, booleans, bytes; `text`: PostgreSQL's text output",
    )
    snapshot_prefix: str = Field(
        contract.SNAPSHOT_PREFIX, description="Snapshot requests arrive on <prefix>.<table>"
    )
    control_prefix: str = Field(
        contract.CONTROL_PREFIX,
        description="NATS subject prefix of control requests (shutdown)",
    )
    control_token: SecretStr | None = Field(
        None,
        description="Token a control request over NATS must carry (the admin sends it); "
        "unset: the services refuse control requests",
    )
    port: int = Field(8080, ge=0, le=65535, description="HTTP port for /health and /metrics")
    log_level: str = Field("INFO", description="Python logging level")

    cdc_max_age_seconds: float = Field(
        60.0, gt=0, description="CDC stream: message retention, seconds (used when creating it)"
    )
    cdc_max_msgs: int = Field(1_000_000, gt=0, description="CDC stream: most messages kept")
    cdc_max_bytes: int | None = Field(
        None,
        gt=0,
        description="CDC stream: most bytes kept; default: 1 GB, or the most JetStream can "
        "reserve below that (logged)",
    )
    duplicate_window_seconds: float | None = Field(
        None,
        gt=0,
        description="CDC stream: Msg-Id duplicate window, seconds; default: the CDC max age",
    )
    init_max_age_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="INIT stream: message retention, seconds"
    )
    init_max_msgs: int = Field(10_000_000, gt=0, description="INIT stream: most messages kept")
    init_max_bytes: int | None = Field(
        None,
        gt=0,
        description="INIT stream: most bytes kept; default: no byte limit (age and count bound "
        "it, and nothing is reserved)",
    )
    kv_history: int = Field(10, ge=1, le=64, description="KV bucket: revisions kept per key")
    stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of the CDC and INIT streams and the KV bucket (used when creating "
        "them); 3 on a JetStream cluster survives the loss of a server",
    )

    _database_password: str | None = PrivateAttr(None)
    _column_lists: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    _split_table = field_validator("table", "stream", mode="before")(_split_commas)

    @model_validator(mode="after")
    def _publication_parts(self) -> Self:
        """`--table` entries with a column list keep only the name (everything else uses
        names); the lists, and the row filters, must name configured tables."""
        names = []
        for entry in self.table:
            try:
                name, columns = split_column_list(entry)
                TableName.parse(name)
            except TableNameError as exc:
                raise ValueError(f"--table (BRIDGE_TABLE): {exc}") from None
            names.append(name)
            if columns is not None:
                self._column_lists[str(TableName.parse(name))] = columns
        self.table = names
        configured = {str(TableName.parse(n)) for n in names}
        for key, condition in self.row_filter.items():
            try:
                known = str(TableName.parse(key)) in configured
            except TableNameError:
                known = False
            if not known:
                raise ValueError(
                    f"--row-filter (BRIDGE_ROW_FILTER) names {key!r}, which is not in --table"
                )
            if not condition.strip():
                raise ValueError(f"--row-filter for {key!r} is empty")
        return self

    def published_parts(self) -> dict[TableName, tuple[tuple[str, ...] | None, str | None]]:
        """Per configured table with either, its column list and row filter (the bridge's own
        publication is created with them)."""
        filters = {TableName.parse(k): v.strip() for k, v in self.row_filter.items()}
        out: dict[TableName, tuple[tuple[str, ...] | None, str | None]] = {}
        for name in map(TableName.parse, self.table):
            columns = self._column_lists.get(str(name))
            if columns is not None or name in filters:
                out[name] = (columns, filters.get(name))
        return out

    @field_validator("database_url", "primary_url")
    @classmethod
    def _usable_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_database_url(value.get_secret_value())
        return value

    @field_validator("database_sslmode")
    @classmethod
    def _known_sslmode(cls, value: str | None) -> str | None:
        if value is not None and value not in SSL_MODES:
            raise ValueError(f"sslmode={value!r} is not one of {', '.join(SSL_MODES)}")
        return value

    @model_validator(mode="after")
    def _files_readable(self) -> Self:
        """A file setting that names nothing readable is refused at start, by setting name (a
        retry cannot fix it); the password file is read here, once."""
        for name in _FILE_SETTINGS:
            path = getattr(self, name)
            if path is None:
                continue
            try:
                content = Path(path).read_bytes()
            except OSError as exc:
                flag = name.replace("_", "-")
                raise ValueError(
                    f"--{flag} (BRIDGE_{name.upper()}): cannot read {path}: {exc.strerror}"
                ) from None
            if name == "database_password_file":
                self._database_password = content.decode().rstrip("\r\n")
        for cert, key in (
            ("nats_tls_cert_file", "nats_tls_key_file"),
            ("database_sslcert", "database_sslkey"),
        ):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(
                    f"BRIDGE_{cert.upper()} and BRIDGE_{key.upper()} go together: a client "
                    "certificate needs its key"
                )
        return self

    def database_dsn(self) -> str:
        """The connection string every PostgreSQL connection uses: the URL with the password
        file and the TLS settings applied (they win over the URL's own)."""
        return self._with_credentials(self.database_url.get_secret_value())

    def primary_dsn(self) -> str | None:
        """The primary's connection string (see `primary_url`), or None."""
        if self.primary_url is None:
            return None
        return self._with_credentials(self.primary_url.get_secret_value())

    def _with_credentials(self, url: str) -> str:
        extra: dict[str, str] = {}
        if self._database_password is not None:
            extra["password"] = self._database_password
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, f"database_{key}")
            if value is not None:
                extra[key] = str(value)
        return make_conninfo(url, **extra) if extra else url

    def secrets(self) -> list[str]:
        """Every secret of this configuration in every form it may be quoted in, longest first:
        what redaction removes from logs, replies and pages."""
        found = set(secrets_in_url(self.database_dsn()))
        found.update(secrets_in_url(self.database_url.get_secret_value()))
        primary = self.primary_dsn()
        if primary is not None and self.primary_url is not None:
            found.update(secrets_in_url(primary))
            found.update(secrets_in_url(self.primary_url.get_secret_value()))
        for url in self.nats_url.split(","):
            found.update(secrets_in_url(url.strip(), token=True))
        for secret in (self.nats_password, self.nats_token, self.control_token):
            if secret is not None:
                found.add(secret.get_secret_value())
        for name in _SECRET_FILES:
            path = getattr(self, name)
            if path is not None:
                found.update(secrets_in_file(Path(path)))
        return sorted((s for s in found if s), key=len, reverse=True)

    @field_validator("stream")
    @classmethod
    def _two_streams(cls, value: list[str]) -> list[str]:
        if len(value) != 2:
            raise ValueError(
                f"expected two stream names, CDC then INIT (as 'CDC,INIT'), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _duplicate_window_fits(self) -> Self:
        window = self.duplicate_window_seconds
        if window is not None and window > self.cdc_max_age_seconds:
            raise ValueError(
                f"duplicate window {window:g} s is longer than the CDC stream's max age "
                f"{self.cdc_max_age_seconds:g} s; JetStream would refuse the stream. Lower "
                "BRIDGE_DUPLICATE_WINDOW_SECONDS or raise BRIDGE_CDC_MAX_AGE_SECONDS"
            )
        return self

    @property
    def cdc_stream(self) -> str:
        return self.stream[0]

    @property
    def init_stream(self) -> str:
        return self.stream[1]

    @property
    def effective_duplicate_window_seconds(self) -> float:
        return self.duplicate_window_seconds or self.cdc_max_age_seconds


# Settings naming a file the services must be able to read.
_FILE_SETTINGS = (
    "database_password_file",
    "database_sslrootcert",
    "database_sslcert",
    "database_sslkey",
    "nats_nkey_seed_file",
    "nats_creds_file",
    "nats_tls_ca_file",
    "nats_tls_cert_file",
    "nats_tls_key_file",
)
# Files whose contents are secret.
_SECRET_FILES = (
    "database_password_file",
    "database_sslkey",
    "nats_nkey_seed_file",
    "nats_creds_file",
    "nats_tls_key_file",
)

S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], args: Sequence[str] | None = None) -> S:
    """Build `model` from `args` (flags; none given: environment and defaults only)."""
    if args is None:
        return model()
    return CliApp.run(model, cli_args=list(args))


__all__ = ["BridgeSettings", "load_settings"]
