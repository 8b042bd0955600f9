"""What a JetStream pub-ack reply says (pure): stored, duplicate, no responders, or an error.

Every ack goes through ``classify``, so the common answers are module-level constants
(no object per ack); only errors make a new ``Ack``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cdc_bridge.sink.stream_limits import StreamLimit, refused_limit

# JetStream error codes (nats-server's errors.json) for a refusal that is a property of
# the message itself, so it would fail the same way on every replay: such a message is
# dead-lettered. Refusals that depend on the stream's state or settings (limits, a wrong
# expectation, counters or schedules turned off) stay transient: the message is fine.
PERMANENT_ERR_CODES = frozenset(
    {
        10054,  # message size exceeds maximum allowed (the stream's max_msg_size)
        10097,  # header size exceeds maximum allowed of 64k
        10165,  # invalid per-message TTL
        10227,  # message stream source header is not allowed
    }
)


class AckKind(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # stored earlier (its Nats-Msg-Id was seen): as good as stored
    NO_RESPONDERS = "no responders"  # no stream listens on the subject, or none has a leader
    PERMANENT = "permanent"  # refused, and would be on every replay (e.g. too large)
    TRANSIENT = "transient"  # refused or unreadable; a new session may fare better
    # An atomic batch refused whole for one of its messages, without saying which
    # (atomic_publisher.py finds it): it holds an id JetStream has stored already, even
    # when the rest is new; or it is incomplete (one message was refused on its way in,
    # for a reason only a reply to that message would have told).
    BATCH_DUPLICATE = "batch duplicate"
    BATCH_INCOMPLETE = "batch incomplete"
    # More messages in an atomic batch than the server allows (a setting, not a message).
    BATCH_TOO_LARGE = "batch too large"


# The refusals of atomic batches, by err_code (nats-server's errors.json).
_BATCH_REFUSALS = {
    10201: AckKind.BATCH_DUPLICATE,  # "atomic publish batch contains duplicate message id"
    10176: AckKind.BATCH_INCOMPLETE,  # "atomic publish batch is incomplete"
    10199: AckKind.BATCH_TOO_LARGE,  # "atomic publish batch is too large: <the limit>"
}


@dataclass(frozen=True, slots=True)
class Ack:
    kind: AckKind
    reason: str = ""  # for the refusals: what the server said
    stream: str = ""  # the stream that refused (JetStream names it in the reply)
    limit: StreamLimit | None = None  # the stream is full: this limit refused (discard new)


STORED = Ack(AckKind.STORED)
DUPLICATE = Ack(AckKind.DUPLICATE, "duplicate")
NO_RESPONDERS = Ack(AckKind.NO_RESPONDERS, "no responders")


def classify(data: bytes, headers: Mapping[str, str] | None) -> Ack:
    """The pub-ack reply (payload and headers of the message at the reply subject)."""
    if headers and headers.get("Status") == "503":
        # Nothing is subscribed to the subject: no stream, or a stream between leaders.
        return NO_RESPONDERS
    if not data:
        status = headers.get("Status") if headers else "none"
        return Ack(AckKind.TRANSIENT, f"empty reply (status {status})")
    try:
        reply = json.loads(data)
    except ValueError:
        return Ack(AckKind.TRANSIENT, "unreadable pub ack")
    error = reply.get("error")
    if error is None:
        return DUPLICATE if reply.get("duplicate") else STORED
    err_code = error.get("err_code")
    description = str(error.get("description", "unknown error"))
    reason = f"{description} (err_code {err_code})"
    stream = str(reply.get("stream") or "")
    limit = refused_limit(err_code, description)
    if limit is not None:  # transient: the message is fine, the stream has no room
        return Ack(AckKind.TRANSIENT, reason, stream, limit)
    kind = _BATCH_REFUSALS.get(err_code) if isinstance(err_code, int) else None
    if kind is None:
        kind = AckKind.PERMANENT if err_code in PERMANENT_ERR_CODES else AckKind.TRANSIENT
    return Ack(kind, reason, stream)
