"""The ops commands' sentences: counts agree with their nouns ("1 transaction")."""

from __future__ import annotations

import pytest

from cdc_bridge.cli.errors import OpsError
from cdc_bridge.cli.pending import Pending, PendingRow, PendingTransaction
from cdc_bridge.cli.slots_lifecycle import _loss_lines
from cdc_bridge.cli.slots_peek import AdvancePlan, _advance_lines, _peek_lines, _through_xid
from cdc_bridge.source.catalog import SlotInfo

SLOT = SlotInfo("s", "pgoutput", "app", False, None, 0x100, 0x100, "reserved")


def transaction(xid: int, rows: int) -> PendingTransaction:
    row = PendingRow(xid, 0x200, "public.outbox", "insert", "1", "r", "e.x", None)
    return PendingTransaction(xid, 0x300 + xid, (row,) * rows)


def test_peek_of_one_transaction_with_one_row() -> None:
    lines = _peek_lines(SLOT, None, Pending((transaction(7, 1),), maybe_more=True), limit=1)
    assert lines[0].startswith("slot s (pgoutput): 1 transaction, 1 row pending after 0/100")
    assert lines[-1] == "more may be pending: only about 1 change was read (--limit)"


def test_peek_of_several() -> None:
    pending = Pending((transaction(7, 2), transaction(8, 1)), maybe_more=True)
    lines = _peek_lines(SLOT, None, pending, limit=3)
    assert "2 transactions, 3 rows pending" in lines[0]
    assert lines[-1] == "more may be pending: only about 3 changes were read (--limit)"


def test_advance_past_one_transaction() -> None:
    plan = AdvancePlan(0x100, 0x400, (transaction(7, 1),), False, ())
    first = _advance_lines("s", plan, None)[0]
    assert first.endswith("skips 1 transaction (1 row); it will never be published")
    plan = AdvancePlan(0x100, 0x400, (transaction(7, 2), transaction(8, 1)), True, ())
    first = _advance_lines("s", plan, None)[0]
    assert first.endswith("skips at least 2 transactions (3 rows); they will never be published")


def test_skipping_through_an_xid_counts_the_earlier_ones() -> None:
    _, _, notes = _through_xid(Pending((transaction(7, 1), transaction(8, 1)), False), 8)
    assert notes[0].startswith("1 earlier pending transaction comes before 8 and is skipped")
    with pytest.raises(OpsError, match="not among the 1 transaction pending on the slot"):
        _through_xid(Pending((transaction(7, 1),), False), 9)


def test_drop_names_what_is_lost() -> None:
    lines = _loss_lines(SLOT, 0x200, Pending((transaction(7, 1),), False))
    assert "  1 pending row in 1 transaction: never published" in lines[2]
