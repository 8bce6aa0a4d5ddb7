"""The bridge's NATS interface as an AsyncAPI 3.0 document, generated from the contract's own
models and subject builders (so it cannot drift from them): every subject, its payload's
schema, its headers, the snapshot request and its replies. A consumer in another language can
be generated from it; the admin serves it at `/asyncapi.json`.

    python -m pg_nats_bridge.contract.asyncapi [FILE]
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from pg_nats_bridge.contract.control import (
    AUTHORIZATION,
    ControlReply,
    SnapshotControl,
    SnapshotRunning,
)
from pg_nats_bridge.contract.events import (
    ChangeEvent,
    CommitRecord,
    LogicalMessage,
    OversizedMarker,
    SchemaChange,
)
from pg_nats_bridge.contract.schema import SchemaDocument
from pg_nats_bridge.contract.snapshot import (
    HEARTBEAT_HEADER,
    STATUS_HEADER,
    ProgressRecord,
    SnapshotChunk,
    SnapshotMeta,
    SnapshotRefusal,
    SnapshotRequest,
)
from pg_nats_bridge.contract.subjects import (
    CDC,
    COMMIT_TOKEN,
    CONTROL_PREFIX,
    INIT,
    MESSAGE_TOKEN,
    OVERSIZED_TOKEN,
    SNAPSHOT_PREFIX,
)
from pg_nats_bridge.names import OPERATIONS

MSGPACK = "application/msgpack"
JSON = "application/json"

# The channels the bridge publishes on (the snapshot request is the one it receives).
SENT = (
    "change", "oversized", "logicalMessage", "commit", "schema", "chunk", "meta", "backfill",
    "progress",
)  # fmt: skip

_TABLE = {"description": "the table's subject token (docs/wire-format.md, Subjects)"}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")


def _message(
    name: str, model: type[BaseModel] | None, content_type: str, summary: str, **extra: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "contentType": content_type, "summary": summary}
    if model is not None:
        message["payload"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    message.update(extra)
    return message


def _msg_id(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"Nats-Msg-Id": {"type": "string", "description": description}},
    }


def _authorization() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [AUTHORIZATION],
        "properties": {
            AUTHORIZATION: {"type": "string", "description": "`Bearer <control token>`"}
        },
    }


def _channel(address: str, description: str, messages: list[str], **params: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
    }
    if params:
        channel["parameters"] = params
    return channel


def document(version: str = "unknown") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the bridge's NATS interface."""
    models: list[type[BaseModel]] = [
        ChangeEvent,
        CommitRecord,
        SchemaChange,
        OversizedMarker,
        LogicalMessage,
        SnapshotChunk,
        SnapshotMeta,
        ProgressRecord,
        SnapshotRequest,
        SnapshotRefusal,
        SnapshotRunning,
        SchemaDocument,
        SnapshotControl,
        ControlReply,
    ]
    schemas: dict[str, Any] = {}
    for model in models:
        found = _schema(model)
        schemas.update(found.pop("$defs", {}))
        schemas[model.__name__] = found
    change = "change"
    messages = {
        change: _message(
            change, ChangeEvent, MSGPACK, "a row change",
            headers=_msg_id("`<commit_lsn>:<ordinal>`"),
        ),
        "oversized": _message(
            "oversized", OversizedMarker, MSGPACK, "in place of a row too large for NATS",
            headers=_msg_id("the Msg-Id the row would have had"),
        ),
        "logicalMessage": _message(
            "logicalMessage", LogicalMessage, MSGPACK, "a pg_logical_emit_message",
            headers=_msg_id("`<commit_lsn>:<ordinal>`, or `message:<lsn>`"),
        ),
        "commit": _message(
            "commit", CommitRecord, MSGPACK, "a transaction's end, after its last change",
            headers=_msg_id("`<commit_lsn>:commit`"),
        ),
        "schemaChange": _message(
            "schemaChange", SchemaChange, MSGPACK,
            "a table's shape, before the first change written under it",
            headers=_msg_id("`<commit_lsn>:schema:<relation_oid>:<n>`"),
        ),
        "schemaDocument": _message(
            "schemaDocument", SchemaDocument, MSGPACK,
            "a table's schema (also KV bucket `schemas`)",
        ),
        "chunk": _message(
            "chunk", SnapshotChunk, MSGPACK, "rows of a snapshot",
            headers=_msg_id("`<snapshot_id>:<table>:<chunk>`"),
        ),
        "meta": _message("meta", SnapshotMeta, MSGPACK, "a snapshot's end"),
        "progress": _message("progress", ProgressRecord, MSGPACK, "a chunked snapshot's record"),
        "snapshotRequest": _message(
            "snapshotRequest", SnapshotRequest, JSON, "ask for a snapshot (empty: defaults)",
            headers={
                "type": "object",
                "properties": {
                    HEARTBEAT_HEADER: {
                        "type": "string",
                        "description": "seconds (1-60) between interim messages",
                    }
                },
            },
        ),
        "snapshotReply": _message("snapshotReply", SnapshotMeta, JSON, "the snapshot's meta"),
        "snapshotRefusal": _message(
            "snapshotRefusal", SnapshotRefusal, JSON, "why there is no snapshot"
        ),
        "snapshotRunning": _message(
            "snapshotRunning", SnapshotRunning, JSON, "the snapshotter is alive and on it",
            headers={"type": "object", "properties": {STATUS_HEADER: {"const": "running"}}},
        ),
        "shutdownRequest": _message(
            "shutdownRequest", None, JSON, "stop the service (empty body)",
            headers=_authorization(),
        ),
        "snapshotControl": _message(
            "snapshotControl", SnapshotControl, JSON,
            "pause, resume or cancel a table's chunked snapshot", headers=_authorization(),
        ),
        "controlReply": _message("controlReply", ControlReply, JSON, "a control request obeyed"),
        "controlRefusal": _message(
            "controlRefusal", SnapshotRefusal, JSON, "a control request refused (`unauthorized`)"
        ),
    }  # fmt: skip
    channels = {
        "change": _channel(
            f"{CDC}.{{table}}.{{operation}}", "every committed row change of a table",
            [change], table=_TABLE,
            operation={"enum": sorted(OPERATIONS), "description": "the change's operation"},
        ),
        "oversized": _channel(
            f"{CDC}.{OVERSIZED_TOKEN}.{{table}}", "markers of rows too large for NATS",
            ["oversized"], table=_TABLE,
        ),
        "logicalMessage": _channel(
            f"{CDC}.{MESSAGE_TOKEN}.{{prefix}}", "logical decoding messages", ["logicalMessage"],
            prefix={"description": "the message's prefix, escaped like a table name"},
        ),
        "commit": _channel(
            f"{CDC}.{COMMIT_TOKEN}", "every transaction's commit record (the tables' counts)",
            ["commit"],
        ),
        "schemaChange": _channel(
            f"{CDC}.{{table}}.schema", "a table's shape, at its place among its changes",
            ["schemaChange"], table=_TABLE,
        ),
        "schema": _channel(
            f"{INIT}.schema.{{table}}", "each new revision of a table's schema",
            ["schemaDocument"], table=_TABLE,
        ),
        "chunk": _channel(
            f"{INIT}.snap.{{table}}.{{snapshot_id}}.{{chunk}}", "a snapshot's rows",
            ["chunk"], table=_TABLE, snapshot_id={"description": "snap-<unix time>-<hex>"},
            chunk={"description": "the chunk's number, from 0"},
        ),
        "meta": _channel(
            f"{INIT}.meta.{{table}}", "a complete snapshot's meta", ["meta"], table=_TABLE
        ),
        "backfill": _channel(
            f"{INIT}.backfill.{{table}}", "a partial backfill's meta", ["meta"], table=_TABLE
        ),
        "progress": _channel(
            f"{INIT}.progress.{{table}}", "a chunked snapshot's progress records",
            ["progress"], table=_TABLE,
        ),
        "snapshotRequest": _channel(
            f"{SNAPSHOT_PREFIX}.{{table}}", "snapshot requests (request/reply, JSON)",
            ["snapshotRequest"], table=_TABLE,
        ),
        "snapshotReply": {
            "address": None,
            "description": "the requester's reply subject",
            "messages": {
                m: {"$ref": f"#/components/messages/{m}"}
                for m in ("snapshotReply", "snapshotRefusal", "snapshotRunning")
            },
        },
        "shutdown": _channel(
            f"{CONTROL_PREFIX}.{{service}}.shutdown", "stop a service (request/reply)",
            ["shutdownRequest"], service={"enum": ["replicator", "snapshotter"]},
        ),
        "snapshotControl": _channel(
            f"{CONTROL_PREFIX}.snapshotter.snapshot",
            "a chunked snapshot's pause, resume, cancel (request/reply; every snapshotter "
            "hears it, the one that acts answers)",
            ["snapshotControl"],
        ),
        "controlReply": {
            "address": None,
            "description": "the operator's reply subject",
            "messages": {
                m: {"$ref": f"#/components/messages/{m}"}
                for m in ("controlReply", "controlRefusal")
            },
        },
    }  # fmt: skip
    operations: dict[str, Any] = {
        name: {"action": "send", "channel": {"$ref": f"#/channels/{name}"}} for name in SENT
    }
    operations["snapshot"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/snapshotRequest"},
        "reply": {"channel": {"$ref": "#/channels/snapshotReply"}},
    }
    for control in ("shutdown", "snapshotControl"):
        operations[control] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{control}"},
            "reply": {"channel": {"$ref": "#/channels/controlReply"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "pg-nats-bridge",
            "version": version,
            "description": "PostgreSQL changes on NATS JetStream (docs/wire-format.md): CDC "
            "events on the CDC stream, snapshots and schemas on the INIT stream, snapshot "
            "requests over request/reply.",
        },
        "defaultContentType": MSGPACK,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


if __name__ == "__main__":
    text = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
