from cdc_bridge.ordering import OrderGuard
from cdc_bridge.publisher import encode_headers, header_lines, parse_header_lines


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


def test_header_block_encoding() -> None:
    # NATS/1.0\r\n + "K: v\r\n" + \r\n
    block = b"NATS/1.0\r\nK: v\r\nCdc-Lsn: 0/1\r\n\r\n"
    assert encode_headers({"K": "v", "Cdc-Lsn": "0/1"}) == block
    assert encode_headers({}) == b"NATS/1.0\r\n\r\n"


def test_header_lines_parse_back() -> None:
    headers = {"Nats-Msg-Id": "a-ü", "Cdc-Error": "x: y", "Empty": ""}
    assert parse_header_lines(header_lines(headers)) == headers
