"""Keeping commit order in the stream when a publish fails (pure).

The publisher pipelines: message k+1 is on the wire before k is acked. If k is lost
(a stream leader change, a cut connection) while k+1 is stored, replaying k later
would put it after k+1. So every message to the bridge's own stream names its
predecessor, and JetStream refuses k+1 when k is missing; the session fails and the
replay restores order. JetStream checks deduplication before these expectations, so
replays of stored messages are still answered as duplicates.

How a message names its predecessor:

* With a subject space (``nats.subject_space``, NATS 2.11+), a message whose
  predecessors are all acked names the sequence of the last one within the space:
  ``Nats-Expected-Last-Subject-Sequence`` with the space as
  ``Nats-Expected-Last-Subject-Sequence-Subject``. Writers outside the space cannot
  break that. The first message of a session names the space's last sequence.
* A message sent while its predecessor is still unacked cannot name its sequence (the
  stream assigns it at store time, and other writers move it): it names the
  predecessor's id with ``Nats-Expected-Last-Msg-Id``, which JetStream checks
  stream-wide. A message of another writer stored between the two breaks it: the
  session fails (nothing is lost or reordered) and starts over. That happens only
  inside a burst the bridge sends faster than one ack round trip, so it is rare;
  JetStream has no per-message header that names an unacked predecessor within a
  subject filter (its fast-ingest batches, 2.14+, would: see docs/production.md).
* Without a space (older servers, or routes that share no prefix), today's stream-wide
  guard: the first message names the stream's last sequence
  (``Nats-Expected-Last-Sequence``), every later one its predecessor's id. Another
  writer of the stream then breaks nearly every session.
"""

from __future__ import annotations

from cdc_bridge.core.headers import (
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
)
from cdc_bridge.core.subjects import subject_matches

_CACHE_LIMIT = 10_000


class OrderGuard:
    def __init__(
        self, stream_subjects: tuple[str, ...], last_seq: int, space: str | None = None
    ) -> None:
        """``last_seq``: the last sequence within ``space`` when the session started (the
        stream's last sequence when there is no space)."""
        self._patterns = stream_subjects
        self._covers: dict[str, bool] = {}
        self._space = space
        self._last_seq = last_seq
        self._last_msg_id: str | None = None

    @property
    def space(self) -> str | None:
        return self._space

    def covers(self, subject: str) -> bool:
        """Does the guarded stream capture this subject? (cached: subjects repeat)"""
        known = self._covers.get(subject)
        if known is None:
            if len(self._covers) >= _CACHE_LIMIT:
                self._covers.clear()
            known = any(subject_matches(p, subject) for p in self._patterns)
            self._covers[subject] = known
        return known

    def expectation(self, settled: bool = False) -> str:
        """The header lines that name the next message's predecessor; ``settled``: every
        message sent before it is acked (its predecessor's sequence is known)."""
        space = self._space
        if space is not None and (settled or self._last_msg_id is None):
            return (
                f"{EXPECTED_LAST_SUBJECT_SEQUENCE}: {self._last_seq}\r\n"
                f"{EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT}: {space}\r\n"
            )
        if self._last_msg_id is None:
            return f"{EXPECTED_LAST_SEQUENCE}: {self._last_seq}\r\n"
        return f"{EXPECTED_LAST_MSG_ID}: {self._last_msg_id}\r\n"

    def advance(self, msg_id: str) -> None:
        """The message with ``msg_id`` was sent with ``expectation()``: it is the next
        one's predecessor."""
        self._last_msg_id = msg_id

    def stored(self, seq: int) -> None:
        """Every message sent so far is acked, the newest at stream sequence ``seq``."""
        self._last_seq = seq
