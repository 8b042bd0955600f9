"""Which WAL position is safe to confirm to PostgreSQL.

The slot's ``confirmed_flush_lsn`` is a promise: "everything committed before this
position has been delivered". So the confirmed position only ever moves to the end
of a transaction whose events, and those of every transaction before it, JetStream
has acked. Transactions are tracked in commit order; acks may arrive in any order.
"""

from __future__ import annotations

from collections import deque


class Transaction:
    """One decoded transaction: how many of its events still wait for an ack."""

    __slots__ = ("commit_time", "committed", "end_lsn", "final_lsn", "outstanding", "published")

    def __init__(self, final_lsn: int, commit_time: int = 0) -> None:
        self.final_lsn = final_lsn  # the commit record's LSN (known at Begin)
        self.commit_time = commit_time  # microseconds since 2000-01-01; 0 = unknown
        self.end_lsn = 0  # set at Commit: the position that may be confirmed
        self.outstanding = 0  # events sent, not yet acked
        self.published = 0  # events sent in all (for logs and metrics)
        self.committed = False


class LsnTracker:
    """Commit positions received versus acked: ``confirmed`` is the position to flush."""

    def __init__(self, start_lsn: int) -> None:
        self.confirmed = start_lsn  # never moves backwards
        self.received = start_lsn  # highest WAL position seen (the status update's "write")
        self._pending: deque[Transaction] = deque()  # committed or open, oldest first
        self._open: Transaction | None = None
        self.in_flight = 0  # events sent and not yet acked, across all transactions
        # The highest position found safe by a check of the catalog made after it was
        # received (bridge/catalog_watch.py); None: not watched. Status updates confirm
        # no further: a publication dropped at X makes PostgreSQL skip rows after X
        # without a word, and only a check made after X was read can tell.
        self.ceiling: int | None = None

    @property
    def confirmable(self) -> int:
        """What a status update may confirm: ``confirmed``, held at ``ceiling``."""
        ceiling = self.ceiling
        confirmed = self.confirmed
        return confirmed if ceiling is None or confirmed <= ceiling else ceiling

    @property
    def idle(self) -> bool:
        """True when no transaction is open and nothing waits for an ack."""
        return self._open is None and not self._pending

    def saw(self, wal_position: int) -> None:
        if wal_position > self.received:
            self.received = wal_position

    def begin(self, final_lsn: int, commit_time: int = 0) -> Transaction:
        if self._open is not None:
            raise RuntimeError("Begin while a transaction is open: the stream is out of step")
        tx = Transaction(final_lsn, commit_time)
        self._open = tx
        self._pending.append(tx)
        return tx

    def sent(self, tx: Transaction) -> None:
        tx.outstanding += 1
        tx.published += 1
        self.in_flight += 1

    def acked(self, tx: Transaction, count: int = 1) -> None:
        """``count`` of the transaction's events were acked."""
        tx.outstanding -= count
        self.in_flight -= count
        if tx.outstanding == 0 and tx.committed:
            self._advance()

    def commit(self, tx: Transaction, end_lsn: int) -> None:
        if tx is not self._open:
            raise RuntimeError("Commit for a transaction that is not open")
        self._open = None
        tx.end_lsn = end_lsn
        tx.committed = True
        self.saw(end_lsn)
        self._advance()

    def keepalive(self, wal_end: int) -> None:
        """The server has sent everything before ``wal_end``.

        With nothing open or unacked, every transaction committed before it has been
        delivered (or had no events), so it is safe to confirm: this is what keeps a
        slot whose outbox is idle from pinning WAL while other tables are busy.
        """
        self.saw(wal_end)
        if self.idle and wal_end > self.confirmed:
            self.confirmed = wal_end

    def _advance(self) -> None:
        pending = self._pending
        while pending and pending[0].committed and pending[0].outstanding == 0:
            tx = pending.popleft()
            if tx.end_lsn > self.confirmed:
                self.confirmed = tx.end_lsn
