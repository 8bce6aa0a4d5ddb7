"""Every stream, bucket and subject of the bridge, built here and parsed here
(docs/wire-format.md, "Subjects"). Table tokens (how a table's name becomes one subject token)
are in `pg_nats_bridge.names`."""

from __future__ import annotations

from dataclasses import dataclass

from pg_nats_bridge.names import OPERATIONS, SubjectError, table_token

# -- names (each also a setting; these are the defaults) ---------------------------------------

CDC_STREAM = "CDC"
INIT_STREAM = "INIT"
KV_BUCKET = "schemas"
SNAPSHOT_PREFIX = "bridge.snapshot"
CONTROL_PREFIX = "bridge.control"

CDC = "cdc"
INIT = "init"
MESSAGE_TOKEN = "~message"
"""`cdc.~message.<prefix>`: a logical decoding message."""
OVERSIZED_TOKEN = "~oversized"
"""`cdc.~oversized.<table>`: the dead-letter marker of a row larger than max_payload."""
COMMIT_TOKEN = "~commit"
"""`cdc.~commit`: every transaction's commit record, after its last change."""

INIT_KINDS = frozenset({"snap", "meta", "backfill", "schema", "progress"})
"""The second token of every INIT subject."""

# -- subjects ------------------------------------------------------------------------------------


def cdc_subject(schema: str, table: str, operation: str, prefix: str = CDC) -> str:
    return f"{prefix}.{table_token(schema, table)}.{operation}"


SCHEMA_CHANGE = "schema"
"""The last token of a table's schema-change subject, `cdc.<table>.schema` (not an operation:
no row changes there), so that a consumer of `cdc.<table>.*` receives it among the changes."""


def schema_change_subject(token: str, prefix: str = CDC) -> str:
    return f"{prefix}.{token}.{SCHEMA_CHANGE}"


def token_cdc_subject(token: str, operation: str, prefix: str = CDC) -> str:
    return f"{prefix}.{token}.{operation}"


def cdc_filter(token: str | None = None) -> str:
    """Every change of one table (by token), or of every table."""
    return f"{CDC}.{token}.*" if token else f"{CDC}.>"


def oversized_subject(token: str, prefix: str = CDC) -> str:
    return f"{prefix}.{OVERSIZED_TOKEN}.{token}"


def commit_subject(prefix: str = CDC) -> str:
    return f"{prefix}.{COMMIT_TOKEN}"


def message_subject(escaped_prefix: str, prefix: str = CDC) -> str:
    return f"{prefix}.{MESSAGE_TOKEN}.{escaped_prefix}"


def schema_subject(schema: str, table: str, prefix: str = INIT) -> str:
    return f"{prefix}.schema.{table_token(schema, table)}"


def snapshot_chunk_subject(
    schema: str, table: str, snapshot_id: str, chunk: int, prefix: str = INIT
) -> str:
    return f"{prefix}.snap.{table_token(schema, table)}.{snapshot_id}.{chunk}"


def snapshot_chunks_filter(token: str, snapshot_id: str = "*") -> str:
    """The chunks of one snapshot of a table, or of all its snapshots."""
    return f"{INIT}.snap.{token}.{snapshot_id}.*"


def snapshot_meta_subject(schema: str, table: str, prefix: str = INIT) -> str:
    return f"{prefix}.meta.{table_token(schema, table)}"


def meta_subject_of_token(token: str) -> str:
    return f"{INIT}.meta.{token}"


def backfill_meta_subject(schema: str, table: str, prefix: str = INIT) -> str:
    """A partial backfill's meta: never on the meta subject, which bootstrapping consumers
    read as the table's last complete snapshot."""
    return f"{prefix}.backfill.{table_token(schema, table)}"


def progress_subject(token: str, prefix: str = INIT) -> str:
    """A chunked snapshot's progress records (the last one on the subject counts)."""
    return f"{prefix}.progress.{token}"


def snapshot_request_subject(token: str, prefix: str = SNAPSHOT_PREFIX) -> str:
    return f"{prefix}.{token}"


def control_subject(service: str, action: str = "shutdown", prefix: str = CONTROL_PREFIX) -> str:
    return f"{prefix}.{service}.{action}"


def reserved_subjects(
    snapshot_prefix: str = SNAPSHOT_PREFIX,
    control_prefix: str = CONTROL_PREFIX,
    kv_bucket: str = KV_BUCKET,
) -> list[str]:
    """Subjects the bridge publishes or serves: no other stream may take them."""
    return [f"{CDC}.>", f"{INIT}.>", f"{snapshot_prefix}.>", f"{control_prefix}.>",
            f"$KV.{kv_bucket}.>"]  # fmt: skip


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (NATS wildcards: `*` one token, `>` one or
    more at the end)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)


@dataclass(frozen=True, slots=True)
class CdcSubject:
    """What a subject on the CDC stream is about: a table's change (`token`, `operation`; the
    operation `schema` for its schema change), an
    oversized row's marker (`token`, operation None), a logical decoding message (`token` its
    escaped prefix, `message` true), or a transaction's commit record (`commit` true)."""

    token: str
    operation: str | None = None
    message: bool = False
    commit: bool = False


def parse_cdc_subject(subject: str, prefix: str = CDC) -> CdcSubject:
    """The inverse of the CDC subject builders; SubjectError for a subject none of them
    builds (anyone allowed on `cdc.>` may publish anything there)."""
    parts = subject.split(".")
    if len(parts) == 2 and parts[0] == prefix and parts[1] == COMMIT_TOKEN:
        return CdcSubject("", commit=True)
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or not parts[2]:
        raise SubjectError(f"{subject!r} is not a CDC subject")
    if parts[1] == OVERSIZED_TOKEN:
        return CdcSubject(parts[2])
    if parts[1] == MESSAGE_TOKEN:
        return CdcSubject(parts[2], message=True)
    if parts[2] == SCHEMA_CHANGE:
        return CdcSubject(parts[1], parts[2])
    if parts[2] not in OPERATIONS:
        raise SubjectError(f"{subject!r}: {parts[2]!r} is not an operation")
    return CdcSubject(parts[1], parts[2])


def is_schema_change(subject: str, prefix: str = CDC) -> bool:
    """Whether `subject` is a table's schema change (`cdc.<table>.schema`; not a logical
    decoding message whose prefix is `schema`)."""
    try:
        parsed = parse_cdc_subject(subject, prefix)
    except SubjectError:
        return False
    return parsed.operation == SCHEMA_CHANGE and not parsed.message


def parse_init_subject(subject: str, prefix: str = INIT) -> tuple[str, str]:
    """`init.<kind>.<table>…` → (kind, table token): kind is `snap`, `meta`, `backfill`,
    `schema` or `progress`; SubjectError otherwise."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != prefix or parts[1] not in INIT_KINDS:
        raise SubjectError(f"{subject!r} is not an INIT subject")
    return parts[1], parts[2]
