"""The AsyncAPI document of the NATS interface (pg_nats_bridge/contract/asyncapi.py) is valid
AsyncAPI 3.0.0 (the official JSON schema, from npm's @asyncapi/specs 6.11.1, Apache-2.0, in
tests/data), and it names every subject the contract builds: each built subject matches one
channel's address."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
from pydantic import BaseModel

from pg_nats_bridge import contract
from pg_nats_bridge.contract.asyncapi import document

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "data" / "asyncapi-3.0.0.schema.json").read_text()
)


def errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema_rs.validator_for(SCHEMA)
    return [str(e)[:300] for e in validator.iter_errors(json.loads(json.dumps(doc)))]


def test_the_document_is_valid_asyncapi_3() -> None:
    doc = document("1.2.3")
    assert errors(doc) == []
    broken = {**doc, "channels": {"x": {"address": "a", "messages": {"m": 5}}}}
    assert errors(broken), "the validator finds nothing wrong with anything"


def test_every_subject_the_contract_builds_is_a_channel() -> None:
    addresses = [c["address"] for c in document()["channels"].values() if c["address"]]
    patterns = [
        re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^.]+", re.escape(a)) + "$") for a in addresses
    ]
    token = contract.table_token("sales", "a.b")
    built = [
        *(contract.token_cdc_subject(token, op) for op in contract.OPERATIONS),
        contract.cdc_subject("public", "t", "insert"),
        contract.oversized_subject(token),
        contract.commit_subject(),
        contract.schema_change_subject(token),
        contract.message_subject("audit"),
        contract.schema_subject("sales", "a.b"),
        contract.snapshot_chunk_subject("sales", "a.b", "snap-1-abc", 7),
        contract.snapshot_meta_subject("sales", "a.b"),
        contract.meta_subject_of_token(token),
        contract.backfill_meta_subject("sales", "a.b"),
        contract.progress_subject(token),
        contract.snapshot_request_subject(token),
        contract.control_subject("replicator"),
        contract.control_subject("snapshotter"),
        contract.control_subject("snapshotter", "snapshot"),
    ]
    unnamed = [s for s in built if not any(p.match(s) for p in patterns)]
    assert unnamed == []
    # Every builder of the subjects module is one of those above: a new one fails here until
    # the document has its channel.
    builders = {
        name
        for name in dir(contract.subjects)
        if name.endswith("_subject") and not name.startswith("parse_")
    } | {"meta_subject_of_token"}
    assert builders == {
        "cdc_subject", "token_cdc_subject", "oversized_subject", "message_subject",
        "commit_subject", "schema_change_subject",
        "schema_subject", "snapshot_chunk_subject", "snapshot_meta_subject",
        "meta_subject_of_token", "backfill_meta_subject", "progress_subject",
        "snapshot_request_subject", "control_subject",
    }  # fmt: skip


def test_every_model_of_the_contract_is_in_the_document() -> None:
    """A model added to the contract fails here until the document describes it."""
    schemas = document()["components"]["schemas"]
    models = {
        name
        for name in contract.__all__
        if isinstance(getattr(contract, name), type)
        and issubclass(getattr(contract, name), BaseModel)
    }
    assert models and models - set(schemas) == set()
