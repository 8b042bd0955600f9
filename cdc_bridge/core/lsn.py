"""Log sequence numbers: PostgreSQL prints them as two hex halves, ``16/B374D848``."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> integer position. Raises ValueError on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)")
    value = (int(high, 16) << 32) | int(low, 16)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"LSN out of range: {text!r}")
    return value


def format_lsn(value: int) -> str:
    """Integer position -> ``"16/B374D848"`` (upper-case hex, as PostgreSQL prints it)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wal_behind(head: int, lsn: int | None) -> int | None:
    """Bytes of WAL between ``lsn`` and the head; None when ``lsn`` is unknown.

    A position can be a little ahead of what a session sees as the head (a keepalive's
    wal_end): that is no lag, not negative lag.
    """
    return None if lsn is None else max(head - lsn, 0)
