"""Keeping secrets out of logs, error lines, command output and /status.

Two kinds of protection, both in ``redact``:

- patterns: a password in a DSN or URL (``postgresql://u:pw@h``, ``?password=``,
  ``password=pw``, ``nats://token@h``) is masked wherever it shows up, known or not;
- literals: the secrets the bridge itself holds (passwords, tokens, NKey seeds, read
  from the config or its ``*_file`` keys) are masked wherever they show up, even bare,
  as in a driver's error that quotes a piece of a malformed DSN.

Anything echoed back to a person goes through ``redact`` (or ``redact_dsn`` /
``shown_value`` for config values) at the boundary: the log renderer (logs.py), the
status the HTTP endpoint serves (status.py), and the CLI's error lines (cli/errors.py).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

MASK = "***"
# Shorter "secrets" are not masked as literals: hiding every "ab" in a log line would
# garble it, and a password that short is no secret anyway. Patterns still apply.
MIN_LITERAL_LENGTH = 4

_URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)([^/?#\s]*)@")
_NATS_TOKEN = re.compile(r"(\b(?:nats|tls|wss?)://)([^:/?#@\s]+)@", re.IGNORECASE)
_URL_PASSWORD_PARAM = re.compile(r"([?&](?:ssl)?password=)([^&#\s]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    # Not after ? or &: those are URL parameters, whose value ends at the next "&".
    r"((?<![?&])\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']\S*)", re.IGNORECASE
)
# Config keys whose values are never echoed, not even in part.
SENSITIVE_KEY = re.compile(r"password|passwd|secret|token|dsn|credential|seed", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Replace the password in URL (``postgresql://u:pw@h``, ``?password=``) and
    keyword (``password=pw``, ``password='p w'``) DSNs with ``***``.

    Also fit for NATS server URLs, where a lone ``nats://token@host`` is a secret too.
    """
    # The userinfo pattern is greedy up to the last "@" before the host, because
    # people do write unescaped "@" in passwords.
    if "://" in dsn:
        redacted = _NATS_TOKEN.sub(rf"\1{MASK}@", dsn)
        redacted = _URL_USERINFO.sub(rf"\1{MASK}@", redacted)
        redacted = _URL_PASSWORD_PARAM.sub(rf"\1{MASK}", redacted)
        # Free text (an error line) may hold a URL and a keyword DSN side by side.
        return _KEYWORD_PASSWORD.sub(rf"\1{MASK}", redacted)
    return _KEYWORD_PASSWORD.sub(rf"\1{MASK}", dsn)


def secrets_in(dsn: str) -> set[str]:
    """The passwords and tokens written in a DSN or server URL, as literals to mask.

    Both the written and the %-decoded form of URL parts: a driver may echo either.
    """
    found: set[str] = set()
    if "://" in dsn:
        found.update(match.group(2) for match in _NATS_TOKEN.finditer(dsn))
        found.update(match.group(2) for match in _URL_USERINFO.finditer(dsn))
        found.update(match.group(2) for match in _URL_PASSWORD_PARAM.finditer(dsn))
        found.update({urllib.parse.unquote(secret) for secret in found})
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        value = match.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.add(value)
    return {secret for secret in found if secret}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret and every DSN/URL password masked."""
    # Longest first: a secret that contains another must not be left half-masked.
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_LITERAL_LENGTH and secret in text:
            text = text.replace(secret, MASK)
    return redact_dsn(text)


@dataclass(frozen=True, slots=True)
class Redactor:
    """``redact`` bound to the secrets of one configuration: a callable for boundaries."""

    secrets: frozenset[str] = frozenset()

    def __call__(self, text: str) -> str:
        return redact(text, self.secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"  # never the secrets themselves


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
