"""CopyData parsing and standby status updates, against hand-built byte strings."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.source.protocol import (
    PG_EPOCH_OFFSET_US,
    Keepalive,
    ProtocolError,
    XLogData,
    build_status_update,
    parse_copy_data,
    pg_now,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def xlog_data_message(data_start: int, wal_end: int, send_time: int, payload: bytes) -> bytes:
    return b"w" + struct.pack(">QQq", data_start, wal_end, send_time) + payload


def keepalive_message(wal_end: int, send_time: int, reply_requested: int) -> bytes:
    return b"k" + struct.pack(">QqB", wal_end, send_time, reply_requested)


class TestParseXLogData:
    def test_fields_and_payload(self) -> None:
        message = xlog_data_message(0x16_B374D848, 0x16_B374D900, 770_000_000_000_000, b"B...")
        assert parse_copy_data(message) == XLogData(
            data_start=0x16_B374D848,
            wal_end=0x16_B374D900,
            send_time=770_000_000_000_000,
            payload=b"B...",
        )

    def test_empty_payload_is_allowed(self) -> None:
        parsed = parse_copy_data(xlog_data_message(1, 2, 3, b""))
        assert isinstance(parsed, XLogData)
        assert parsed.payload == b""

    @pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
    def test_payload_is_bytes_whatever_the_buffer_type(self, wrap: type) -> None:
        # psycopg's PGconn.get_copy_data hands out a memoryview.
        parsed = parse_copy_data(wrap(xlog_data_message(1, 2, 3, b"payload")))
        assert isinstance(parsed, XLogData)
        assert type(parsed.payload) is bytes
        assert parsed.payload == b"payload"

    def test_extreme_values(self) -> None:
        message = xlog_data_message(2**64 - 1, 0, -(2**63), b"x")
        assert parse_copy_data(message) == XLogData(2**64 - 1, 0, -(2**63), b"x")

    @pytest.mark.parametrize("length", range(1, 25))
    def test_truncated_header(self, length: int) -> None:
        message = xlog_data_message(1, 2, 3, b"")[:length]
        with pytest.raises(ProtocolError, match="XLogData message too short"):
            parse_copy_data(message)


class TestParseKeepalive:
    @pytest.mark.parametrize(("flag", "expected"), [(0, False), (1, True), (7, True)])
    def test_fields(self, flag: int, expected: bool) -> None:
        parsed = parse_copy_data(keepalive_message(0xABCDEF, 12345, flag))
        assert parsed == Keepalive(wal_end=0xABCDEF, send_time=12345, reply_requested=expected)

    def test_longer_message_is_tolerated(self) -> None:
        parsed = parse_copy_data(keepalive_message(5, 6, 1) + b"future field")
        assert parsed == Keepalive(5, 6, True)

    @pytest.mark.parametrize("length", range(1, 18))
    def test_truncated(self, length: int) -> None:
        with pytest.raises(ProtocolError, match="keepalive message too short"):
            parse_copy_data(keepalive_message(5, 6, 1)[:length])


class TestParseOther:
    def test_empty_message(self) -> None:
        with pytest.raises(ProtocolError, match="empty"):
            parse_copy_data(b"")

    @pytest.mark.parametrize("kind", [b"r", b"x", b"\x00", b"W"])
    def test_unknown_kind(self, kind: bytes) -> None:
        with pytest.raises(ProtocolError, match="unknown CopyData message kind"):
            parse_copy_data(kind + bytes(40))

    @given(st.binary(max_size=64))
    def test_arbitrary_bytes_parse_or_raise_protocol_error(self, message: bytes) -> None:
        try:
            parsed = parse_copy_data(message)
        except ProtocolError:
            return
        assert isinstance(parsed, XLogData | Keepalive)


class TestStatusUpdate:
    def test_layout(self) -> None:
        message = build_status_update(0x100, 0x200, 0x300, send_time=42, reply_requested=True)
        assert len(message) == 34
        assert message == b"r" + struct.pack(">QQQqB", 0x100, 0x200, 0x300, 42, 1)

    def test_reply_not_requested_by_default(self) -> None:
        assert build_status_update(1, 2, 3, send_time=4)[-1] == 0

    def test_send_time_defaults_to_now(self) -> None:
        before = pg_now()
        message = build_status_update(1, 1, 1)
        after = pg_now()
        (send_time,) = struct.unpack_from(">q", message, 25)
        assert before <= send_time <= after

    @given(write=U64, flush=U64, apply=U64, send_time=I64, reply=st.booleans())
    def test_round_trip(
        self, write: int, flush: int, apply: int, send_time: int, reply: bool
    ) -> None:
        message = build_status_update(
            write, flush, apply, send_time=send_time, reply_requested=reply
        )
        assert struct.unpack(">cQQQq?", message) == (b"r", write, flush, apply, send_time, reply)

    @given(flush=U64, send_time=I64, reply=st.booleans())
    def test_keepalive_layout_round_trip(self, flush: int, send_time: int, reply: bool) -> None:
        # A keepalive is the status update's flush, send_time and reply fields under 'k':
        # re-framing them must parse back to the same values.
        update = build_status_update(0, flush, 0, send_time=send_time, reply_requested=reply)
        keepalive = b"k" + update[9:17] + update[25:34]
        assert parse_copy_data(keepalive) == Keepalive(flush, send_time, reply)

    @pytest.mark.parametrize(
        ("write", "flush", "apply", "send_time"),
        [(-1, 0, 0, 0), (0, 2**64, 0, 0), (0, 0, 0, 2**63)],
    )
    def test_out_of_range_is_value_error(
        self, write: int, flush: int, apply: int, send_time: int
    ) -> None:
        with pytest.raises(ValueError, match="out of range"):
            build_status_update(write, flush, apply, send_time=send_time)


class TestPgNow:
    def test_epoch_offset(self) -> None:
        delta = datetime(2000, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        assert delta.days * 86_400 * 1_000_000 == PG_EPOCH_OFFSET_US

    def test_matches_wall_clock(self) -> None:
        expected = (datetime.now(UTC) - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds() * 1e6
        assert abs(pg_now() - expected) < 5_000_000  # generous: a loaded test machine

    def test_is_whole_microseconds(self) -> None:
        assert type(pg_now()) is int
