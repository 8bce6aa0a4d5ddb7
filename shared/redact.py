"""Keeps secrets out of everything the services show: logs, replies, /health, /status.

Two layers: patterns that hide a password wherever a URL or `password=` appears, and the
known secrets of the running configuration (passwords raw and percent-decoded, tokens, the
contents of seed, credentials and key files; `BridgeSettings.secrets`), removed wherever they
appear, for messages that quote a fragment of a URL (`invalid percent-encoded token: "…"`).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I
)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.I)


def secrets_in_url(url: str, *, token: bool = False) -> list[str]:
    """The password of a libpq URL or keyword string, in every form it may be quoted in. With
    `token` (NATS URLs), a user part without a password is a token, so secret too."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        raw = parts.password
        if token and raw is None and parts.username:
            raw = parts.username
    except ValueError:
        raw = None
    if not raw and "://" in url:  # urlsplit gives up on some malformed URLs
        match = _URL_PASSWORD.search(url)
        raw = match["pw"] if match else None
    if raw:
        found |= {raw, unquote(raw)}
    try:
        keyword = conninfo_to_dict(url).get("password")
    except Exception:
        keyword = None
    if keyword:
        found.add(str(keyword))
    return sorted((s for s in found if s), key=len, reverse=True)


def secrets_in_file(path: Path) -> list[str]:
    """A secret file's contents (stripped), and each of its lines that looks like key material
    (no spaces, no PEM or banner marker): a seed, a JWT, a line of base64."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found = {text.strip()}
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 8 and not any(c.isspace() for c in line) and line[0] not in "-*":
            found.add(line)
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)
