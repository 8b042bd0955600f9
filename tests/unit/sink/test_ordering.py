from cdc_bridge.sink.ordering import OrderGuard


def test_first_message_expects_the_stream_sequence_then_each_names_its_predecessor() -> None:
    guard = OrderGuard(("events.>",), last_seq=41)
    first = guard.expectation()
    guard.advance("a")
    second = guard.expectation()
    guard.advance("b")
    third = guard.expectation()
    assert first == "Nats-Expected-Last-Sequence: 41\r\n"
    assert second == "Nats-Expected-Last-Msg-Id: a\r\n"
    assert third == "Nats-Expected-Last-Msg-Id: b\r\n"


def test_an_expectation_not_advanced_past_is_offered_again() -> None:
    # A message dead-lettered before it was sent must not become the predecessor.
    guard = OrderGuard(("events.>",), last_seq=3)
    guard.advance("a")
    assert guard.expectation() == guard.expectation() == "Nats-Expected-Last-Msg-Id: a\r\n"


def test_covers_uses_the_stream_subjects() -> None:
    guard = OrderGuard(("events.>", "audit.*"), last_seq=0)
    assert guard.covers("events.ticket.created")
    assert guard.covers("audit.x")
    assert not guard.covers("audit.x.y")
    assert not guard.covers("other.x")
