"""The in-flight window's bookkeeping (pure): what is sent, and what each ack settles.

A message that wants an ack is registered under a token (its reply subject is
``<inbox>.<token>``, see wire.py). Messages to the bridge's own stream form a chain
(ordering.py): each names its predecessor, so JetStream stores one only if every
earlier one is stored. An ack for one of them therefore settles every chained message
sent before it, and most of them are sent without a reply subject at all: one ack per
``ACK_EVERY`` chained messages (and for the last one before each write, see
``reply_to_tail``) instead of one each. Those are kept only as runs (transaction,
count per route): nothing else about them is needed again, because a problem with any
of them fails the session.

A duplicate ack proves nothing about its predecessors (JetStream checks deduplication
before the expectation), so a chained duplicate settles only when nothing unsettled
was sent before it. A session that replays events the stream may already hold starts
``careful``: that many chained messages each get an ack, which is when replays and
their duplicates happen.

No I/O here: publisher.py sends, waits and acts on what this returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cdc_bridge.core.headers import parse_header_lines
from cdc_bridge.core.tracker import Transaction

# Chained messages per requested ack once a session is past its careful start.
ACK_EVERY = 64
# The token of a message sent without a reply subject.
NO_REPLY = -1


@dataclass(slots=True, init=False)  # __init__ written out: one per event (core/changes.py)
class InFlight:
    """A message sent with a reply subject: everything needed to replace or report it."""

    subject: str
    data: bytes
    header_lines: str  # "Name: value\r\n" for every header but the order guard's
    tx: Transaction
    sent_at: float
    route: str
    token: int
    chained: bool  # in the bridge's own stream, stamped with its predecessor

    def __init__(
        self,
        subject: str,
        data: bytes,
        header_lines: str,
        tx: Transaction,
        sent_at: float,
        route: str,
        token: int = NO_REPLY,
        chained: bool = False,
    ) -> None:
        self.subject = subject
        self.data = data
        self.header_lines = header_lines
        self.tx = tx
        self.sent_at = sent_at
        self.route = route
        self.token = token
        self.chained = chained

    @property
    def headers(self) -> dict[str, str]:
        """The headers as a dict (for the rare paths: dead letters, duplicates)."""
        return parse_header_lines(self.header_lines)


class UnrepliedRun:
    """Consecutive chained messages of one transaction sent without a reply subject:
    the ack of a later chained message settles them all.

    The newest one is kept whole (``newest_*``): if it ends a write it is given a
    reply subject after all (``AckBook.reply_to_tail``). Plain fields rather than an
    object per message: this is the path nearly every message takes.
    """

    __slots__ = (
        "count",
        "newest_data",
        "newest_lines",
        "newest_route",
        "newest_subject",
        "routes",
        "sent_at",
        "tx",
    )

    def __init__(self, tx: Transaction, sent_at: float) -> None:
        self.tx = tx
        self.sent_at = sent_at
        self.count = 0
        self.routes: dict[str, int] = {}  # for the metrics: how many of them each route made
        self.newest_subject = ""
        self.newest_data = b""
        self.newest_lines = ""
        self.newest_route = ""


@dataclass(slots=True)
class Settlement:
    """What one ack settled: events per transaction (in send order) and per route."""

    transactions: list[tuple[Transaction, int]]
    routes: dict[str, int]


class AckBook:
    """Messages sent and not yet settled, in send order, and what an ack settles."""

    __slots__ = (
        "_ack_every",
        "_awaiting",
        "_careful",
        "_chain",
        "_next_token",
        "_since_reply",
        "_tail",
        "already_stored",
        "batch_started",
        "in_flight",
    )

    def __init__(self, *, careful: int = 0, ack_every: int = ACK_EVERY) -> None:
        self.in_flight = 0  # messages sent and not yet settled
        # When the first message of the write being queued was queued (the shell sets
        # it): the sent_at of every message queued with it.
        self.batch_started = 0.0
        # Messages JetStream answered "duplicate" for: it held them already.
        self.already_stored: list[InFlight] = []
        self._ack_every = ack_every
        self._careful = careful  # chained messages that each get an ack first
        self._next_token = 0
        self._awaiting: dict[int, InFlight] = {}  # sent with a reply subject, by token
        self._chain: deque[InFlight | UnrepliedRun] = deque()  # chained, unsettled, in order
        self._tail: UnrepliedRun | None = None  # its newest message was sent without reply
        self._since_reply = 0  # chained messages since the last one with a reply subject

    def add(self, subject: str, data: bytes, header_lines: str, tx: Transaction, route: str) -> int:
        """A message outside the chain: it gets a reply subject; returns its token."""
        self.in_flight += 1
        return self._register(subject, data, header_lines, tx, route, False).token

    def add_chained(
        self, subject: str, data: bytes, header_lines: str, tx: Transaction, route: str
    ) -> int:
        """The next message of the chain: returns its token, or NO_REPLY when it is sent
        without a reply subject (an ack of a later one settles it)."""
        self.in_flight += 1
        self._since_reply += 1
        if self._careful > 0 or self._since_reply >= self._ack_every:
            if self._careful > 0:
                self._careful -= 1
            entry = self._register(subject, data, header_lines, tx, route, True)
            self._chain.append(entry)
            self._since_reply = 0
            self._tail = None
            return entry.token
        # The common case.
        chain = self._chain
        run = chain[-1] if chain else None
        if type(run) is not UnrepliedRun or run.tx is not tx:
            run = UnrepliedRun(tx, self.batch_started)
            chain.append(run)
        run.count += 1
        routes = run.routes
        routes[route] = routes.get(route, 0) + 1
        run.newest_subject = subject
        run.newest_data = data
        run.newest_lines = header_lines
        run.newest_route = route
        self._tail = run
        return NO_REPLY

    def reply_to_tail(self) -> InFlight | None:
        """Before a write: every chained message must be followed by one that gets an
        ack, or it would wait for the next write (or for ever, at the end of a burst).
        So the newest chained message, if it has no reply subject, gets one after all:
        it leaves its run for an entry of its own, which this returns (its frame needs
        the new token)."""
        run = self._tail
        if run is None:
            return None
        self._tail = None
        self._since_reply = 0
        chain = self._chain
        assert chain[-1] is run
        route = run.newest_route
        run.count -= 1
        run.routes[route] -= 1
        if not run.count:
            chain.pop()
        entry = self._register(
            run.newest_subject, run.newest_data, run.newest_lines, run.tx, route, True
        )
        entry.sent_at = run.sent_at
        chain.append(entry)
        return entry

    def _register(
        self,
        subject: str,
        data: bytes,
        header_lines: str,
        tx: Transaction,
        route: str,
        chained: bool,
    ) -> InFlight:
        token = self._next_token
        self._next_token += 1
        entry = InFlight(subject, data, header_lines, tx, self.batch_started, route, token, chained)
        self._awaiting[token] = entry
        return entry

    def take(self, token: int) -> InFlight | None:
        """The message an ack at ``token`` answers; None for a token not (or no longer)
        awaited: a previous session's, or one an earlier ack settled."""
        return self._awaiting.pop(token, None)

    def stored(self, entry: InFlight) -> Settlement:
        """``entry`` (just taken) is stored; a chained one settles every chained message
        sent before it, too."""
        if not entry.chained:
            self.in_flight -= 1
            return Settlement([(entry.tx, 1)], {entry.route: 1})
        chain = self._chain
        awaiting = self._awaiting
        transactions: list[tuple[Transaction, int]] = []
        by_route: dict[str, int] = {}
        settled = 0
        while chain:
            head = chain.popleft()
            if isinstance(head, UnrepliedRun):
                transactions.append((head.tx, head.count))
                settled += head.count
                for route, count in head.routes.items():
                    by_route[route] = by_route.get(route, 0) + count
                continue
            if head is not entry:
                awaiting.pop(head.token, None)
            transactions.append((head.tx, 1))
            settled += 1
            by_route[head.route] = by_route.get(head.route, 0) + 1
            if head is entry:
                break
        self.in_flight -= settled
        return Settlement(transactions, by_route)

    def duplicate(self, entry: InFlight) -> Settlement | None:
        """JetStream already held ``entry`` (just taken). Outside the chain, or at its
        head, that is as good as stored; otherwise it proves nothing about the chained
        messages before it: None, and the session must fail."""
        self.already_stored.append(entry)
        if not entry.chained or (self._chain and self._chain[0] is entry):
            return self.stored(entry)
        return None

    def withdraw(self, entry: InFlight) -> None:
        """``entry`` (just taken, outside the chain) is replaced by its dead letter, which
        is added and counted instead."""
        assert not entry.chained
        self.in_flight -= 1

    def oldest(self) -> InFlight | UnrepliedRun | None:
        """The unsettled message (or run) sent longest ago, for the ack timeout."""
        waiting: list[InFlight | UnrepliedRun] = []
        if self._chain:
            waiting.append(self._chain[0])
        first_awaiting = next(iter(self._awaiting.values()), None)
        if first_awaiting is not None:
            waiting.append(first_awaiting)
        if not waiting:
            return None
        return min(waiting, key=lambda e: e.sent_at)
