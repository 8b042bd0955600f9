"""The bridge's live state, as /status, /readyz and `cdc-bridge status` show it."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge import __version__
from cdc_bridge.bridge.pipeline import SessionStats
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.redaction import redact


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
    # and per standby of the DSN: server, synchronized, behind_bytes, invalidated, error
    failover: bool | None = None
    standbys: list[dict[str, Any]] = field(default_factory=list)
    # Read live from the running session (set while streaming, None otherwise).
    confirmed: Callable[[], int] | None = None
    in_flight: Callable[[], int] | None = None
    last_ack_at: Callable[[], float] | None = None  # monotonic time of the newest ack
    # /status is served to anyone who can reach the port: errors lose their secrets on
    # the way in. The daemon passes its config's redactor, which knows the literals too.
    redactor: Callable[[str], str] = field(default=redact, repr=False)

    def failed(self, message: str) -> None:
        self.last_error = self.redactor(message)
        self.last_error_at = time.time()

    def readiness(self, stall_timeout: float) -> str | None:
        """None when ready, else the reason it is not."""
        if self.role != "streaming":
            return f"not streaming ({self.role})"
        in_flight = self.in_flight() if self.in_flight else 0
        if in_flight and self.last_ack_at is not None:
            waited = time.monotonic() - self.last_ack_at()
            if waited > stall_timeout:
                return f"stalled: {in_flight} events unacked, no ack for {waited:.0f}s"
        return None

    @property
    def confirmed_lsn(self) -> int | None:
        return self.confirmed() if self.confirmed else None

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
            "in_flight": self.in_flight() if self.in_flight else 0,
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
