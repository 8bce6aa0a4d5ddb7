"""Keeps secrets out of what the admin shows: passwords in URLs, tokens."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I
)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.I)


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)
