"""The bridge's live state, as /status, /readyz and `cdc-bridge status` show it."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdc_bridge import __version__
from cdc_bridge.bridge.pipeline import SessionStats
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.redaction import redact


class LiveProgress(Protocol):
    """A running session's progress, read when asked (bridge/session.py's SessionProgress)."""

    def confirmed(self) -> int: ...

    def in_flight(self) -> int: ...

    def last_ack_at(self) -> float: ...  # monotonic time of the newest ack


@dataclass
class BridgeStatus:
    slot: str
    stream: str
    stats: SessionStats = field(default_factory=SessionStats)
    # starting | standby | connecting | streaming | reconnecting | stopped
    role: str = "starting"
    lag_bytes: int | None = None
    retained_bytes: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    postgres_version: str | None = None
    nats_version: str | None = None
    started_at: float = field(default_factory=time.time)
    # The slot's failover flag (None before PostgreSQL 17, or before the first session),
    # and per standby of the DSN: json_keys.STANDBY_KEYS (standbys.standby_document)
    failover: bool | None = None
    standbys: list[dict[str, Any]] = field(default_factory=list)
    # Read live from the running session (set while streaming, None otherwise).
    progress: LiveProgress | None = None
    # /status is served to anyone who can reach the port: errors lose their secrets on
    # the way in. The daemon passes its config's redactor, which knows the literals too.
    redactor: Callable[[str], str] = field(default=redact, repr=False)

    def failed(self, message: str) -> None:
        self.last_error = self.redactor(message)
        self.last_error_at = time.time()

    def readiness(self, stall_timeout: float) -> str | None:
        """None when ready, else the reason it is not."""
        if self.role != "streaming":
            # Between sessions, the failure that ended the last one says why (a full
            # stream, an unreachable server...): "reconnecting" alone does not.
            if self.role == "reconnecting" and self.last_error:
                return f"not streaming (reconnecting): {self.last_error}"
            return f"not streaming ({self.role})"
        progress = self.progress
        in_flight = progress.in_flight() if progress is not None else 0
        if progress is not None and in_flight:
            waited = time.monotonic() - progress.last_ack_at()
            if waited > stall_timeout:
                return f"stalled: {in_flight} events unacked, no ack for {waited:.0f}s"
        return None

    @property
    def confirmed_lsn(self) -> int | None:
        return self.progress.confirmed() if self.progress is not None else None

    @property
    def in_flight(self) -> int:
        return self.progress.in_flight() if self.progress is not None else 0

    def to_json(self) -> dict[str, Any]:
        confirmed = self.confirmed_lsn
        stats = self.stats
        return {
            "role": self.role,
            "slot": self.slot,
            "stream": self.stream,
            "confirmed_lsn": format_lsn(confirmed) if confirmed is not None else None,
            "lag_bytes": self.lag_bytes,
            "retained_bytes": self.retained_bytes,
            "in_flight": self.in_flight,
            "events_published": stats.acked,
            "dead_lettered": stats.dead_lettered,
            "skipped": stats.skipped,
            "transactions": stats.transactions,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "failover": self.failover,
            "standbys": self.standbys,
            "versions": {
                "cdc_bridge": __version__,
                "python": platform.python_version(),
                "postgres": self.postgres_version,
                "nats_server": self.nats_version,
            },
        }


def progress_fields(status: BridgeStatus, stats: SessionStats, rate: float) -> dict[str, object]:
    """The progress line's fields; what is not known yet (no confirmed LSN, no lag
    measured) is left out rather than logged as null."""
    fields: dict[str, object] = {
        "role": status.role,
        "events_per_second": round(rate, 1),
        "events": stats.rows,
        "dead_lettered": stats.dead_lettered,
    }
    if status.confirmed_lsn:
        fields["lsn"] = format_lsn(status.confirmed_lsn)
    if status.lag_bytes is not None:
        fields["lag_bytes"] = status.lag_bytes
    fields["in_flight"] = status.in_flight
    return fields
