"""Every `Nats-Msg-Id` the bridge sets (docs/wire-format.md, "Msg-Id"): JetStream's duplicate
window drops a replayed message by it, so each is a pure function of what the message is."""

from __future__ import annotations

from pg_nats_bridge.lsn import Lsn
from pg_nats_bridge.names import table_token


def change_msg_id(commit_lsn: Lsn, ordinal: int) -> str:
    """`Nats-Msg-Id` of one row change: `<commit LSN>:<ordinal>`.

    The commit LSN names the transaction (no two transactions commit at the same WAL position)
    and the ordinal, the change's 0-based position among the transaction's changes as decoding
    delivers them, names the change within it. Replaying the slot delivers a transaction's
    changes again in the same order, so a replayed change gets the same Msg-Id and JetStream's
    duplicate window drops it. The change's own LSN is not enough: every row of a COPY or
    multi-insert WAL record carries the same one.
    """
    return f"{commit_lsn}:{ordinal}"


def change_msg_id_prefix(commit_lsn_text: str) -> bytes:
    """`change_msg_id` of a whole transaction at once, as bytes: `<commit LSN>:`, to which each
    change's ordinal is appended (`prefix + b"%d" % ordinal`: the replicator's hot path builds
    one per change)."""
    return commit_lsn_text.encode() + b":"


def commit_msg_id(commit_lsn_text: str) -> str:
    """A transaction's commit record: `<commit LSN>:commit` (no change's ordinal is a word)."""
    return f"{commit_lsn_text}:commit"


def schema_change_msg_id(commit_lsn_text: str, relation_oid: int, n: int) -> str:
    """A table's `n`-th schema change in a transaction (the first is 0): PostgreSQL
    describes a table once per replication session and again after each change of it, so a
    replay may describe it where the first run did not; not a change, it takes no ordinal."""
    return f"{commit_lsn_text}:schema:{relation_oid}:{n}"


def ddl_change_msg_id(commit_lsn_text: str, lsn: str, relation_oid: int) -> str:
    """A table's schema change announced by the DDL itself: its message's LSN is unique."""
    return f"{commit_lsn_text}:ddl:{lsn}:{relation_oid}"


def message_msg_id(lsn: Lsn) -> str:
    """A non-transactional logical decoding message's Msg-Id (it has no commit)."""
    return f"message:{lsn}"


def snapshot_msg_id(snapshot_id: str, schema: str, table: str, chunk: int) -> str:
    return f"{snapshot_id}:{table_token(schema, table)}:{chunk}"


def meta_msg_id(snapshot_id: str) -> str:
    return f"{snapshot_id}:meta"


def schema_msg_id(token: str, revision: int) -> str:
    return f"schema:{token}:{revision}"
