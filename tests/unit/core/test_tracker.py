import random

from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.core.tracker import LsnTracker


def test_confirms_commit_end_only_after_every_event_is_acked() -> None:
    tracker = LsnTracker(100)
    tx = tracker.begin(final_lsn=150)
    tracker.sent(tx)
    tracker.sent(tx)
    tracker.commit(tx, end_lsn=160)
    assert tracker.confirmed == 100
    tracker.acked(tx)
    assert tracker.confirmed == 100
    tracker.acked(tx)
    assert tracker.confirmed == 160
    assert tracker.in_flight == 0


def test_never_confirms_inside_an_open_transaction() -> None:
    tracker = LsnTracker(100)
    tx = tracker.begin(final_lsn=150)
    tracker.sent(tx)
    tracker.acked(tx)
    assert tracker.confirmed == 100  # acked, but the commit has not been seen
    tracker.keepalive(140)
    assert tracker.confirmed == 100  # keepalive inside an open transaction confirms nothing
    tracker.commit(tx, end_lsn=160)
    assert tracker.confirmed == 160


def test_a_later_acked_transaction_waits_for_an_earlier_unacked_one() -> None:
    tracker = LsnTracker(0)
    first = tracker.begin(10)
    tracker.sent(first)
    tracker.commit(first, 20)
    second = tracker.begin(30)
    tracker.sent(second)
    tracker.commit(second, 40)
    tracker.acked(second)
    assert tracker.confirmed == 0
    tracker.acked(first)
    assert tracker.confirmed == 40


def test_transaction_without_events_advances_when_nothing_is_before_it() -> None:
    tracker = LsnTracker(0)
    tx = tracker.begin(10)
    tracker.commit(tx, 20)
    assert tracker.confirmed == 20


def test_keepalive_confirms_wal_end_only_when_idle() -> None:
    tracker = LsnTracker(0)
    tx = tracker.begin(10)
    tracker.sent(tx)
    tracker.commit(tx, 20)
    tracker.keepalive(500)
    assert tracker.confirmed == 0
    assert tracker.received == 500
    tracker.acked(tx)
    assert tracker.confirmed == 20
    tracker.keepalive(500)
    assert tracker.confirmed == 500


def test_confirmed_never_moves_backwards() -> None:
    tracker = LsnTracker(1000)
    tracker.keepalive(10)
    tx = tracker.begin(20)
    tracker.commit(tx, 30)
    assert tracker.confirmed == 1000


def _end_of_fully_acked_prefix(event_counts: list[int], acked: list[int]) -> int:
    prefix = 0
    while prefix < len(event_counts) and acked[prefix] == event_counts[prefix]:
        prefix += 1
    return prefix * 10


@given(
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_confirmed_is_the_end_of_the_longest_fully_acked_prefix(
    event_counts: list[int], rnd: random.Random
) -> None:
    tracker = LsnTracker(0)
    txs = []
    sends = []
    for i, count in enumerate(event_counts):
        tx = tracker.begin(final_lsn=i * 10 + 5)
        for _ in range(count):
            tracker.sent(tx)
            sends.append(i)
        tracker.commit(tx, end_lsn=i * 10 + 10)
        txs.append(tx)
    acked = [0] * len(event_counts)
    assert tracker.confirmed == _end_of_fully_acked_prefix(event_counts, acked)
    rnd.shuffle(sends)
    for i in sends:
        tracker.acked(txs[i])
        acked[i] += 1
        assert tracker.confirmed == _end_of_fully_acked_prefix(event_counts, acked)
    assert tracker.confirmed == len(event_counts) * 10
    assert tracker.in_flight == 0


def test_a_ceiling_holds_what_status_updates_confirm() -> None:
    tracker = LsnTracker(100)
    assert tracker.confirmable == 100  # not watched: what is confirmed
    tracker.ceiling = 100
    tracker.keepalive(500)
    assert tracker.confirmed == 500
    assert tracker.confirmable == 100  # no check has vouched for past 100 yet
    tracker.ceiling = 300
    assert tracker.confirmable == 300
    tracker.ceiling = 900
    assert tracker.confirmable == 500  # never past what is acked
