"""Settings of every service: command-line flags and `BRIDGE_*` environment variables.

One model per service, each built on `BridgeSettings`. Flags win over the environment, which
wins over defaults; `--table a,b` and `BRIDGE_TABLE=a,b` both take a comma-separated list.
The README's configuration table is generated from these models (`python -m services.settings_doc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Self, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict

from shared.codec import ValueMode
from shared.postgres import check_database_url

CommaList = Annotated[list[str], NoDecode]


def split_list(text: str) -> list[str]:
    """Split on commas outside double quotes: `a,"b,c",d` is three names (PostgreSQL quoting,
    so a table name may hold a comma)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
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
        extra="ignore",
    )

    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        description="PostgreSQL connection URL (libpq form); the password is never logged",
    )
    nats_url: str = Field(
        "nats://localhost:4222", description="NATS server URL(s), comma-separated"
    )
    table: CommaList = Field(
        default_factory=list,
        description="Tables of interest, comma-separated; `schema.table`, or `table` for public",
    )
    slot: str = Field("bridge_slot", description="Logical replication slot name")
    publication: str = Field("bridge_pub", description="Publication name")
    stream: CommaList = Field(
        default_factory=lambda: ["CDC", "INIT"],
        description="JetStream stream names: CDC events, then snapshots and schemas",
    )
    kv_bucket: str = Field("schemas", description="JetStream KV bucket holding table schemas")
    value_mode: ValueMode = Field(
        ValueMode.TYPED,
        description="`typed`: native numbers, booleans, bytes; `text`: PostgreSQL's text output",
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

    _split_table = field_validator("table", "stream", mode="before")(_split_commas)

    @field_validator("database_url")
    @classmethod
    def _usable_url(cls, value: SecretStr) -> SecretStr:
        check_database_url(value.get_secret_value())
        return value

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


S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], args: Sequence[str] | None = None) -> S:
    """Build `model` from `args` (flags; none given: environment and defaults only)."""
    if args is None:
        return model()
    return CliApp.run(model, cli_args=list(args))


__all__ = ["BridgeSettings", "load_settings"]
