"""One key of a libpq DSN (keyword or URL form), read without libpq: config stays pure."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_DSN_KEYWORD = r"(?:^|\s){}\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)"


def dsn_value(dsn: str, key: str) -> str | None:
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
        if key in query:
            return unquote(query[key]) or None
        if key == "dbname":
            return unquote(parts.path.lstrip("/")) or None
        return unquote(parts.username) if parts.username else None
    found = re.search(_DSN_KEYWORD.format(key), dsn)
    if found is None:
        return None
    value = found.group(1)
    if value.startswith("'"):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value or None
