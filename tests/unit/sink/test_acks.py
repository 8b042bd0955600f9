"""Pub-ack replies -> what they mean for the message (sink/acks.py)."""

from __future__ import annotations

import json

import pytest

from cdc_bridge.sink.acks import (
    DUPLICATE,
    NO_RESPONDERS,
    STORED,
    Ack,
    AckKind,
    classify,
)


def test_a_stored_message_and_a_duplicate_are_the_shared_answers() -> None:
    assert classify(b'{"stream":"S","seq":7}', None) is STORED
    assert classify(b'{"stream":"S","seq":7,"duplicate":true}', {}) is DUPLICATE
    assert STORED.kind is AckKind.STORED and DUPLICATE.kind is AckKind.DUPLICATE


def test_status_503_is_no_responders_whatever_the_payload() -> None:
    assert classify(b"", {"Status": "503"}) is NO_RESPONDERS
    assert NO_RESPONDERS.reason == "no responders"


def test_a_message_too_large_is_permanent_other_errors_are_not() -> None:
    too_large = (
        b'{"error":{"code":400,"err_code":10054,'
        b'"description":"message size exceeds maximum allowed"}}'
    )
    assert classify(too_large, None) == Ack(
        AckKind.PERMANENT, "message size exceeds maximum allowed (err_code 10054)"
    )
    wrong_last = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}'
    assert classify(wrong_last, None) == Ack(
        AckKind.TRANSIENT, "wrong last sequence: 3 (err_code 10071)"
    )
    assert classify(b'{"error":{}}', None) == Ack(
        AckKind.TRANSIENT, "unknown error (err_code None)"
    )


@pytest.mark.parametrize(
    ("data", "headers", "reason"),
    [
        (b"", None, "empty reply (status none)"),
        (b"", {"Status": "408"}, "empty reply (status 408)"),
        (b"not json", None, "unreadable pub ack"),
    ],
)
def test_replies_that_say_nothing_are_transient(
    data: bytes, headers: dict[str, str] | None, reason: str
) -> None:
    assert classify(data, headers) == Ack(AckKind.TRANSIENT, reason)


@pytest.mark.parametrize(
    ("err_code", "description"),
    [
        (10097, "header size exceeds maximum allowed of 64k"),
        (10165, "invalid per-message TTL"),
        (10227, "message stream source header is not allowed"),
    ],
)
def test_every_refusal_of_the_message_itself_is_permanent(err_code: int, description: str) -> None:
    reply = json.dumps({"error": {"code": 400, "err_code": err_code, "description": description}})
    assert classify(reply.encode(), None) == Ack(
        AckKind.PERMANENT, f"{description} (err_code {err_code})"
    )


def test_refusals_by_the_streams_state_stay_transient() -> None:
    limits = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    assert classify(limits, None).kind is AckKind.TRANSIENT


@pytest.mark.parametrize(
    ("err_code", "description", "kind"),
    [
        (10201, "atomic publish batch contains duplicate message id", AckKind.BATCH_DUPLICATE),
        (10176, "atomic publish batch is incomplete", AckKind.BATCH_INCOMPLETE),
        (10199, "atomic publish batch is too large: 10", AckKind.BATCH_TOO_LARGE),
    ],
)
def test_an_atomic_batch_refused_for_one_of_its_messages_says_so(
    err_code: int, description: str, kind: AckKind
) -> None:
    reply = {"error": {"code": 400, "err_code": err_code, "description": description}}
    ack = classify(json.dumps(reply | {"stream": "S", "seq": 0}).encode(), None)
    assert ack.kind is kind and ack.stream == "S" and str(err_code) in ack.reason
