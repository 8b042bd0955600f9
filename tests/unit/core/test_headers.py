from cdc_bridge.core.headers import (
    BRIDGE_HEADERS,
    controls_jetstream,
    header_lines,
    parse_header_lines,
)


def test_header_lines_are_the_entries_of_a_header_block() -> None:
    # NATS/1.0\r\n + these lines + \r\n is the block on the wire
    assert header_lines({"K": "v", "Cdc-Lsn": "0/1"}) == "K: v\r\nCdc-Lsn: 0/1\r\n"
    assert header_lines({}) == ""


def test_header_lines_parse_back() -> None:
    headers = {"Nats-Msg-Id": "a-ü", "Cdc-Error": "x: y", "Empty": ""}
    assert parse_header_lines(header_lines(headers)) == headers


def test_nats_headers_in_any_case_are_jetstream_s() -> None:
    assert controls_jetstream("Nats-TTL") and controls_jetstream("nats-rollup")
    assert not controls_jetstream("Cdc-Lsn") and not controls_jetstream("Natsy")
    assert [name for name in BRIDGE_HEADERS if controls_jetstream(name)] == ["Nats-Msg-Id"]
