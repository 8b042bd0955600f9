"""Durations as people write them in config files: ``500ms``, ``10s``, ``2m``, ``1h``.

A plain number means seconds. Parts may be combined (``1m30s``). Everything is
returned as float seconds, because that is what asyncio and the NATS client take.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# One "<number><unit>" part; the whole text must be a run of these.
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


class DurationError(ValueError):
    """The text is not a duration; the message says what was expected."""


def parse_duration(value: object) -> float:
    """``"500ms"`` -> 0.5, ``"2m"`` -> 120.0, ``10`` -> 10.0, ``"1m30s"`` -> 90.0.

    Negative, infinite and non-numeric values are rejected with DurationError.
    """
    # bool is an int subclass: `timeout: yes` must not silently become 1 second.
    if isinstance(value, bool):
        raise DurationError(_expected(value))
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise DurationError(_expected(value))
        return seconds
    if not isinstance(value, str):
        raise DurationError(_expected(value))
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    total = 0.0
    position = 0
    for part in _PART.finditer(text):
        if part.start() != position:
            raise DurationError(_expected(value))
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    if position == 0 or position != len(text):
        raise DurationError(_expected(value))
    return total


def format_duration(seconds: float) -> str:
    """The short form for logs: 0.5 -> ``500ms``, 120 -> ``2m``, 90 -> ``90s``."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _expected(value: object) -> str:
    if isinstance(value, str):
        shown = repr(value if len(value) <= 40 else value[:37] + "...")
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, int | float):
        shown = repr(value)
    elif value is None:
        shown = "nothing (null)"
    elif isinstance(value, dict):
        shown = "a mapping"
    else:
        shown = f"a {type(value).__name__}"
    return f"expected a duration like 500ms, 10s or 2m, got {shown}"
