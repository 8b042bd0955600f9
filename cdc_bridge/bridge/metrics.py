"""Prometheus metrics, in a registry of the bridge's own (no process-global state).

They are read only over HTTP (/metrics): without HTTP the bridge counts nothing
(``NoMetrics``) and never imports prometheus-client, a tenth of its start-up.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cdc_bridge.core.tracker import Transaction
from cdc_bridge.source.protocol import PG_EPOCH_OFFSET_US

if TYPE_CHECKING:
    from cdc_bridge.bridge.status import LiveProgress

# Dead-letter reasons are free text; metrics get a small fixed set of kinds.
_REASON_KINDS = (
    ("no route", "no_route"),
    ("unsafe value", "unsafe_value"),
    ("exceeds the server's max_payload", "too_large"),
    ("NULL", "null_value"),
    ("no stream captures", "no_stream"),
    ("header", "bad_headers"),
    ("envelope", "bad_envelope"),
)


def reason_kind(reason: str) -> str:
    for needle, kind in _REASON_KINDS:
        if needle in reason:
            return kind
    return "other"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.events_published = Counter(
            "cdc_bridge_events_published",
            "Events acked by JetStream, by route.",
            ["route"],
            registry=r,
        )
        self.dead_letters = Counter(
            "cdc_bridge_dead_letter",
            "Rows sent to the dead-letter subject, by kind of reason.",
            ["reason"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "cdc_bridge_publish_latency_seconds",
            "From the transaction's COMMIT in PostgreSQL to JetStream's ack.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.confirmed_lsn = Gauge(
            "cdc_bridge_confirmed_lsn",
            "Position confirmed to the slot (as a number).",
            registry=r,
        )
        self.lag_bytes = Gauge(
            "cdc_bridge_replication_lag_bytes",
            "WAL head minus the slot's confirmed position.",
            registry=r,
        )
        self.retained_bytes = Gauge(
            "cdc_bridge_slot_retained_bytes",
            "WAL the slot keeps on disk (head minus restart_lsn).",
            registry=r,
        )
        self.in_flight = Gauge(
            "cdc_bridge_in_flight", "Events published and not yet acked.", registry=r
        )
        self.reconnects = Counter(
            "cdc_bridge_reconnects",
            "Sessions restarted after a failure, by side.",
            ["target"],
            registry=r,
        )
        self.is_leader = Gauge(
            "cdc_bridge_is_leader", "1 while this process streams, 0 while standby.", registry=r
        )
        # Readiness as a series, so alerts need no probe: set by the HTTP endpoint, which
        # answers /readyz with the same verdict (without HTTP there is no /metrics anyway).
        self.ready = Gauge(
            "cdc_bridge_ready",
            "1 while /readyz answers 200 (streaming, connected, acks progressing), else 0.",
            registry=r,
        )
        # Per standby of a multi-host DSN, for a failover slot (PostgreSQL 17+) only
        self.failover_synchronized = Gauge(
            "cdc_bridge_failover_slot_synchronized",
            "1 while the standby holds a copy of the failover slot that survives its promotion "
            "(synced, not temporary, not invalidated: standbys.copy_state), else 0.",
            ["standby"],
            registry=r,
        )
        self.failover_behind = Gauge(
            "cdc_bridge_failover_slot_behind_bytes",
            "The bridge's confirmed position minus the standby's copy of the slot.",
            ["standby"],
            registry=r,
        )
        self.messages_ignored = Counter(
            "cdc_bridge_logical_messages_ignored",
            "Transactional logical messages not published: their prefix is not in "
            "outbox.message_prefixes.",
            ["prefix"],
            registry=r,
        )
        self.skipped = Counter(
            "cdc_bridge_events_skipped", "Replayed events the stream already held.", registry=r
        )

        self.slot_recoveries = Counter(
            "cdc_bridge_slot_recoveries",
            "Lost slots replaced by postgres.on_slot_lost: recover.",
            registry=r,
        )
        self.rows_recovered = Counter(
            "cdc_bridge_rows_recovered",
            "Retained outbox rows republished (Cdc-Replay) while recovering a lost slot.",
            registry=r,
        )
        # The process exits right after (stream_watch.py): a restart starts it at 0 again,
        # so the alert looks for any increase, however short-lived the series.
        self.stream_lost = Counter(
            "cdc_bridge_stream_lost",
            "The stream was deleted, re-created, went back, or stopped covering a route "
            "while the bridge ran (it then exits).",
            registry=r,
        )

        # The leader's continuous audit (audit.interval): the last run's findings.
        self.audit_missing = Gauge(
            "cdc_bridge_audit_missing",
            "Outbox rows of the last audit's window that the stream does not hold.",
            registry=r,
        )
        self.audit_duplicated = Gauge(
            "cdc_bridge_audit_duplicated",
            "Outbox row ids the stream held more than once at the last audit.",
            registry=r,
        )
        self.audit_last_run = Gauge(
            "cdc_bridge_audit_last_run_timestamp_seconds",
            "When the last audit that completed ended (Unix time); 0: none yet.",
            registry=r,
        )

        # Atomic mode (sink/atomic_publisher.py): how full the batches run, and how often
        # one is refused for one of its messages and sent again message by message.
        self.atomic_batches = Histogram(
            "cdc_bridge_atomic_batch_messages",
            "Messages per atomic batch JetStream stored (its count is the batches).",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.atomic_batch_splits = Counter(
            "cdc_bridge_atomic_batch_splits",
            "Atomic batches refused for one of their messages, sent again one at a time.",
            registry=r,
        )
        self._route_counters: dict[str, Any] = {}
        self._ignored_counters: dict[str, Any] = {}

    def watch(self, progress: LiveProgress) -> None:
        """Read the running session's position and window at every scrape."""
        self.confirmed_lsn.set_function(progress.confirmed)
        self.in_flight.set_function(progress.in_flight)

    def acked(self, route: str, count: int) -> None:
        """Per ack (hot path; one call for a run of acked events of one route)."""
        counter = self._route_counters.get(route)
        if counter is None:
            counter = self._route_counters[route] = self.events_published.labels(route)
        counter.inc(count)

    def transaction_acked(self, tx: Transaction) -> None:
        """Its last event is acked and its commit seen: COMMIT-to-ack latency."""
        if tx.commit_time:
            committed_at = (tx.commit_time + PG_EPOCH_OFFSET_US) / 1_000_000
            self.publish_latency.observe(max(time.time() - committed_at, 0.0))

    def batch_stored(self, messages: int) -> None:
        """Per atomic batch JetStream stored."""
        self.atomic_batches.observe(messages)

    def batch_split(self) -> None:
        self.atomic_batch_splits.inc()

    def message_ignored(self, prefix: str) -> None:
        """Per transactional logical message of a prefix not published."""
        counter = self._ignored_counters.get(prefix)
        if counter is None:
            counter = self._ignored_counters[prefix] = self.messages_ignored.labels(prefix)
        counter.inc()

    def dead_lettered(self, reason: str) -> None:
        self.dead_letters.labels(reason_kind(reason)).inc()

    def standbys(self, states: list[tuple[str, bool, int | None]]) -> None:
        """(standby, synchronized, behind bytes) of every standby seen now."""
        for gauge in (self.failover_synchronized, self.failover_behind):
            gauge.clear()  # a standby no longer seen must not keep its last value
        for standby, synchronized, behind in states:
            self.failover_synchronized.labels(standby).set(1 if synchronized else 0)
            if behind is not None:
                self.failover_behind.labels(standby).set(behind)

    def audited(self, missing: int, duplicated: int) -> None:
        self.audit_missing.set(missing)
        self.audit_duplicated.set(duplicated)
        self.audit_last_run.set(time.time())

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Unmeasured:
    """Every instrument of ``NoMetrics``: takes any update and keeps nothing."""

    def labels(self, *values: str) -> _Unmeasured:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def set_function(self, function: Any) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def clear(self) -> None:
        pass


_UNMEASURED: Any = _Unmeasured()


class NoMetrics(Metrics):
    """The metrics of a bridge without HTTP: nobody could read them, so nothing is kept
    and prometheus-client is not imported. Every instrument (``events_published``,
    ``is_leader``, ...) takes updates and drops them; the per-event calls do nothing."""

    def __init__(self) -> None:  # no registry: Metrics.__init__ is not called on purpose
        pass

    def __getattr__(self, name: str) -> Any:
        # Only names not found otherwise reach here: the instruments Metrics.__init__ sets
        if name.startswith("_"):
            raise AttributeError(name)
        return _UNMEASURED

    def watch(self, progress: LiveProgress) -> None:
        pass

    def acked(self, route: str, count: int) -> None:
        pass

    def transaction_acked(self, tx: Transaction) -> None:
        pass

    def batch_stored(self, messages: int) -> None:
        pass

    def batch_split(self) -> None:
        pass

    def message_ignored(self, prefix: str) -> None:
        pass

    def dead_lettered(self, reason: str) -> None:
        pass

    def standbys(self, states: list[tuple[str, bool, int | None]]) -> None:
        pass

    def audited(self, missing: int, duplicated: int) -> None:
        pass

    def render(self) -> bytes:
        return b""
