"""The pipeline's transaction boundaries (Cdc-Tx-Last), applied change by change with a
real router and tracker: the publisher here only records what it is given, as the
JetStream publisher would queue it (and counts it with the tracker, as that one does)."""

from __future__ import annotations

from typing import Any, cast

from structlog.testing import capture_logs

from cdc_bridge.bridge.pipeline import Pipeline, SessionStats
from cdc_bridge.config.load import parse_config
from cdc_bridge.core.changes import Begin, Change, Commit, Insert
from cdc_bridge.core.headers import parse_header_lines
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.publisher import Publisher
from cdc_bridge.sink.reconcile import Position

CONFIG = """
postgres: {dsn: "postgresql://u@localhost/db", slot: s, publication: p}
nats: {servers: ["nats://127.0.0.1:4222"], stream: {name: EVENTS, subjects: ["events.>"]}}
outbox: {table: public.outbox}
dead_letter: {subject: events.dlq}
routes:
  - when: {aggregate_type: ticket}
    subject: "events.{event_type}"
"""
START = 0x1000


class RecordingPublisher:
    def __init__(self, tracker: LsnTracker) -> None:
        self._tracker = tracker
        self.sent: list[tuple[str, dict[str, str]]] = []  # subject, headers

    def publish(
        self, subject: str, data: bytes, lines: str, tx: Transaction, route: str, msg_id: str
    ) -> None:
        self._tracker.sent(tx)
        self.sent.append((subject, parse_header_lines(lines)))

    def committed(self, tx: Transaction) -> None:
        pass


class Run:
    def __init__(
        self,
        *,
        stored_through: Position | None = None,
        duplicates: frozenset[Position] = frozenset(),
    ) -> None:
        self.tracker = LsnTracker(START)
        self.publisher = RecordingPublisher(self.tracker)
        self.pipeline = Pipeline(
            stream=cast(Any, None),  # _apply never reads the stream
            decoder=cast(Any, None),
            router=Router(parse_config(CONFIG, env={})),
            publisher=cast(Publisher, self.publisher),
            tracker=self.tracker,
            tables=frozenset({"public.outbox"}),
            status_interval=1.0,
            stats=SessionStats(),
            source="7301/s",
            stored_through=stored_through,
            known_duplicates=set(duplicates),
            in_stream=lambda subject: True,
        )

    def apply(self, change: Change) -> int:
        """Apply one change; how many messages it published."""
        before = len(self.publisher.sent)
        self.pipeline._apply(change)
        return len(self.publisher.sent) - before

    def transaction(self, final_lsn: int, aggregate_types: list[str]) -> list[int]:
        """One source transaction; the messages published per change applied."""
        published = [self.apply(Begin(xid=7, final_lsn=final_lsn))]
        for n, aggregate_type in enumerate(aggregate_types):
            published.append(self.apply(Insert("public.outbox", row(n, aggregate_type))))
        published.append(self.apply(Commit(commit_lsn=final_lsn, end_lsn=final_lsn + 8)))
        return published

    def marks(self) -> list[tuple[str, str | None]]:
        return [(h["Cdc-Index"], h.get("Cdc-Tx-Last")) for _, h in self.publisher.sent]


def row(n: int, aggregate_type: str = "ticket") -> dict[str, Any]:
    return {
        "id": f"id-{n}",
        "aggregate_type": aggregate_type,
        "aggregate_id": "T-1",
        "event_type": "created",
        "payload": "{}",
        "headers": None,
    }


def test_only_the_last_event_is_marked_and_it_is_sent_at_the_commit() -> None:
    run = Run()
    # Each event is held until the next: at most one message per change, so the
    # reader's check of publisher.full after each change still bounds the window.
    assert run.transaction(0x2000, ["ticket"] * 3) == [0, 0, 1, 1, 1]
    assert run.marks() == [("0", None), ("1", None), ("2", "true")]
    assert run.transaction(0x3000, ["ticket"]) == [0, 0, 1]
    assert run.marks()[-1] == ("0", "true")


def test_the_tracker_never_sees_a_transaction_complete_while_an_event_is_held() -> None:
    for size in (1, 2):
        run = Run()
        run.transaction(0x2000, ["ticket"] * size)
        # All were sent before the commit reached the tracker: none is acked, so the
        # transaction is not confirmed (had the last been held, it would have been).
        assert run.tracker.in_flight == size
        assert run.tracker.confirmed == START
        [tx] = run.tracker._pending
        run.tracker.acked(tx, size)
        assert run.tracker.confirmed == 0x2008


def test_a_dead_letter_last_in_its_transaction_is_marked() -> None:
    run = Run()
    with capture_logs() as logs:  # the log's own output may be closed by an earlier test
        run.transaction(0x2000, ["ticket", "unrouted"])
    assert [line["event"] for line in logs].count("dead_lettered") == 1
    assert [subject for subject, _ in run.publisher.sent] == ["events.created", "events.dlq"]
    assert run.marks() == [("0", None), ("1", "true")]


def test_skipped_as_already_stored_the_last_leaves_nothing_held() -> None:
    # The stored copy of the last event carries the mark: nothing published now has it.
    run = Run(duplicates=frozenset({(0x2000, 2)}))
    assert run.transaction(0x2000, ["ticket"] * 3) == [0, 0, 1, 1, 0]
    assert run.marks() == [("0", None), ("1", None)]
    assert run.tracker.confirmed == START  # two in flight
    # Replayed up to the middle: the rest is published, the last marked.
    run = Run(stored_through=(0x2000, 1))
    run.transaction(0x2000, ["ticket"] * 3)
    assert run.marks() == [("2", "true")]


def test_a_transaction_skipped_whole_publishes_nothing_and_is_confirmed() -> None:
    run = Run(stored_through=(0x2000, 5))
    assert run.transaction(0x2000, ["ticket"] * 2) == [0, 0, 0, 0]
    assert run.publisher.sent == []
    assert run.tracker.confirmed == 0x2008
