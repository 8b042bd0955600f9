from cdc_bridge.ordering import OrderGuard
from cdc_bridge.publisher import encode_headers


def message_size(data: bytes, headers: dict[str, str]) -> int:
    return len(encode_headers(headers)) + len(data)


def test_first_message_expects_the_stream_sequence_then_each_names_its_predecessor() -> None:
    guard = OrderGuard(("events.>",), last_seq=41)
    first = {"Nats-Msg-Id": "a"}
    second = {"Nats-Msg-Id": "b"}
    guard.stamp(first)
    guard.stamp(second)
    assert first == {"Nats-Msg-Id": "a", "Nats-Expected-Last-Sequence": "41"}
    assert second == {"Nats-Msg-Id": "b", "Nats-Expected-Last-Msg-Id": "a"}


def test_covers_uses_the_stream_subjects() -> None:
    guard = OrderGuard(("events.>", "audit.*"), last_seq=0)
    assert guard.covers("events.ticket.created")
    assert guard.covers("audit.x")
    assert not guard.covers("audit.x.y")
    assert not guard.covers("other.x")


def test_stamp_size_is_what_stamp_adds_to_the_header_block() -> None:
    guard = OrderGuard(("events.>",), last_seq=12345)
    for msg_id in ("first-id", "second-id-ü"):
        headers = {"Nats-Msg-Id": msg_id}
        before = message_size(b"", headers)
        expected = guard.stamp_size()
        guard.stamp(headers)
        assert message_size(b"", headers) - before == expected


def test_message_size_counts_the_header_block_and_the_body() -> None:
    # NATS/1.0\r\n + "K: v\r\n" + \r\n, then the body
    assert message_size(b"12345", {"K": "v"}) == len(b"NATS/1.0\r\nK: v\r\n\r\n") + 5


def test_stamped_block_equals_encoding_the_stamped_headers() -> None:
    guard = OrderGuard(("events.>",), last_seq=7)
    for msg_id in ("a", "b"):
        headers = {"Nats-Msg-Id": msg_id, "Cdc-Lsn": "0/1"}
        block = encode_headers(headers)
        name = guard.stamp(headers)
        assert block[:-2] + f"{name}: {headers[name]}\r\n\r\n".encode() == encode_headers(headers)
