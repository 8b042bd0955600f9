"""The in-flight window's bookkeeping (sink/ack_book.py), against a simple model.

The model is the list of messages in send order. An ack of a chained message settles
every chained message sent up to it; an ack of any other message settles that one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cdc_bridge.core.tracker import Transaction
from cdc_bridge.sink.ack_book import NO_REPLY, AckBook, InFlight, Settlement, UnrepliedRun


def tx(lsn: int = 1) -> Transaction:
    return Transaction(lsn)


def test_one_ack_per_ack_every_chained_messages_settles_all_before_it() -> None:
    book = AckBook(ack_every=3)
    t = tx()
    tokens = [book.add_chained(f"e.{i}", b"", "", t, "r") for i in range(6)]
    assert tokens == [NO_REPLY, NO_REPLY, 0, NO_REPLY, NO_REPLY, 1]
    assert book.in_flight == 6
    entry = book.take(1)
    assert entry is not None and entry.subject == "e.5"
    settled = book.stored(entry)
    assert settled == Settlement([(t, 2), (t, 1), (t, 2), (t, 1)], {"r": 6})
    assert book.in_flight == 0
    assert book.take(0) is None  # settled by the later ack: its own ack is ignored


def test_the_last_unreplied_chained_message_gets_a_reply_before_a_write() -> None:
    book = AckBook(ack_every=64)
    t = tx()
    book.batch_started = 5.0
    for i in range(3):
        assert book.add_chained(f"e.{i}", b"d", f"Nats-Msg-Id: {i}\r\n", t, "r") == NO_REPLY
    tail = book.reply_to_tail()
    assert tail is not None
    assert (tail.subject, tail.header_lines, tail.token, tail.chained) == (
        "e.2", "Nats-Msg-Id: 2\r\n", 0, True
    )
    assert tail.sent_at == 5.0
    assert book.reply_to_tail() is None  # nothing new since
    assert book.stored(tail) == Settlement([(t, 2), (t, 1)], {"r": 3})


def test_messages_outside_the_chain_settle_one_by_one_and_are_replaceable() -> None:
    book = AckBook()
    t = tx()
    first = book.add("other.a", b"", "", t, "r")
    second = book.add("other.b", b"", "", t, "s")
    entry = book.take(second)
    assert entry is not None
    assert book.stored(entry) == Settlement([(t, 1)], {"s": 1})
    entry = book.take(first)
    assert entry is not None
    book.withdraw(entry)  # replaced by its dead letter, which is added instead
    assert book.in_flight == 0


def test_a_duplicate_settles_only_when_nothing_unsettled_was_chained_before_it() -> None:
    book = AckBook(careful=10)
    t = tx()
    first, second = (book.add_chained(f"e.{i}", b"", "", t, "r") for i in range(2))
    late = book.take(second)
    assert late is not None
    assert book.duplicate(late) is None  # proves nothing about e.0: the session fails
    book = AckBook(careful=10)
    first, second = (book.add_chained(f"e.{i}", b"", "", t, "r") for i in range(2))
    head = book.take(first)
    assert head is not None
    assert book.duplicate(head) == Settlement([(t, 1)], {"r": 1})
    assert book.already_stored == [head]


def test_the_oldest_unsettled_message_is_what_the_ack_timeout_watches() -> None:
    book = AckBook(ack_every=64)
    assert book.oldest() is None
    book.batch_started = 1.0
    book.add_chained("e.0", b"", "", tx(), "r")
    book.batch_started = 2.0
    book.add("other.a", b"", "", tx(2), "r")
    oldest = book.oldest()
    assert isinstance(oldest, UnrepliedRun) and oldest.sent_at == 1.0


@dataclass
class Sent:
    """One message of the model."""

    index: int
    subject: str
    tx: int
    route: str
    chained: bool
    sent_at: float
    token: int = NO_REPLY
    settled: bool = False
    withdrawn: bool = False


class AckBookAgainstModel(RuleBasedStateMachine):
    @initialize(careful=st.integers(0, 4), ack_every=st.integers(1, 5))
    def start(self, careful: int, ack_every: int) -> None:
        self._new_session(careful, ack_every)

    @precondition(lambda self: self.failed)
    @rule(careful=st.integers(0, 4), ack_every=st.integers(1, 5))
    def next_session(self, careful: int, ack_every: int) -> None:
        """A refusal failed the session: the next one starts with a new book."""
        self._new_session(careful, ack_every)

    def _new_session(self, careful: int, ack_every: int) -> None:
        self.book = AckBook(careful=careful, ack_every=ack_every)
        self.ack_every = ack_every
        self.careful = careful
        self.since_reply = 0
        self.sent: list[Sent] = []
        self.transactions = [tx()]
        self.settled_per_tx: Counter[int] = Counter()
        self.taken: set[int] = set()
        self.clock = 0.0
        self.failed = False

    def _tx_index(self, transaction: Transaction) -> int:
        return next(i for i, t in enumerate(self.transactions) if t is transaction)

    @precondition(lambda self: not self.failed)
    @rule()
    def next_transaction(self) -> None:
        self.transactions.append(tx(len(self.transactions) + 1))

    @precondition(lambda self: not self.failed)
    @rule(chained=st.booleans(), route=st.sampled_from(["a", "b"]))
    def send(self, chained: bool, route: str) -> None:
        message = Sent(
            index=len(self.sent),
            subject=f"s.{len(self.sent)}",
            tx=len(self.transactions) - 1,
            route=route,
            chained=chained,
            sent_at=self.book.batch_started,
        )
        args = (message.subject, b"", f"Id: {message.index}\r\n", self.transactions[-1], route)
        if chained:
            message.token = self.book.add_chained(*args)
            self.since_reply += 1
            wants_reply = self.careful > 0 or self.since_reply >= self.ack_every
            assert (message.token != NO_REPLY) == wants_reply
            if wants_reply:
                self.careful = max(self.careful - 1, 0)
                self.since_reply = 0
        else:
            message.token = self.book.add(*args)
            assert message.token != NO_REPLY
        self.sent.append(message)

    @precondition(lambda self: not self.failed)
    @rule()
    def write(self) -> None:
        tail = self.book.reply_to_tail()
        chained = [m for m in self.sent if m.chained]
        if chained and chained[-1].token == NO_REPLY:
            assert tail is not None and tail.subject == chained[-1].subject
            assert tail.token != NO_REPLY and tail.sent_at == chained[-1].sent_at
            chained[-1].token = tail.token
            self.since_reply = 0
        else:
            assert tail is None
        self.clock += 1.0
        self.book.batch_started = self.clock

    def _tokens(self) -> list[int]:
        return [m.token for m in self.sent if m.token != NO_REPLY]

    @precondition(lambda self: not self.failed and self._tokens())
    @rule(data=st.data(), answer=st.sampled_from(["stored", "duplicate", "refused"]))
    def ack(self, data: st.DataObject, answer: str) -> None:
        token = data.draw(st.sampled_from(self._tokens()))
        message = next(m for m in self.sent if m.token == token)
        entry = self.book.take(token)
        if token in self.taken or message.settled:
            assert entry is None  # acked already, or settled by a later chained ack
            return
        self.taken.add(token)
        assert entry is not None and entry.subject == message.subject
        if answer == "refused":
            if message.chained:
                self.failed = True  # the shell fails the session
            else:
                self.book.withdraw(entry)  # replaced by its dead letter
                message.withdrawn = True
            return
        if answer == "duplicate":
            settled = self.book.duplicate(entry)
            assert entry in self.book.already_stored
            unsettled_before = [
                m for m in self.sent[: message.index] if m.chained and not m.settled
            ]
            if message.chained and unsettled_before:
                assert settled is None
                self.failed = True
                return
        else:
            settled = self.book.stored(entry)
        assert settled is not None
        self._check_settlement(entry, message, settled)

    def _check_settlement(self, entry: InFlight, message: Sent, settled: Settlement) -> None:
        if message.chained:
            expected = [m for m in self.sent[: message.index + 1] if m.chained and not m.settled]
        else:
            expected = [message]
        for m in expected:
            m.settled = True
        per_tx: Counter[int] = Counter()
        for transaction, count in settled.transactions:
            assert count > 0
            per_tx[self._tx_index(transaction)] += count
        order = [self._tx_index(t) for t, _ in settled.transactions]
        assert order == sorted(order)  # in send order
        assert per_tx == Counter(m.tx for m in expected)
        assert all(count >= 0 for count in settled.routes.values())
        assert +Counter(settled.routes) == Counter(m.route for m in expected)
        self.settled_per_tx.update(per_tx)

    def _unsettled(self) -> list[Sent]:
        return [m for m in self.sent if not m.settled and not m.withdrawn]

    @invariant()
    def in_flight_counts_what_is_unsettled(self) -> None:
        if hasattr(self, "book") and not self.failed:
            assert self.book.in_flight == len(self._unsettled()) >= 0

    @invariant()
    def settled_never_exceeds_sent(self) -> None:
        if hasattr(self, "book"):
            sent = Counter(m.tx for m in self.sent)
            assert all(self.settled_per_tx[t] <= sent[t] for t in self.settled_per_tx)

    @invariant()
    def the_oldest_is_the_earliest_unsettled(self) -> None:
        if hasattr(self, "book") and not self.failed:
            unsettled = self._unsettled()
            oldest = self.book.oldest()
            if not unsettled:
                assert oldest is None
            else:
                assert oldest is not None
                assert oldest.sent_at == min(m.sent_at for m in unsettled)

    def teardown(self) -> None:
        """After a write, acks of every awaited message settle everything: nothing
        waits for ever, and every transaction is settled as often as it sent."""
        if not hasattr(self, "book") or self.failed:
            return
        self.write()
        for message in list(self.sent):
            if message.token == NO_REPLY or message.settled or message.withdrawn:
                continue
            entry = self.book.take(message.token)
            assert entry is not None
            self._check_settlement(entry, message, self.book.stored(entry))
        assert self.book.in_flight == 0
        sent = Counter(m.tx for m in self.sent if not m.withdrawn)
        assert self.settled_per_tx == sent


TestAckBookAgainstModel = AckBookAgainstModel.TestCase
TestAckBookAgainstModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
