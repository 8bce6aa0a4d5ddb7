"""Opening a NATS connection from the settings: servers, authentication (user/password, token,
NKey seed, credentials file), TLS (a CA, a client certificate for mutual TLS, `tls://` URLs),
with errors an operator can act on.

Two kinds of failure: no server answered (`NatsUnavailable`: services wait and retry) and a
server answered but refused us (`NatsRefused`: wrong credentials, a certificate that does not
verify, a client certificate the server requires; retrying cannot fix it, so services stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

from shared.settings import BridgeSettings

log = logging.getLogger(__name__)

WAIT_SECONDS = 2.0


class NatsUnavailable(ConnectionError):
    """No NATS server answered at the configured URL(s)."""


class NatsRefused(RuntimeError):
    """A NATS server answered and refused the connection: the message says what to change."""


class _QuietSslEof(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes ("returning true from
    eof_received() has no effect when using ssl"): noise, once per reconnect attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietSslEof())


def _urls(settings: BridgeSettings) -> list[str]:
    return [part.strip() for part in settings.nats_url.split(",") if part.strip()]


def _without_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """The URL without its `user:password@` or `token@`, and those, URL-decoded (nats-py
    would send them as written: `p%40ss` for the password `p@ss`)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return (
        urlunsplit(parts._replace(netloc=hostport)),
        unquote(user),
        unquote(password) if colon else None,
    )


def servers(settings: BridgeSettings) -> list[str]:
    """The server URLs as nats-py gets them: credentials go as options (`auth_options`)."""
    return [_without_userinfo(url)[0] for url in _urls(settings)]


def url_credentials(settings: BridgeSettings) -> dict[str, str]:
    """nats-py's options for the credentials in the URL(s): `user:password@` or `token@`,
    decoded. Several URLs are one cluster with one user: differing credentials are refused."""
    found = {
        (user, password)
        for user, password in (_without_userinfo(url)[1:] for url in _urls(settings))
        if user is not None
    }
    if not found:
        return {}
    if len(found) > 1:
        raise NatsRefused(
            "the URLs in BRIDGE_NATS_URL carry different credentials; give them once, in each "
            "URL alike or as BRIDGE_NATS_USER/_PASSWORD or _TOKEN"
        )
    ((user, password),) = found
    assert user is not None
    return {"token": user} if password is None else {"user": user, "password": password}


def shown_servers(settings: BridgeSettings) -> str:
    """The servers as they may be printed: no user, password or token."""
    out = []
    for url in servers(settings):
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"
        out.append(host if parts.hostname else url)
    return ", ".join(out)


def tls_context(settings: BridgeSettings) -> ssl.SSLContext | None:
    """A context verifying the server against the configured CA (the system's otherwise) and
    presenting the client certificate; None when nothing asks for TLS (nats-py still upgrades
    with the system CAs if the server requires it)."""
    wants = settings.nats_tls_ca_file or settings.nats_tls_cert_file
    if not wants and not any(url.startswith("tls://") for url in servers(settings)):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None
        )
        if settings.nats_tls_cert_file and settings.nats_tls_key_file:
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise NatsRefused(
            "cannot load the NATS TLS files (BRIDGE_NATS_TLS_CA_FILE, _CERT_FILE, _KEY_FILE): "
            f"{exc}"
        ) from None
    return context


def auth_options(settings: BridgeSettings) -> dict[str, Any]:
    """nats-py's keyword arguments for the one authentication mechanism configured (the URL's
    own `user:password@` or `token@` apply when none is)."""
    if settings.nats_creds_file:
        return {"user_credentials": str(settings.nats_creds_file)}
    if settings.nats_nkey_seed_file:
        return {"nkeys_seed": str(settings.nats_nkey_seed_file)}
    if settings.nats_token:
        return {"token": settings.nats_token.get_secret_value()}
    if settings.nats_user:
        password = settings.nats_password.get_secret_value() if settings.nats_password else ""
        return {"user": settings.nats_user, "password": password}
    return url_credentials(settings)


def broker_security(settings: BridgeSettings) -> Any:
    """The same authentication and TLS for FastStream's NatsBroker (its `security=`)."""
    from faststream.nats.security import (
        NatsCredentials,
        NatsNKey,
        NatsSecurity,
        NatsToken,
        NatsUserPassword,
    )

    context = tls_context(settings)
    auth = auth_options(settings)
    if "user_credentials" in auth:
        return NatsCredentials.from_file(auth["user_credentials"], ssl_context=context)
    if "nkeys_seed" in auth:
        return NatsNKey.from_file(auth["nkeys_seed"], ssl_context=context)
    if "token" in auth:
        return NatsToken(auth["token"], ssl_context=context)
    if "user" in auth:
        return NatsUserPassword(auth["user"], auth["password"], ssl_context=context)
    return NatsSecurity(ssl_context=context) if context else None


async def connect(
    settings: BridgeSettings,
    name: str,
    *,
    reconnect: bool = False,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect to the configured servers. With `reconnect`, the client keeps retrying after a
    later outage (services); without, a lost server is an error (one-shot commands).

    A service waits for a server to answer. The first connection never retries: nats-py
    would retry a refusal (a wrong password) forever. So a service learns here whether to
    wait (`NatsUnavailable`) or stop (`NatsRefused`), and only then opens its reconnecting
    connection."""
    if not reconnect:
        return await _connect_once(settings, name, on_closed)
    waiting = False
    while True:
        try:
            first = await _connect_once(settings, name)
            break
        except NatsUnavailable as exc:
            if not waiting:
                log.warning("%s; retrying every %g s", exc, WAIT_SECONDS)
                waiting = True
            await asyncio.sleep(WAIT_SECONDS)
    await first.close()
    return await _open(settings, name, reconnect=True)


async def _connect_once(
    settings: BridgeSettings,
    name: str,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    try:
        return await _open(settings, name, reconnect=False, on_closed=on_closed)
    except NatsRefused:
        raise
    except Exception as exc:
        refusal = await _refusal(settings, exc)
        if refusal:
            where = shown_servers(settings)
            raise NatsRefused(f"NATS at {where} refused the connection: {refusal}") from None
        raise NatsUnavailable(
            f"no NATS server answered at {shown_servers(settings)} "
            f"({type(exc).__name__}: {exc}); check BRIDGE_NATS_URL and that nats-server runs "
            "with JetStream (-js)"
        ) from None


async def _open(
    settings: BridgeSettings,
    name: str,
    *,
    reconnect: bool,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    async def one_line_error(exc: Exception) -> None:
        # The first connection's errors are raised, explained, by `_connect_once`.
        if reconnect:
            log.warning("NATS: %s: %s", type(exc).__name__, exc)

    return await nats.connect(
        servers=servers(settings),
        name=name,
        connect_timeout=5,
        allow_reconnect=reconnect,
        # nats-py reads 0 as "no limit"; 1 means one retry per server, then give up.
        max_reconnect_attempts=-1 if reconnect else 1,
        reconnect_time_wait=2 if reconnect else 0.5,
        error_cb=one_line_error,
        closed_cb=on_closed,
        tls=tls_context(settings),
        **auth_options(settings),
    )


async def _refusal(settings: BridgeSettings, exc: BaseException) -> str | None:
    """Why the server refused us, when it did; None when it merely did not answer."""
    text = str(exc)
    lowered = text.lower()
    if "authorization violation" in lowered or "authentication" in lowered:
        return (
            f"{text.strip()}; check the credentials (BRIDGE_NATS_USER/_PASSWORD, _TOKEN, "
            "_NKEY_SEED_FILE, _CREDS_FILE, or the URL's user:password@)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"its TLS certificate did not verify ({exc.verify_message}); set "
            "BRIDGE_NATS_TLS_CA_FILE to the CA that signed it"
        )
    needs_cert = (
        "it requires a client certificate (mutual TLS); set BRIDGE_NATS_TLS_CERT_FILE and "
        "BRIDGE_NATS_TLS_KEY_FILE"
    )
    if isinstance(exc, ssl.SSLError):
        if "CERTIFICATE_REQUIRED" in str(exc.reason):
            return needs_cert
        return f"TLS failed ({exc.reason or exc}); check the BRIDGE_NATS_TLS_* settings"
    if "nkey" in lowered or "seed" in lowered or "credentials" in lowered or "jwt" in lowered:
        return f"{text.strip()}; check BRIDGE_NATS_NKEY_SEED_FILE / BRIDGE_NATS_CREDS_FILE"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | NoServersError | EOFError):
        info = await _server_info(servers(settings))
        if info.get("tls_verify") and not settings.nats_tls_cert_file:
            return needs_cert
    return None


async def _server_info(urls: list[str]) -> dict[str, Any]:
    """The INFO a server sends in clear before any TLS (empty when none answers)."""
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port or 4222), 3
            )
        except (OSError, TimeoutError):
            continue
        try:
            line = await asyncio.wait_for(reader.readline(), 3)
        except (OSError, TimeoutError):
            line = b""
        finally:
            writer.close()
        if line.startswith(b"INFO "):
            try:
                info: dict[str, Any] = json.loads(line[5:])
                return info
            except ValueError:
                pass
    return {}
