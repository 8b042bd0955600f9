"""Keeping commit order in the stream when a publish fails (pure).

The publisher pipelines: message k+1 is on the wire before k is acked. If k is lost
(a stream leader change, a cut connection) while k+1 is stored, replaying k later
would put it after k+1. So every message to the bridge's own stream names its
predecessor: the first of a session with ``Nats-Expected-Last-Sequence`` (the stream's
last sequence when the session started), each later one with
``Nats-Expected-Last-Msg-Id`` (the message sent just before it). JetStream then
refuses k+1 when k is missing, the session fails, and the replay restores order.
JetStream checks deduplication before these expectations, so replays of stored
messages are still answered as duplicates.

This assumes the bridge is the only writer of its stream; another writer makes the
expectations fail, which costs a session restart each time but never loses or
reorders events.
"""

from __future__ import annotations

from cdc_bridge.core.headers import EXPECTED_LAST_MSG_ID, EXPECTED_LAST_SEQUENCE
from cdc_bridge.core.subjects import subject_matches

_CACHE_LIMIT = 10_000


class OrderGuard:
    def __init__(self, stream_subjects: tuple[str, ...], last_seq: int) -> None:
        self._patterns = stream_subjects
        self._covers: dict[str, bool] = {}
        self._last_seq = last_seq
        self._last_msg_id: str | None = None

    def covers(self, subject: str) -> bool:
        """Does the guarded stream capture this subject? (cached: subjects repeat)"""
        known = self._covers.get(subject)
        if known is None:
            if len(self._covers) >= _CACHE_LIMIT:
                self._covers.clear()
            known = any(subject_matches(p, subject) for p in self._patterns)
            self._covers[subject] = known
        return known

    def expectation(self) -> str:
        """The header line that names the next message's predecessor."""
        if self._last_msg_id is None:
            return f"{EXPECTED_LAST_SEQUENCE}: {self._last_seq}\r\n"
        return f"{EXPECTED_LAST_MSG_ID}: {self._last_msg_id}\r\n"

    def advance(self, msg_id: str) -> None:
        """The message with ``msg_id`` was sent with ``expectation()``: it is the next
        one's predecessor."""
        self._last_msg_id = msg_id
