"""Keeping secrets out of logs and error lines.

DSNs and NATS URLs may carry passwords or tokens; anything echoed back to a person
goes through ``redact_dsn`` or ``shown_value`` first.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)[^/?#\s]*@")
_NATS_TOKEN = re.compile(r"(\b(?:nats|tls|wss?)://)[^:/?#@\s]+@", re.IGNORECASE)
_URL_PASSWORD_PARAM = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"(\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s']\S*)", re.IGNORECASE
)
# Config keys whose values are never echoed, not even in part.
SENSITIVE_KEY = re.compile(r"password|passwd|secret|token|dsn|credential", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Replace the password in URL (``postgresql://u:pw@h``, ``?password=``) and
    keyword (``password=pw``, ``password='p w'``) DSNs with ``***``.

    Also fit for NATS server URLs, where a lone ``nats://token@host`` is a secret too.
    """
    # The userinfo pattern is greedy up to the last "@" before the host, because
    # people do write unescaped "@" in passwords.
    if "://" in dsn:
        redacted = _NATS_TOKEN.sub(r"\1***@", dsn)
        redacted = _URL_USERINFO.sub(r"\1***@", redacted)
        return _URL_PASSWORD_PARAM.sub(r"\1***", redacted)
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


def shown_value(value: object) -> str:
    """A short, password-free rendering of a value for an error line."""
    if isinstance(value, str):
        clipped = redact_dsn(value)
        return repr(clipped if len(clipped) <= 60 else clipped[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
