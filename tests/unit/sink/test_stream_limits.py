"""A stream full with discard: new -> which limit, its value, the fix (sink/stream_limits.py),
and how that refusal reaches the pub-ack classification, the failure line and /readyz."""

from __future__ import annotations

import json

import pytest

from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.sink.acks import AckKind, classify
from cdc_bridge.sink.publisher import PublishError, StreamLimitError
from cdc_bridge.sink.stream_limits import (
    NOTHING_LOST,
    StreamLimit,
    describe_limit_refusal,
    refused_limit,
)

# nats-server's words for each (server/store.go), all under err_code 10077
REFUSALS = [
    ("maximum messages exceeded", "max_msgs", "--max-msgs"),
    ("maximum bytes exceeded", "max_bytes", "--max-bytes"),
    ("maximum messages per subject exceeded", "max_msgs_per_subject", "--max-msgs-per-subject"),
]


@pytest.mark.parametrize(("description", "key", "flag"), REFUSALS)
def test_each_limit_refusal_is_told_apart_by_the_stores_words(
    description: str, key: str, flag: str
) -> None:
    assert refused_limit(10077, description) == StreamLimit(key, flag)


@pytest.mark.parametrize(
    ("err_code", "description"),
    [
        (10077, "message too large"),  # the same err_code, not a limit of the stream's
        (10077, "store is closed"),
        (10054, "message size exceeds maximum allowed"),
        (10002, "resource limits exceeded for account"),
        (None, "maximum messages exceeded"),
    ],
)
def test_other_refusals_are_not_limits(err_code: int | None, description: str) -> None:
    assert refused_limit(err_code, description) is None


def test_the_description_names_the_stream_the_limit_its_value_and_the_fix() -> None:
    line = describe_limit_refusal(
        "ORDERS",
        StreamLimit("max_msgs", "--max-msgs"),
        {"max_msgs": 5, "max_bytes": -1, "discard": "new"},
        "orders.created",
    )
    assert line == (
        "stream ORDERS is full: max_msgs 5 is reached and its discard policy is new, so it "
        "refused a message on orders.created; raise the limit with `nats stream edit ORDERS "
        "--max-msgs <more>` or set discard: old (`nats stream edit ORDERS --discard old`); "
        f"{NOTHING_LOST}"
    )


def test_without_the_streams_info_the_limit_is_still_named() -> None:
    line = describe_limit_refusal("S", StreamLimit("max_bytes", "--max-bytes"), None, "a.b")
    assert line.startswith("stream S is full: its max_bytes is reached")
    assert "`nats stream edit S --max-bytes <more>`" in line


def test_the_per_subject_limit_names_its_own_switch() -> None:
    limit = StreamLimit("max_msgs_per_subject", "--max-msgs-per-subject")
    line = describe_limit_refusal("S", limit, {"max_msgs_per_subject": 1}, "a.b")
    assert "max_msgs_per_subject 1 is reached" in line
    assert "discard_new_per_subject: false (or discard: old)" in line


def test_a_full_stream_is_a_transient_ack_naming_the_stream_and_the_limit() -> None:
    reply = {
        "stream": "ORDERS",
        "seq": 0,
        "error": {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"},
    }
    ack = classify(json.dumps(reply).encode(), None)
    assert ack.kind is AckKind.TRANSIENT
    assert (ack.stream, ack.limit) == ("ORDERS", StreamLimit("max_msgs", "--max-msgs"))
    assert ack.reason == "maximum messages exceeded (err_code 10077)"


def test_the_failure_is_a_publish_error_and_readyz_gives_it_as_the_reason() -> None:
    error = StreamLimitError(
        "ORDERS", StreamLimit("max_msgs", "--max-msgs"), {"max_msgs": 5}, "orders.created"
    )
    assert isinstance(error, PublishError)  # transient: retried, the slot held
    status = BridgeStatus(slot="s", stream="ORDERS")
    status.failed(str(error))
    status.role = "reconnecting"
    reason = status.readiness(stall_timeout=60)
    assert reason is not None
    assert reason.startswith("not streaming (reconnecting): stream ORDERS is full: max_msgs 5")
    status.role = "connecting"
    assert status.readiness(stall_timeout=60) == "not streaming (connecting)"
