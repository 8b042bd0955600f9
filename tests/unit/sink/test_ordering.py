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


SPACE_HEADER = "Nats-Expected-Last-Subject-Sequence-Subject: events.orders.>\r\n"


def test_with_a_space_a_settled_message_names_the_last_sequence_in_the_space() -> None:
    guard = OrderGuard(("events.>",), last_seq=7, space="events.orders.>")
    assert guard.expectation(settled=True) == (
        "Nats-Expected-Last-Subject-Sequence: 7\r\n" + SPACE_HEADER
    )
    guard.advance("a")
    guard.stored(12)  # its ack: stream sequence 12, other writers' messages before it
    assert guard.expectation(settled=True) == (
        "Nats-Expected-Last-Subject-Sequence: 12\r\n" + SPACE_HEADER
    )


def test_with_a_space_the_first_message_names_the_space_even_when_not_settled() -> None:
    guard = OrderGuard(("events.>",), last_seq=0, space="events.orders.>")
    assert guard.expectation() == "Nats-Expected-Last-Subject-Sequence: 0\r\n" + SPACE_HEADER


def test_with_a_space_a_pipelined_message_names_its_predecessor_by_id() -> None:
    # Its predecessor's sequence is not known before its ack.
    guard = OrderGuard(("events.>",), last_seq=7, space="events.orders.>")
    guard.advance("a")
    assert guard.expectation(settled=False) == "Nats-Expected-Last-Msg-Id: a\r\n"


def test_without_a_space_settled_changes_nothing() -> None:
    guard = OrderGuard(("events.>",), last_seq=41)
    assert guard.expectation(settled=True) == "Nats-Expected-Last-Sequence: 41\r\n"
    guard.advance("a")
    assert guard.expectation(settled=True) == "Nats-Expected-Last-Msg-Id: a\r\n"


def test_an_ack_that_jumps_past_our_messages_means_another_writer() -> None:
    guard = OrderGuard(("events.>",), last_seq=10, space="events.orders.>")
    guard.stored(13, settled=3)  # 11, 12, 13 are ours: alone so far
    assert not guard.shared
    guard.stored(15, settled=1)  # 14 is someone else's
    assert guard.shared


def test_pipelining_resumes_after_enough_quiet_acks() -> None:
    from cdc_bridge.sink.ordering import QUIET_ACKS

    guard = OrderGuard(("events.>",), last_seq=10, space="events.orders.>", shared=True)
    for seq in range(11, 11 + QUIET_ACKS - 1):
        guard.stored(seq)
    assert guard.shared
    guard.stored(10 + QUIET_ACKS)
    assert not guard.shared


def test_without_a_space_the_stream_is_never_treated_as_shared() -> None:
    guard = OrderGuard(("events.>",), last_seq=10, shared=True)
    guard.stored(20)
    assert not guard.shared
