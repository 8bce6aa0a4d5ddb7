"""A decentralized-auth NATS setup, as `nsc` makes one: an operator, a system account, an
account with JetStream, and a user whose credentials file (user JWT + NKey seed) the bridge
connects with. JWTs are built and signed here with `nkeys` (ed25519), so no `nsc` binary is
needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

UNLIMITED = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[Any, str, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return pair, pair.public_key.decode(), seed.decode()


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {**claims, "iat": int(time.time())}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(signer.sign(f'{header}.{body}'.encode()))}"


@dataclass(frozen=True)
class Operator:
    config: str  # the server configuration's operator/resolver part
    creds_file: Path  # a user of the JetStream account
    user_seed: str
    stranger_creds_file: Path  # a user signed by an account the server does not know


def _creds(jwt: str, seed: str) -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def _user(account: Any, account_public: str) -> tuple[str, str]:
    _, public, seed = _keypair(nkeys.PREFIX_BYTE_USER)
    claims = {
        "iss": account_public,
        "sub": public,
        "name": "bridge",
        "nats": {
            "type": "user",
            "version": 2,
            "pub": {},
            "sub": {},
            **dict.fromkeys(("subs", "data", "payload"), UNLIMITED),
        },
    }
    return _jwt(claims, account), seed


def make_operator(directory: Path) -> Operator:
    directory.mkdir(parents=True, exist_ok=True)
    operator, operator_public, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, system_public, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    account, account_public, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    stranger, stranger_public, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)

    def account_jwt(public: str, name: str, limits: dict[str, Any]) -> str:
        claims = {"type": "account", "version": 2, "limits": limits}
        return _jwt({"iss": operator_public, "sub": public, "name": name, "nats": claims}, operator)

    operator_jwt = _jwt(
        {
            "iss": operator_public,
            "sub": operator_public,
            "name": "test-operator",
            "nats": {"type": "operator", "version": 2},
        },
        operator,
    )
    limits = "subs data payload imports exports conn leaf mem_storage disk_storage streams consumer"
    jetstream: dict[str, Any] = dict.fromkeys(limits.split(), UNLIMITED)
    jetstream["wildcards"] = True
    (directory / "operator.jwt").write_text(operator_jwt)
    config = (
        f'operator: "{directory / "operator.jwt"}"\n'
        "resolver: MEMORY\n"
        f"system_account: {system_public}\n"
        "resolver_preload: {\n"
        f'  {system_public}: "{account_jwt(system_public, "SYS", {})}"\n'
        f'  {account_public}: "{account_jwt(account_public, "bridge", jetstream)}"\n'
        "}\n"
    )
    user_jwt, user_seed = _user(account, account_public)
    creds = directory / "bridge.creds"
    creds.write_text(_creds(user_jwt, user_seed))
    creds.chmod(0o600)
    stranger_jwt, stranger_seed = _user(stranger, stranger_public)
    stranger_creds = directory / "stranger.creds"
    stranger_creds.write_text(_creds(stranger_jwt, stranger_seed))
    stranger_creds.chmod(0o600)
    return Operator(config, creds, user_seed, stranger_creds)
