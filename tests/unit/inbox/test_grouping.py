"""cdc_bridge.inbox's grouping of messages into source transactions (pure)."""

from __future__ import annotations

from cdc_bridge.inbox import Event, Grouper, event_of


def ev(seq: int, lsn: str | None, *, last: bool = False, msg_id: str | None = None) -> Event:
    headers = {"Nats-Msg-Id": msg_id or f"id{seq}"}
    if lsn is not None:
        headers["Cdc-Lsn"] = lsn
        headers["Cdc-Index"] = "0"
    if last:
        headers["Cdc-Tx-Last"] = "true"
    return event_of("S", "s.a", b"", headers, seq)


def seqs(groups: list[list[Event]]) -> list[list[int]]:
    return [[e.stream_seq for e in group] for group in groups]


def feed(grouper: Grouper[int], events: list[Event]) -> list[list[Event]]:
    done: list[list[Event]] = []
    for event in events:
        done.extend(group.events for group in grouper.add(event, event.stream_seq))
    return done


def test_a_transaction_ends_at_tx_last() -> None:
    events = [ev(1, "0/10"), ev(2, "0/10", last=True), ev(3, "0/20", last=True)]
    assert seqs(feed(Grouper(), events)) == [[1, 2], [3]]


def test_a_transaction_ends_at_the_next_lsn_when_its_last_is_not_seen() -> None:
    grouper: Grouper[int] = Grouper()
    done = feed(grouper, [ev(1, "0/10"), ev(2, "0/10"), ev(3, "0/20")])
    assert seqs(done) == [[1, 2]]
    assert grouper.open is not None and [e.stream_seq for e in grouper.open.events] == [3]


def test_a_replayed_row_is_a_group_of_its_own() -> None:
    events = [ev(1, "0/10"), ev(2, None), ev(3, None), ev(4, "0/20", last=True)]
    assert seqs(feed(Grouper(), events)) == [[1], [2], [3], [4]]


def test_one_event_per_group_when_asked() -> None:
    events = [ev(1, "0/10"), ev(2, "0/10", last=True)]
    assert seqs(feed(Grouper(whole_transactions=False), events)) == [[1], [2]]


def test_take_open_hands_over_a_part() -> None:
    grouper: Grouper[int] = Grouper()
    feed(grouper, [ev(1, "0/10"), ev(2, "0/10")])
    part = grouper.take_open()
    assert part is not None and not part.complete and part.items == [1, 2]
    assert seqs(feed(grouper, [ev(3, "0/10", last=True)])) == [[3]]


def test_event_fields_from_headers() -> None:
    event = ev(7, "0/1A", last=True)
    assert (event.msg_id, event.cdc_lsn, event.cdc_index, event.tx_last) == ("id7", "0/1A", 0, True)
    bare = event_of("S", "s.b", b"x", None, 9)
    assert (bare.msg_id, bare.cdc_lsn, bare.tx_last) == ("S:9", None, False)


def test_a_cdc_lsn_that_is_not_an_lsn_is_no_transaction() -> None:
    event = event_of("S", "s.a", b"", {"Cdc-Lsn": "0/1; DROP", "Nats-Msg-Id": "x"}, 1)
    assert event.cdc_lsn is None
