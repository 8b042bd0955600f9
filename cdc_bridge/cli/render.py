"""Output for people (aligned tables, human sizes) and for scripts (stable JSON)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from cdc_bridge.core.lsn import format_lsn

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
MISSING = "-"


def human_bytes(size: int | None) -> str:
    """1536 -> "1.5 KiB"; below 1 KiB exact bytes; None -> "-"."""
    if size is None:
        return MISSING
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count_of(count: int, one: str, many: str | None = None) -> str:
    """ "1 stream", "2 streams"; ``many`` for irregular plurals ("batches")."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def duration_text(seconds: float) -> str:
    """A rough duration for people: "12 s", "5 min", "3 h 20 min", "2 d 4 h"."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if whole < 3600:
        return f"{minutes} min"
    if whole < 86400:
        rest = minutes % 60
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    rest = hours % 24
    return f"{days} d {rest} h" if rest else f"{days} d"


def time_text(epoch: float, now: float | None = None) -> str:
    """A Unix time as ISO 8601 UTC with its age: "2026-12-01T21:55:03Z, 12 s ago"."""
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    age = now - epoch
    if age < 0:
        return f"{stamp}, in {duration_text(-age)}"  # the bridge's clock is ahead of ours
    return f"{stamp}, {duration_text(age)} ago"


def lsn_text(lsn: int | None) -> str | None:
    """An LSN as PostgreSQL prints it, None stays None (JSON null)."""
    return None if lsn is None else format_lsn(lsn)


def cell(value: object) -> str:
    """A table cell: None as "-", booleans as yes/no."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()
) -> list[str]:
    """Rows aligned under upper-case headers, two spaces apart; ``right`` lists the
    columns (by index) to right-align, for numbers and sizes."""
    texts = [[cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in texts:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if i in right else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return [line([h.upper() for h in headers]), *(line(row) for row in texts)]


def key_values(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """``key   value`` lines with the values aligned."""
    width = max((len(key) for key, _ in pairs), default=0)
    return [f"{key.ljust(width)}  {cell(value)}".rstrip() for key, value in pairs]


def dumps(document: object) -> str:
    """JSON for scripts: keys in a fixed order (as built), UTF-8 kept readable."""
    return json.dumps(document, ensure_ascii=False, indent=2)
