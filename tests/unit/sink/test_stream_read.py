"""The stream sequence of a JetStream delivery, from its reply subject."""

from __future__ import annotations

import pytest

from cdc_bridge.sink.stream_read import _stream_seq


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.ORDERS.c1.1.4711.4700.1764600000000000000.12",
        "$JS.ACK.hub.ACCHASH.ORDERS.c1.1.4711.4700.1764600000000000000.12.token",
    ],
)
def test_the_stream_sequence_is_read_from_either_reply_form(reply: str) -> None:
    assert _stream_seq(reply) == 4711
