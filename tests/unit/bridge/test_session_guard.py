"""Whether a session starts as if others wrote its stream (issue 17)."""

from cdc_bridge.bridge.session import ResumePoint
from cdc_bridge.bridge.stream_checks import may_be_shared
from cdc_bridge.sink.reconcile import StreamTail


def resume(space: str | None, last_seq: int, stream_last_seq: int) -> ResumePoint:
    tail = StreamTail(last_seq, None, 0, True, stream_last_seq)
    return ResumePoint("s", 0, tail, None, False, None, None, space)


def test_a_stream_taking_only_our_space_starts_pipelined() -> None:
    assert not may_be_shared(("events.orders.>",), resume("events.orders.>", 5, 5))
    assert not may_be_shared(("events.>",), resume("events.>", 5, 5))


def test_others_wrote_since_our_last_message() -> None:
    assert may_be_shared(("events.orders.>",), resume("events.orders.>", 5, 9))


def test_a_stream_wider_than_our_space_starts_careful() -> None:
    assert may_be_shared(("events.>",), resume("events.orders.>", 5, 5))


def test_no_space_no_sharing() -> None:
    assert not may_be_shared(("events.>",), resume(None, 5, 9))
