"""The tools' own arguments, as settings models: the command line parses them with the shared
settings in one pass (`shared.command_line`), so `--help` lists both and a value is never
mistaken for the command's positional table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, CliPositionalArg, SettingsConfigDict

from pg_nats_bridge.contract import Condition
from shared.settings import BridgeSettings

SnapshotMode = Literal["exported", "chunked"]
SNAPSHOT_MODE_HELP = (
    "how a snapshot reads the table: `exported` (one exported snapshot held for the whole "
    "read) or `chunked` (primary-key ranges, each in its own short transaction); default: "
    "exported"
)


WHERE_HELP = (
    "a condition of a partial backfill, `COLUMN OP VALUE` with OP one of = != < <= > >= "
    "(or `COLUMN is null`, `COLUMN is not null`); repeat it to AND several. The value is "
    "read as the column's type by PostgreSQL, e.g. --where 'updated_at >= 2026-01-01'"
)

_CONDITION = re.compile(
    r'^\s*(?P<column>"(?:[^"]|"")+"|[^\s=!<>]+)\s*'
    r"(?P<op>is\s+not\s+null|is\s+null|!=|<>|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$",
    re.IGNORECASE | re.DOTALL,
)


def parse_condition(text: str) -> dict[str, Any]:
    """`updated_at >= 2026-01-01` as a snapshot request's condition (ValueError otherwise)."""
    found = _CONDITION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not `COLUMN OP VALUE` (OP: = != < <= > >=, is null)")
    column, value = found["column"], found["value"]
    if column.startswith('"'):
        column = column[1:-1].replace('""', '"')
    op = " ".join(found["op"].lower().split()).replace("<>", "!=")
    condition: dict[str, Any] = {"column": column, "op": op}
    if op.startswith("is "):
        if value:
            raise ValueError(f"{text!r}: `{op}` takes no value")
    elif not value:
        raise ValueError(f"{text!r}: `{op}` needs a value")
    else:
        condition["value"] = value
    return dict(Condition.model_validate(condition).model_dump())


class TailArguments(BridgeSettings):
    tail_table: CliPositionalArg[str | None] = Field(
        None,
        description="the table to follow; all tables when left out",
        json_schema_extra={"metavar": "TABLE"},
    )
    from_start: bool = Field(False, description="from the stream's first event, not from now")
    count: int = Field(
        0,
        ge=0,
        description="stop after this many events (schema changes are shown, not counted); 0: never",
    )


class SnapshotArguments(BridgeSettings):
    snapshot_table: CliPositionalArg[str] = Field(
        description="the table to snapshot", json_schema_extra={"metavar": "TABLE"}
    )
    chunk_size: int | None = Field(
        None, gt=0, description="rows per chunk; default: the snapshotter's"
    )
    snapshot_mode: SnapshotMode | None = Field(
        None, description=SNAPSHOT_MODE_HELP, json_schema_extra={"metavar": "{exported,chunked}"}
    )
    where: list[str] = Field(
        default_factory=list, description=WHERE_HELP, json_schema_extra={"metavar": "CONDITION"}
    )


class StatusArguments(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", cli_kebab_case=True, cli_show_env_vars=True, extra="ignore"
    )

    admin_url: str = Field("http://localhost:8080", description="the admin API's base URL")


class CopyArguments(BridgeSettings):
    """What `bridge replica` and `bridge verify` share: the tables and the copy's file."""

    model_config = SettingsConfigDict(cli_enforce_required=True)

    copy_tables: CliPositionalArg[list[str]] = Field(
        description="the tables the copy holds", json_schema_extra={"metavar": "TABLE"}
    )
    sqlite: Path = Field(description="the SQLite file of the copy")


class ReplicaArguments(CopyArguments):
    copy_tables: CliPositionalArg[list[str]] = Field(
        default_factory=list,
        description="the tables the copy holds (or --all-tables)",
        json_schema_extra={"metavar": "TABLE"},
    )
    all_tables: bool = Field(
        False,
        description="every table the snapshotter publishes a schema of (the bucket's keys when "
        "the copy starts): with no --table, every table of the publication",
    )
    durable: str | None = Field(
        None,
        description="name of the durable JetStream consumer (one process per name); default: "
        "replica-<the file's name>",
    )
    commit_seconds: float = Field(
        0.5, gt=0, description="most seconds between commits of the copy while it is behind"
    )
    progress_seconds: float = Field(5.0, gt=0, description="seconds between progress lines")
    snapshot_mode: SnapshotMode | None = Field(
        None, description=SNAPSHOT_MODE_HELP, json_schema_extra={"metavar": "{exported,chunked}"}
    )
    backfill: str | None = Field(
        None,
        description="once following, re-read this table's rows matching --where into the copy "
        "(a partial backfill; docs/consuming.md)",
        json_schema_extra={"metavar": "TABLE"},
    )
    where: list[str] = Field(
        default_factory=list, description=WHERE_HELP, json_schema_extra={"metavar": "CONDITION"}
    )
    skip_change: list[int] = Field(
        default_factory=list,
        description="give up on the change at this CDC sequence if it cannot be applied (the "
        "sequence a stopped replica named): recorded in the copy's _bridge_skipped table "
        "instead of stopping the copy (repeatable)",
        json_schema_extra={"metavar": "SEQ"},
    )


class VerifyArguments(CopyArguments):
    confirm_timeout: float = Field(
        120.0,
        gt=0,
        description="most seconds to wait for the slot to confirm the comparison's position",
        json_schema_extra={"metavar": "SECONDS"},
    )
    show: int = Field(20, ge=0, description="differences printed per table")
