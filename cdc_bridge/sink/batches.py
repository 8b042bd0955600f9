"""Atomic batches of whole transactions, formed while the previous one is in flight (pure).

In atomic mode (atomic_publisher.py) every message for the bridge's subject space goes
out in a JetStream atomic batch: stored whole or not at all. A batch holds consecutive
whole transactions, at most ``max_messages`` messages; a transaction larger than that
is cut into consecutive batches at the limit. One batch is in flight at a time (the
server does not chain batches: a batch sent behind a refused one would still commit),
so while it waits for its ack the next one forms from what arrives, and at high load
batches fill up.

Messages the batch cannot carry (``inside`` False: dead letters in their own stream,
routes to another stream's subjects) travel with the batch of their transaction and are
published one by one once that batch is acked.

No I/O here: the publisher sends, waits and acts on what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc_bridge.core.tracker import Transaction

BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
# The batch's headers added to a message at send time: the id (at most 64 characters,
# the server's limit), the sequence, the commit marker on the last, the order guard's
# expectation on the first. Room is kept for them when a message's size is checked.
MAX_BATCH_ID = 64
BATCH_HEADER_ROOM = 320


@dataclass(slots=True, init=False)  # __init__ written out: one per event (core/changes.py)
class Pending:
    """A message waiting for its batch, checked sendable (its header lines encode, and
    fit with the batch's own)."""

    subject: str
    data: bytes
    header_lines: str
    lines_size: int  # bytes of header_lines in UTF-8
    tx: Transaction
    route: str
    inside: bool  # carried by the atomic batch (False: published after its ack)

    def __init__(
        self,
        subject: str,
        data: bytes,
        header_lines: str,
        lines_size: int,
        tx: Transaction,
        route: str,
        inside: bool,
    ) -> None:
        self.subject = subject
        self.data = data
        self.header_lines = header_lines
        self.lines_size = lines_size
        self.tx = tx
        self.route = route
        self.inside = inside


@dataclass(slots=True)
class Batch:
    """Consecutive messages taken together: ``inside`` go in one atomic batch (or, once
    split, in batches of one), ``outside`` after it is acked."""

    inside: list[Pending]
    outside: list[Pending]
    # Sent message by message (each as a batch of one): the batch as a whole was refused
    # for one of its messages (an id JetStream holds already, a message it can never
    # store), and only one at a time tells which.
    one_by_one: bool = False
    token: int = -1  # reply token of the commit in flight
    sent_at: float = 0.0


class BatchForming:
    """The messages published since the last batch was taken, in order, and where the
    last whole transaction among them ends."""

    __slots__ = ("_messages", "_whole", "max_messages")

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._messages: list[Pending] = []
        self._whole = 0  # messages up to the end of the last whole transaction

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, message: Pending) -> None:
        self._messages.append(message)

    def transaction_ended(self) -> None:
        """The transaction of the newest message committed: everything so far is whole."""
        self._whole = len(self._messages)

    @property
    def full(self) -> bool:
        """No room for more: the reader waits until a batch is taken."""
        return len(self._messages) >= self.max_messages

    @property
    def sendable(self) -> bool:
        """A batch can be taken: a whole transaction, or a full batch of a large one."""
        return self._whole > 0 or len(self._messages) >= self.max_messages

    def take(self) -> Batch | None:
        """The next batch: every whole transaction (up to the limit), else, when a large
        transaction fills the batch, its next ``max_messages``; None when neither."""
        messages = self._messages
        limit = self.max_messages
        if self._whole:
            count = min(self._whole, limit)
        elif len(messages) >= limit:
            count = limit
        else:
            return None
        taken = messages[:count]
        del messages[:count]
        self._whole = max(self._whole - count, 0)
        inside = [m for m in taken if m.inside]
        if len(inside) == count:
            return Batch(inside, [])
        return Batch(inside, [m for m in taken if not m.inside])


# The last message's own line: the batch commits, and this message is stored too.
COMMIT_LINE = f"{BATCH_COMMIT}: 1\r\n"
