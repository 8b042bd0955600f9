"""Batches of whole transactions, cut at the limit (pure)."""

from __future__ import annotations

from cdc_bridge.core.tracker import Transaction
from cdc_bridge.sink.batches import BatchForming, Pending


def pending(tx: Transaction, name: str, *, inside: bool = True) -> Pending:
    return Pending(f"ev.{name}", b"{}", "", 0, tx, "r", inside)


def names(messages: list[Pending]) -> list[str]:
    return [m.subject.removeprefix("ev.") for m in messages]


def test_nothing_is_taken_before_a_transaction_ends() -> None:
    forming = BatchForming(10)
    tx = Transaction(1)
    forming.add(pending(tx, "a"))
    assert not forming.sendable and forming.take() is None
    forming.transaction_ended()
    batch = forming.take()
    assert batch is not None and names(batch.inside) == ["a"] and not batch.outside
    assert len(forming) == 0 and forming.take() is None


def test_whole_transactions_are_taken_together_and_an_open_one_stays() -> None:
    forming = BatchForming(10)
    t1, t2, t3 = Transaction(1), Transaction(2), Transaction(3)
    for tx, name in [(t1, "a"), (t1, "b"), (t2, "c")]:
        forming.add(pending(tx, name))
        if name != "a":
            forming.transaction_ended()
    forming.add(pending(t3, "d"))  # still open
    batch = forming.take()
    assert batch is not None and names(batch.inside) == ["a", "b", "c"]
    assert len(forming) == 1 and forming.take() is None


def test_a_large_transaction_is_cut_at_the_limit() -> None:
    forming = BatchForming(3)
    tx = Transaction(1)
    for n in range(7):
        forming.add(pending(tx, str(n)))
        if forming.full:
            batch = forming.take()
            assert batch is not None and len(batch.inside) == 3
    forming.transaction_ended()
    batch = forming.take()
    assert batch is not None and names(batch.inside) == ["6"]


def test_whole_transactions_come_first_when_the_batch_is_full() -> None:
    forming = BatchForming(3)
    t1, t2 = Transaction(1), Transaction(2)
    forming.add(pending(t1, "a"))
    forming.transaction_ended()
    forming.add(pending(t2, "b"))
    forming.add(pending(t2, "c"))
    assert forming.full
    batch = forming.take()
    assert batch is not None and names(batch.inside) == ["a"]  # t2 is not cut needlessly
    assert not forming.full and not forming.sendable


def test_what_the_batch_cannot_carry_travels_with_it() -> None:
    forming = BatchForming(10)
    tx = Transaction(1)
    forming.add(pending(tx, "a"))
    forming.add(pending(tx, "dlq", inside=False))
    forming.add(pending(tx, "b"))
    forming.transaction_ended()
    batch = forming.take()
    assert batch is not None
    assert names(batch.inside) == ["a", "b"] and names(batch.outside) == ["dlq"]
