"""Keeps secrets out of everything the services show: logs, replies, /health, /status.

Two layers: patterns that hide a password wherever a URL or `password=` appears, and the
known secrets of the running configuration (a database password, raw and percent-decoded),
removed wherever they appear, for libpq messages that quote a fragment of the URL
(`invalid percent-encoded token: "…"`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I
)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.I)


def secrets_in_url(url: str) -> list[str]:
    """The password of a libpq URL or keyword string, in every form it may be quoted in."""
    found: set[str] = set()
    try:
        raw = urlsplit(url).password
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


def redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)
